"""The peer benchmark's figures, pure: one `Measured` per (system, concurrency, run), their summary per system
and concurrency (median over runs, with the range), the SendSafe/Jasmin ratios, the printed lines, the JSON
document and the PNG chart (accepted/s and p99 by concurrency, both systems). No I/O but the two writers."""

from __future__ import annotations

import json
import shutil
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SYSTEMS = ("jasmin", "sendsafe")
# The figures summarised per system and concurrency, and those whose SendSafe/Jasmin ratio is printed.
FIGURES = ("accepted_per_s", "p50_ms", "p99_ms", "delivered_per_s", "end_to_end_per_s", "cpu_ms_per_msg")
SCHEMA = "sendsafe.bench.peer/1"


@dataclass
class Measured:
    """One closed-loop run against one system. `cpu_ms` is each process's CPU over the measured window."""

    system: str
    concurrency: int
    run: int
    seconds: float  # the measured window, wall clock (the tail of in-flight requests included)
    accepted: int
    refused: int
    p50_ms: float
    p99_ms: float
    delivered: int  # reached the carrier during the window
    drained: int  # reached the carrier after the window, until the count stopped moving
    drain_seconds: float  # from the end of the window to the last message that reached the carrier
    total_delivered: int  # reached the carrier from the start of the warm-up to the end of the drain
    total_seconds: float  # from the start of the warm-up to the last message that reached the carrier
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.seconds if self.seconds > 0 else 0.0

    @property
    def delivered_per_s(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    @property
    def end_to_end_per_s(self) -> float:
        return self.total_delivered / self.total_seconds if self.total_seconds > 0 else 0.0

    @property
    def cpu_ms_per_process(self) -> dict[str, float]:
        """CPU milliseconds per accepted message, per process."""
        return {name: ms / self.accepted for name, ms in self.cpu_ms.items()} if self.accepted else {}

    @property
    def cpu_ms_per_msg(self) -> float:
        return sum(self.cpu_ms_per_process.values())

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        for name in ("accepted_per_s", "delivered_per_s", "end_to_end_per_s", "cpu_ms_per_msg", "cpu_ms_per_process"):
            doc[name] = getattr(self, name)
        return doc

    def line(self) -> str:
        cpu = ", ".join(f"{n} {ms:.2f}" for n, ms in self.cpu_ms_per_process.items())
        return (f"run {self.run} c={self.concurrency:<3} {self.system:<8} accepted {self.accepted_per_s:8,.0f}/s"
                f"  p50 {self.p50_ms:6.1f} ms  p99 {self.p99_ms:6.1f} ms  refused {self.refused}"
                f"  delivered during {self.delivered_per_s:7,.0f}/s,"
                f" {self.drained:,} after in {self.drain_seconds:.1f}s"
                f" (end to end {self.end_to_end_per_s:,.0f}/s)\n"
                f"      CPU ms per accepted message: {cpu} = {self.cpu_ms_per_msg:.2f}")


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs: list[Measured]) -> dict[str, Any]:
    """Per concurrency: each system's figures (median, min, max over runs; CPU per process as the median), and
    the SendSafe/Jasmin ratio of the medians, plus the ratio of each interleaved pair (same run number)."""
    out: dict[str, Any] = {}
    for conc in sorted({m.concurrency for m in runs}):
        per: dict[str, Any] = {}
        for system in SYSTEMS:
            mine = [m for m in runs if m.concurrency == conc and m.system == system]
            if not mine:
                continue
            fig: dict[str, Any] = {name: _stats([float(getattr(m, name)) for m in mine]) for name in FIGURES}
            procs = sorted({p for m in mine for p in m.cpu_ms_per_process})
            fig["cpu_ms_per_process"] = {p: statistics.median(m.cpu_ms_per_process.get(p, 0.0) for m in mine)
                                         for p in procs}
            fig["runs"] = len(mine)
            per[system] = fig
        if all(s in per for s in SYSTEMS):
            per["ratio"] = {name: _ratio(per["sendsafe"][name]["median"], per["jasmin"][name]["median"])
                            for name in FIGURES}
            pairs = []
            for run in sorted({m.run for m in runs if m.concurrency == conc}):
                a = [m for m in runs if m.concurrency == conc and m.run == run and m.system == "sendsafe"]
                b = [m for m in runs if m.concurrency == conc and m.run == run and m.system == "jasmin"]
                if a and b:
                    pairs.append({"run": run, **{name: _ratio(getattr(a[0], name), getattr(b[0], name))
                                                 for name in ("accepted_per_s", "p99_ms", "end_to_end_per_s")}})
            per["ratio_per_run"] = pairs
        out[str(conc)] = per
    return out


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def lines(summary: dict[str, Any]) -> list[str]:
    """The summary as printed: one line per system and concurrency, one ratio line per concurrency."""
    out = []
    for conc, per in summary.items():
        for system in SYSTEMS:
            if system not in per:
                continue
            f = per[system]
            cpu = ", ".join(f"{n} {ms:.2f}" for n, ms in f["cpu_ms_per_process"].items())
            out.append(
                f"c={conc:<3} {system:<8} accepted {f['accepted_per_s']['median']:8,.0f}/s"
                f" ({f['accepted_per_s']['min']:,.0f}-{f['accepted_per_s']['max']:,.0f})"
                f"  p50 {f['p50_ms']['median']:6.1f} ms  p99 {f['p99_ms']['median']:6.1f} ms"
                f" ({f['p99_ms']['min']:.1f}-{f['p99_ms']['max']:.1f})"
                f"  delivered during {f['delivered_per_s']['median']:7,.0f}/s"
                f"  end to end {f['end_to_end_per_s']['median']:7,.0f}/s"
                f"  [{f['runs']} runs]")
            out.append(f"      CPU ms per accepted message: {cpu} = {f['cpu_ms_per_msg']['median']:.2f}")
        if "ratio" in per:
            r = per["ratio"]
            pairs = " ".join(_fmt_ratio(p["accepted_per_s"]) for p in per["ratio_per_run"])
            out.append(
                f"c={conc:<3} SendSafe/Jasmin: accepted {_fmt_ratio(r['accepted_per_s'])} (per run: {pairs}),"
                f" p50 {_fmt_ratio(r['p50_ms'])}, p99 {_fmt_ratio(r['p99_ms'])},"
                f" delivered during {_fmt_ratio(r['delivered_per_s'])},"
                f" end to end {_fmt_ratio(r['end_to_end_per_s'])}, CPU per message {_fmt_ratio(r['cpu_ms_per_msg'])}")
    return out


def document(meta: dict[str, Any], runs: list[Measured]) -> dict[str, Any]:
    """The JSON document: what ran (meta), every run, and the summary with the ratios."""
    return {"schema": SCHEMA, "meta": meta, "runs": [m.as_dict() for m in runs], "summary": summarize(runs)}


def write_chart(summary: dict[str, Any], path: Path, title: str = "") -> Path:
    """A PNG: accepted messages/s (left) and p99 latency (right) by concurrency, one line per system, the
    median with the min-max range as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concs = sorted(summary, key=int)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for system, colour in zip(SYSTEMS, ("tab:orange", "tab:blue"), strict=True):
        xs = [int(c) for c in concs if system in summary[c]]
        for axis, name in ((left, "accepted_per_s"), (right, "p99_ms")):
            st = [summary[str(c)][system][name] for c in xs]
            mid = [s["median"] for s in st]
            err = [[m - s["min"] for m, s in zip(mid, st, strict=True)],
                   [s["max"] - m for m, s in zip(mid, st, strict=True)]]
            axis.errorbar(xs, mid, yerr=err, marker="o", capsize=4, color=colour,
                          label="SendSafe" if system == "sendsafe" else "Jasmin 0.11.1")
    left.set_title("accepted messages/s (one message per request)")
    right.set_title("p99 latency (ms)")
    for axis in (left, right):
        axis.set_xlabel("concurrency (requests in flight)")
        axis.set_xticks([int(c) for c in concs])
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path


def write_results(doc: dict[str, Any], outdir: Path, stamp: str) -> tuple[Path, Path]:
    """`peer-<stamp>.json` and `.png` under `outdir`, copied to `peer-latest.json` / `.png`."""
    outdir.mkdir(parents=True, exist_ok=True)
    js, png = outdir / f"peer-{stamp}.json", outdir / f"peer-{stamp}.png"
    js.write_text(json.dumps(doc, indent=2) + "\n")
    meta = doc.get("meta", {})
    write_chart(doc["summary"], png, title=f"SendSafe beside Jasmin, {meta.get('runs', '?')} interleaved runs x "
                                           f"{meta.get('seconds', '?')} s, {meta.get('started', '')}")
    shutil.copyfile(js, outdir / "peer-latest.json")
    shutil.copyfile(png, outdir / "peer-latest.png")
    return js, png

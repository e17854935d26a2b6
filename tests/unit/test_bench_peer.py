"""The peer benchmark's pure parts (bench/peer_report.py, the acceptance rules in bench/peer.py) and the load
generator's hooks they rely on (bench/load.py). Figures are made up here: nothing is timed or asserted on
timing."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from bench.load import run
from bench.peer import _jasmin_accepts, _sendsafe_accepts
from bench.peer_report import SCHEMA, Measured, document, lines, summarize, write_results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _m(system: str, conc: int, run_no: int, accepted: int, p99: float, **kw: object) -> Measured:
    base: dict[str, object] = dict(
        system=system, concurrency=conc, run=run_no, seconds=10.0, accepted=accepted, refused=0, p50_ms=p99 / 4,
        p99_ms=p99, delivered=accepted // 2, drained=accepted // 2, drain_seconds=10.0, total_delivered=accepted,
        total_seconds=20.0, cpu_ms={"a": accepted * 1.0, "b": accepted * 0.5},
    )
    base.update(kw)
    return Measured(**base)  # type: ignore[arg-type]


RUNS = [
    _m("jasmin", 16, 1, 10_000, 20.0), _m("sendsafe", 16, 1, 5_000, 40.0),
    _m("jasmin", 16, 2, 12_000, 10.0), _m("sendsafe", 16, 2, 9_000, 30.0),
    _m("jasmin", 16, 3, 14_000, 30.0), _m("sendsafe", 16, 3, 7_000, 20.0),
    _m("jasmin", 64, 1, 20_000, 60.0), _m("sendsafe", 64, 1, 20_000, 60.0),
]


def test_a_runs_figures_are_per_second_and_per_accepted_message() -> None:
    m = _m("sendsafe", 16, 1, 5_000, 40.0, cpu_ms={"gateway": 3_000.0, "messaging": 4_000.0})
    assert m.accepted_per_s == 500.0
    assert m.delivered_per_s == 250.0
    assert m.end_to_end_per_s == 250.0
    assert m.cpu_ms_per_process == {"gateway": 0.6, "messaging": 0.8}
    assert m.cpu_ms_per_msg == pytest.approx(1.4)
    nothing = _m("jasmin", 16, 1, 0, 0.0, seconds=0.0, total_seconds=0.0)
    assert (nothing.accepted_per_s, nothing.end_to_end_per_s, nothing.cpu_ms_per_process) == (0.0, 0.0, {})


def test_the_summary_takes_medians_ranges_and_sendsafe_over_jasmin_ratios() -> None:
    s = summarize(RUNS)
    assert list(s) == ["16", "64"]
    j, ss = s["16"]["jasmin"], s["16"]["sendsafe"]
    assert j["accepted_per_s"] == {"median": 1200.0, "min": 1000.0, "max": 1400.0}
    assert ss["accepted_per_s"] == {"median": 700.0, "min": 500.0, "max": 900.0}
    assert (j["p99_ms"]["median"], ss["p99_ms"]["median"]) == (20.0, 30.0)
    assert j["runs"] == ss["runs"] == 3
    assert ss["cpu_ms_per_process"] == {"a": 1.0, "b": 0.5}
    ratio = s["16"]["ratio"]
    assert ratio["accepted_per_s"] == pytest.approx(700 / 1200)
    assert ratio["p99_ms"] == pytest.approx(1.5)
    assert ratio["cpu_ms_per_msg"] == pytest.approx(1.0)
    # Each interleaved pair on its own: run 1 SendSafe 500/s against Jasmin 1,000/s.
    assert [p["run"] for p in s["16"]["ratio_per_run"]] == [1, 2, 3]
    assert s["16"]["ratio_per_run"][0]["accepted_per_s"] == pytest.approx(0.5)
    assert s["64"]["ratio"]["accepted_per_s"] == pytest.approx(1.0)


def test_a_system_without_figures_gets_no_ratio_and_a_zero_denominator_none() -> None:
    s = summarize([_m("sendsafe", 16, 1, 5_000, 40.0)])
    assert "jasmin" not in s["16"] and "ratio" not in s["16"]
    s = summarize([_m("sendsafe", 16, 1, 5_000, 40.0), _m("jasmin", 16, 1, 0, 0.0)])
    assert s["16"]["ratio"]["accepted_per_s"] is None
    assert "n/a" in "\n".join(lines(s))


def test_the_document_is_json_with_every_run_and_the_summary() -> None:
    doc = json.loads(json.dumps(document({"runs": 3, "seconds": 10.0}, RUNS)))
    assert doc["schema"] == SCHEMA
    assert doc["meta"] == {"runs": 3, "seconds": 10.0}
    assert len(doc["runs"]) == len(RUNS)
    first = doc["runs"][0]
    assert {"system", "concurrency", "run", "accepted_per_s", "p50_ms", "p99_ms", "delivered_per_s",
            "end_to_end_per_s", "cpu_ms_per_process", "cpu_ms_per_msg"} <= set(first)
    assert first["accepted_per_s"] == 1000.0
    assert set(doc["summary"]) == {"16", "64"}


def test_the_printed_summary_names_both_systems_and_the_ratios() -> None:
    out = lines(summarize(RUNS))
    assert sum("jasmin" in line for line in out) == 2 and sum("sendsafe" in line for line in out) == 2
    ratio = next(line for line in out if line.startswith("c=16") and "SendSafe/Jasmin" in line)
    assert "accepted 0.58x (per run: 0.50x 0.75x 0.50x)" in ratio
    assert "p99 1.50x" in ratio


def test_the_results_are_a_json_file_and_a_png_chart_with_latest_copies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    doc = document({"runs": 3, "seconds": 10.0, "started": "2026-01-01T00:00:00Z"}, RUNS)
    js, png = write_results(doc, tmp_path / "bench", "20260101-000000")
    assert js.name == "peer-20260101-000000.json" and png.name == "peer-20260101-000000.png"
    assert json.loads(js.read_text())["summary"] == json.loads(json.dumps(doc["summary"]))
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    assert (tmp_path / "bench" / "peer-latest.png").read_bytes() == data
    assert (tmp_path / "bench" / "peer-latest.json").read_text() == js.read_text()


def test_what_each_system_counts_as_accepted() -> None:
    assert _jasmin_accepts(200, b'Success "0b7e1c6a-1f5e-4d8e-9a4f-4b1f5d1c2e3a"')
    assert not _jasmin_accepts(200, b"Error \"Cannot charge submit_sm\"")
    assert not _jasmin_accepts(403, b"Success")
    ok = json.dumps({"data": {"messages": [{"status": "SUCCESS"}]}}).encode()
    assert _sendsafe_accepts(200, ok)
    assert not _sendsafe_accepts(200, json.dumps({"data": {"messages": [{"status": "INVALID_RECIPIENT"}]}}).encode())
    assert not _sendsafe_accepts(200, b"not json")
    assert not _sendsafe_accepts(429, ok)


async def test_the_load_generator_counts_what_accept_accepts_and_marks_the_window() -> None:
    """Plain HTTP (ca=None) against a local server answering alternately yes/no: only the yeses count, and
    the measure-start hook runs once, before the run ends."""
    served = 0

    async def handler(_request: web.Request) -> web.Response:
        nonlocal served
        served += 1
        return web.Response(text="yes" if served % 2 else "no")

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    marks: list[int] = []

    async def opened() -> None:
        marks.append(served)

    try:
        res = await run("t", f"http://127.0.0.1:{port}/", ca=None, concurrency=1, seconds=0.3, warmup=0.1,
                        accept=lambda status, body: status == 200 and body == b"yes", on_measure_start=opened)
    finally:
        await runner.cleanup()
    assert len(marks) == 1
    assert res.requests > 0 and res.errors > 0
    assert abs(res.requests - res.errors) <= 1  # alternate answers: as many refused as accepted, give or take one
    assert res.completed == served

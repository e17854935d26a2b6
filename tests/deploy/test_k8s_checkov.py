"""Security scan: checkov finds no failed check in either rendered overlay nor in the Dockerfile.

checkov runs from its own virtualenv (.venv-checkov, installed from deploy/checkov-requirements.lock)
because it pins old libraries. Skips live in two places only, both with a written reason:
deploy/k8s/checkov-skips.yaml (a check skipped for a whole scan) and `checkov.io/skipN: ID=reason`
annotations (one resource).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.k8s_manifests import K8S_DIR, OVERLAYS, REPO, Doc

SKIPS_FILE = K8S_DIR / "checkov-skips.yaml"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
SCANS = (*OVERLAYS, "dockerfile")
CHECK_ID = re.compile(r"^CKV2?_[A-Z0-9]+_\d+$")
SKIP_ANNOTATION = re.compile(r"^(checkov|bridgecrew|cortex)\.io/skip")


def checkov() -> str:
    candidates = [
        os.environ.get("CHECKOV"),
        str(REPO / ".venv-checkov" / "bin" / "checkov"),
        shutil.which("checkov"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "checkov not found: create its virtualenv with `make .venv-checkov/bin/checkov` (or python3 -m venv "
        ".venv-checkov && .venv-checkov/bin/pip install -r deploy/checkov-requirements.lock),"
        " or set $CHECKOV",
        pytrace=False,
    )


def skip_entries() -> list[dict[str, Any]]:
    return list((yaml.safe_load(SKIPS_FILE.read_text()) or {}).get("skips") or [])


def _scan_target(scan: str, rendered: dict[str, list[Doc]], tmp: Path) -> tuple[Path, str, int]:
    """(file, checkov framework, the least number of resources a real scan of it reports)."""
    if scan == "dockerfile":
        return DOCKERFILE, "dockerfile", 1
    target = tmp / f"{scan}.yaml"
    target.write_text(yaml.safe_dump_all(rendered[scan], sort_keys=False))
    return target, "kubernetes", len(rendered[scan])


@pytest.fixture(scope="session")
def checkov_reports(
    rendered: dict[str, list[Doc]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[dict[str, Any], int]]:
    """scan -> (checkov's JSON report, minimum resource count). The scans run in parallel."""
    tmp = tmp_path_factory.mktemp("checkov")
    binary = checkov()
    # Offline (no Prisma Cloud mapping download); checkov's own logging quiet whatever LOG_LEVEL is set.
    env = {**os.environ, "LOG_LEVEL": "WARNING", "BC_SKIP_MAPPING": "TRUE"}
    running = {}
    for scan in SCANS:
        target, framework, minimum = _scan_target(scan, rendered, tmp)
        cmd = [
            binary,
            "-f",
            str(target),
            "--framework",
            framework,
            "--compact",
            "--quiet",
            "--skip-download",
            "-o",
            "json",
        ]
        skips = [entry["check"] for entry in skip_entries() if scan in entry.get("scans", [])]
        if skips:
            cmd += ["--skip-check", ",".join(skips)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        running[scan] = (proc, framework, minimum)
    reports = {}
    for scan, (proc, framework, minimum) in running.items():
        out, err = proc.communicate(timeout=300)
        if proc.returncode not in (0, 1) or not out.strip():
            pytest.fail(f"checkov did not run for {scan} ({proc.returncode}):\n{err[-3000:]}", pytrace=False)
        report = json.loads(out)
        if isinstance(report, list):  # one report per framework
            (report,) = [r for r in report if r.get("check_type") == framework]
        reports[scan] = (report, minimum)
    return reports


@pytest.mark.parametrize("scan", SCANS)
def test_checkov_finds_nothing(checkov_reports: dict[str, tuple[dict[str, Any], int]], scan: str) -> None:
    report, minimum = checkov_reports[scan]
    summary = report["summary"]
    assert summary["parsing_errors"] == 0, f"checkov could not parse the {scan} scan"
    # It really scanned everything (a parse problem can also show as a near-empty scan).
    assert summary["resource_count"] >= minimum, summary
    failed = [
        f"{c['check_id']} {c['resource']}: {c['check_name']}"
        for c in report["results"].get("failed_checks", [])
    ]
    assert not failed, f"checkov ({scan}):\n" + "\n".join(failed)
    for skipped in report["results"].get("skipped_checks", []):
        comment = (skipped.get("check_result") or {}).get("suppress_comment", "")
        assert comment and comment != "No comment provided", f"skip without a reason: {skipped['check_id']}"


def test_every_skip_in_the_file_has_a_reason() -> None:
    entries = skip_entries()
    for entry in entries:
        assert set(entry) == {"check", "scans", "reason"}, f"unexpected keys in {entry}"
        assert CHECK_ID.match(entry["check"]), f"not a checkov check id: {entry['check']!r}"
        assert entry["scans"] and set(entry["scans"]) <= set(SCANS), (
            f"{entry['check']}: scans must be in {SCANS}"
        )
        assert len(str(entry["reason"]).split()) >= 5, f"{entry['check']}: write the reason out"
    checks = [(entry["check"], scan) for entry in entries for scan in entry["scans"]]
    assert len(checks) == len(set(checks)), "a check is listed twice for the same scan"


def _skip_annotations(docs: list[Doc]) -> list[tuple[str, str, str]]:
    found = []
    for doc in docs:
        meta = doc.get("metadata") or {}
        templates = [meta, ((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}]
        for where in templates:
            for key, value in (where.get("annotations") or {}).items():
                if SKIP_ANNOTATION.match(key):
                    found.append((f"{doc.get('kind')}/{meta.get('name')}", key, str(value)))
    return found


def test_every_skip_annotation_has_a_reason(rendered: dict[str, list[Doc]]) -> None:
    raw_docs = [
        doc for path in K8S_DIR.rglob("*.yaml") for doc in yaml.safe_load_all(path.read_text()) if doc
    ]
    every = [doc for docs in rendered.values() for doc in docs] + [d for d in raw_docs if isinstance(d, dict)]
    for where, key, value in _skip_annotations(every):
        # checkov splits the value on "=": exactly one, a check id before it, a reason after it.
        check, sep, reason = value.partition("=")
        assert sep and CHECK_ID.match(check.strip()), (
            f"{where} {key}: expected 'CKV_..=<reason>', got {value!r}"
        )
        assert "=" not in reason, f"{where} {key}: checkov cannot parse a reason containing '='"
        assert len(reason.split()) >= 5, f"{where} {key}: write the reason out"

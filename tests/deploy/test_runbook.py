"""The runbook's commands are real: every `python -m` module exists, every `tools.backup` invocation
(shell or a Job's JSON args) parses with the CLI's own parser, and every `make` target is in the Makefile."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex

import pytest

from tools import backup
from tools.k8s_manifests import REPO

RUNBOOK = REPO / "docs" / "runbook.md"
README = REPO / "README.md"


def _code(path: object) -> str:
    """The text of every fenced code block and inline code span."""
    text = RUNBOOK.read_text() if path is RUNBOOK else README.read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return "\n".join(blocks + spans)


@pytest.mark.parametrize("doc", [RUNBOOK, README], ids=["runbook", "readme"])
def test_python_modules_exist(doc: object) -> None:
    modules = set(re.findall(r"python -m ([a-z_][\w.]*)", _code(doc)))
    assert modules, "no python -m command found"
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    assert not missing, f"{doc}: no such module: {missing}"


def test_backup_invocations_parse() -> None:
    code = _code(RUNBOOK).replace("$STAMP", "20261129T021700Z").replace("<stamp>", "20261129T021700Z")
    shell = [
        shlex.split(line.split("tools.backup", 1)[1].split("#")[0])
        for line in code.splitlines()
        if re.search(r"python -m tools\.backup ", line)
    ]
    jobs = [json.loads(j.replace('\\"', '"')) for j in re.findall(r'(\[\\?"tools\.backup\\?".*?\])', code)]
    assert len(shell) >= 4 and len(jobs) >= 3, (shell, jobs)
    for argv in shell + [j[1:] for j in jobs]:
        try:
            backup.build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"tools.backup does not take: {argv}")


def test_make_targets_exist() -> None:
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M))
    used = set(re.findall(r"\bmake ([a-z][\w-]*)", _code(RUNBOOK) + "\n" + _code(README)))
    assert used and used <= targets, f"unknown make targets: {sorted(used - targets)}"

"""deploy/docker/Dockerfile, read (no Docker engine here to build it): pinned, non-root, runs what k8s asks.

checkov's dockerfile scan (test_k8s_checkov.py) covers the generic rules; these are the SendSafe ones.
"""

from __future__ import annotations

import json
import re
import shlex

from tools.k8s_manifests import REPO, Doc, workloads

DOCKER = REPO / "deploy" / "docker"
BASE = re.compile(r"^python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}$")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_every_stage_uses_the_same_pinned_base() -> None:
    bases = [args.split()[0] for word, args in _instructions() if word == "FROM"]
    assert len(bases) >= 2, "multi-stage: a builder and a runtime stage"
    assert len(set(bases)) == 1, (
        f"the stages must share one base (the venv's interpreter lives there): {bases}"
    )
    assert BASE.match(bases[0]), f"base image not pinned by digest: {bases[0]}"


def test_runtime_stage_runs_as_10001_with_python_m() -> None:
    final = _final_stage()
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1] == "10001:10001", "numeric non-root user, so runAsNonRoot can verify it"
    (entrypoint,) = [json.loads(args) for word, args in final if word == "ENTRYPOINT"]
    assert entrypoint == ["python", "-m"]
    env = " ".join(args for word, args in final if word == "ENV")
    (pythonpath,) = re.findall(r"PYTHONPATH=(\S+)", env)
    assert {"/app", "/app/gen/python"} <= set(pythonpath.split(":"))


def test_no_build_tools_are_installed() -> None:
    for word, args in _instructions():
        if word == "RUN" and "apt-get install" in args:
            packages = set(shlex.split(args.split("apt-get install", 1)[1].split("&&")[0]))
            assert not packages & {"build-essential", "gcc", "g++", "make", "python3-dev", "libpq-dev"}, (
                packages
            )
        for command in args.split("&&"):
            if re.search(r"\bpip\b.*\sinstall\s", command):
                assert "--only-binary=:all:" in command, "wheels only: no compiler needed, none present"


def test_the_image_holds_every_module_the_manifests_run(rendered: dict[str, list[Doc]]) -> None:
    copied = {
        args.split()[0].rstrip("/")
        for word, args in _final_stage()
        if word == "COPY" and "--from" not in args
    }
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert copied <= allowed, f"COPY sources the build context excludes: {copied - allowed}"
    assert "*" in ignore, "the context is an allow-list (never .dev/ certificates or .venv)"
    for docs in rendered.values():
        for w in workloads(docs):
            for container in w.containers():
                if not container["image"].startswith(("sendsafe", "registry.example.invalid/sendsafe")):
                    continue
                module = container["args"][0]
                package = module.split(".")[0]
                assert package in copied, f"{w} runs {module}, but the image has no {package}/"

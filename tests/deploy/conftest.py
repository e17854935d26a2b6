"""Offline checks of deploy/: each kustomize overlay rendered once per session by `kubectl kustomize`."""

from __future__ import annotations

import pytest

from tools.k8s_manifests import OVERLAYS, Doc, KubectlMissingError, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Doc]]:
    """overlay name -> its rendered documents. A missing kubectl fails (never skips) the deploy checks."""
    try:
        return {overlay: render(overlay) for overlay in OVERLAYS}
    except KubectlMissingError as exc:
        pytest.fail(str(exc), pytrace=False)

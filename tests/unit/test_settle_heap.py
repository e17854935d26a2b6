"""Every service process calls svckit.app.settle_heap once it has started (svckit.app.serve, the gateway)."""

from __future__ import annotations

import json
import subprocess
import sys

from svckit.app import GC_YOUNG_THRESHOLD


def test_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    # In a fresh interpreter: this process's collector must stay as the test runner set it.
    code = (
        "import gc, json; from svckit.app import settle_heap; before = gc.get_freeze_count(); settle_heap();"
        " print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, frozen, threshold = json.loads(out)
    assert before == 0 and frozen > 1000  # the modules' objects are out of the collector's way
    assert threshold == [GC_YOUNG_THRESHOLD, 10, 10]


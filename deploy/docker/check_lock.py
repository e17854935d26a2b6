"""Build-time check: every distribution installed in this interpreter is pinned, at that version, by the lock.

Usage (inside the image build): /opt/venv/bin/python check_lock.py requirements.lock
"""

import importlib.metadata
import re
import sys


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(lock_path: str) -> int:
    pins = {}
    with open(lock_path) as lock:
        for line in lock:
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[_norm(name.strip())] = version.split(";", 1)[0].split()[0]  # "1.2 \\" with hashes
    bad = []
    for dist in importlib.metadata.distributions():
        name, version = _norm(dist.metadata["Name"]), dist.version
        if pins.get(name) != version:
            bad.append(f"{name}=={version} (lock: {pins.get(name, 'absent')})")
    if bad:
        print("installed but not pinned by the lock:\n  " + "\n  ".join(sorted(bad)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

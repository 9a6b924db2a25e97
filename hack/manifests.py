"""Render manifests/install.yaml and the chart's copied files; `--check` fails if any is stale."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from delivery_tools import ROOT, stale_outputs, write_outputs


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = stale_outputs()
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (run `make manifests`)", file=sys.stderr)
        return 1 if stale else 0
    for path in write_outputs():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Validate every rendered manifest (kustomize overlays and chart variants) against Kubernetes schemas."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from delivery_tools import kustomize, load_docs, render_chart, validate_docs

OVERLAYS = ("default", "certmanager", "prometheus")
CHART_VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "everything": {
        "certManager": {"enabled": True},
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
        "createNamespace": True,
    },
}


def main() -> int:
    failed = 0
    sources: dict[str, list[dict[str, Any]]] = {f"kustomize {o}": load_docs(kustomize(o)) for o in OVERLAYS}
    sources.update({f"chart {n}": render_chart(v) for n, v in CHART_VARIANTS.items()})
    for name, docs in sources.items():
        problems = validate_docs(docs)
        print(f"{name}: {len(docs)} objects, {len(problems)} problems")
        for p in problems:
            print(f"  {p}")
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers shared by the benchmark scripts: timing and the JSON report envelope."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def best_time(run: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """Warm up once, then the best wall time of ``repeats`` runs, with the last output."""
    out = run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - started)
    return best, out


def write_report(out: str | os.PathLike, name: str, versions: dict, **payload: Any) -> None:
    """Write ``{"benchmark", "date", "machine", "versions", **payload}`` as JSON."""
    report = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor()},
        "versions": {"python": platform.python_version(), **versions},
        **payload,
    }
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path}")

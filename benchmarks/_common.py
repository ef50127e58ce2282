"""Helpers shared by the benchmark scripts: timing and the JSON report envelope."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from mrlsearch.benchmark import best_time

__all__ = ["best_time", "write_report"]


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

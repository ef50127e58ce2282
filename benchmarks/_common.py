"""Helpers shared by the benchmark scripts: timing, data-set options and the JSON report."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from mrlsearch.benchmark import best_time

__all__ = ["best_time", "dataset_parser", "graph_versions", "write_report"]


def dataset_parser(description: str, datasets: tuple[str, ...], *, out: str,
                   queries_help: str) -> argparse.ArgumentParser:
    """The options of the scripts that build graphs over the funnel's data sets: ``--datasets``,
    ``--n``, ``--queries``, ``--M``, ``--ef-construction`` and ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--datasets", nargs="+", default=list(datasets), choices=list(datasets))
    parser.add_argument("--n", type=int, default=None, help="rows per data set (default: all)")
    parser.add_argument("--queries", type=int, default=500, help=queries_help)
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--out", default=out)
    return parser


def graph_versions() -> dict[str, str]:
    """Versions of numpy, numba and hnswlib, for a report."""
    import hnswlib
    import numba
    import numpy as np

    return {"numpy": np.__version__, "numba": numba.__version__,
            "hnswlib": getattr(hnswlib, "__version__", "0.8.0")}


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

"""Run every benchmark one after the other, then regenerate docs/benchmarks.md.

    python benchmarks/run_all.py            # about an hour on 2 cores
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("funnel", "build", "build_policy", "scale", "cascade", "encode", "train", "load")


def main() -> None:
    for name in BENCHMARKS:
        print(f"\n##### {name}", flush=True)
        subprocess.run([sys.executable, str(HERE / f"{name}.py"), "--out",
                        str(HERE / "results" / f"{name}.json")], check=True)
    subprocess.run([sys.executable, str(HERE / "report.py"), "--results", str(HERE / "results"),
                    "--out", str(HERE.parent / "docs" / "benchmarks.md")], check=True)


if __name__ == "__main__":
    main()

"""The Python blocks of docs/quickstart.md run, in order, in one namespace."""

import re
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"


def test_quickstart_code_blocks_run(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    blocks = re.findall(r"```python\n(.*?)```", QUICKSTART.read_text(), flags=re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"quickstart.md block {number}", "exec"), namespace)

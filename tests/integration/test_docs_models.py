"""The ``python`` blocks of docs/models.md run, in order, in one namespace (``py`` blocks show
API still being written and are not run)."""

import re
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parents[2] / "docs" / "models.md"

pytestmark = pytest.mark.export


def test_models_doc_code_blocks_run(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("wordllama")
    blocks = re.findall(r"```python\n(.*?)```", MODELS.read_text(), flags=re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # load_wordllama's cache folder
    namespace: dict = {}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"models.md block {number}", "exec"), namespace)

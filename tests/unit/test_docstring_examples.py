"""Every docstring example of mrlsearch and exporters runs and prints what it shows.

Examples marked ``# doctest: +SKIP`` are not run: they need a Ray cluster or files they only
name (``"vectors.npy"``, ``"shards/"``).
"""

import doctest
import importlib
from pathlib import Path

import pytest

import exporters
import mrlsearch


def _module_names() -> list[str]:
    """Every module of the two packages, from their files: nothing is imported while the tests
    are collected (``pkgutil.walk_packages`` imports subpackages, and with them Ray)."""
    names = []
    for package in (mrlsearch, exporters):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


@pytest.mark.parametrize("name", _module_names())
def test_docstring_examples_run(name, capsys):
    if name.startswith("mrlsearch.distributed"):
        pytest.importorskip("ray")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = capsys.readouterr().out
    assert result.failed == 0, report

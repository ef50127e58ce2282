"""Every docstring example of mrlsearch and exporters runs and prints what it shows.

Examples marked ``# doctest: +SKIP`` are not run: they need a Ray cluster or files they only
name (``"vectors.npy"``, ``"shards/"``).
"""

import doctest
import importlib
import pkgutil

import pytest

import exporters
import mrlsearch


def _module_names() -> list[str]:
    names = []
    for package in (mrlsearch, exporters):
        names.append(package.__name__)
        names.extend(info.name for info in pkgutil.walk_packages(package.__path__,
                                                                   package.__name__ + "."))
    return sorted(names)


@pytest.mark.parametrize("name", _module_names())
def test_docstring_examples_run(name, capsys):
    if name.startswith("mrlsearch.distributed"):
        pytest.importorskip("ray")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = capsys.readouterr().out
    assert result.failed == 0, report

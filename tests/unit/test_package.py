import subprocess
import sys

import mrlsearch
from mrlsearch import DimensionError, FormatError, MRLError, ProviderError


def test_import_does_not_pull_torch():
    code = (
        "import sys, mrlsearch; from mrlsearch import Searcher; "
        "import mrlsearch.searcher, mrlsearch.datasets; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_all_lists_public_names_sorted():
    public = sorted(
        (name for name, value in vars(mrlsearch).items()
         if not name.startswith("_") and getattr(value, "__module__", None) == "mrlsearch"),
        key=str.casefold,
    )
    assert mrlsearch.__all__ == sorted(mrlsearch.__all__, key=str.casefold)
    assert public == mrlsearch.__all__


def test_error_hierarchy():
    assert issubclass(DimensionError, MRLError) and issubclass(DimensionError, ValueError)
    assert issubclass(FormatError, MRLError) and issubclass(FormatError, ValueError)
    assert issubclass(ProviderError, MRLError) and issubclass(ProviderError, RuntimeError)

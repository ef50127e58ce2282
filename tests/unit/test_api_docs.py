"""docs/api.md is tested against the real signatures: every public method of the public
classes is listed, with every parameter it takes, and every public property is named."""

import inspect
from pathlib import Path

import pytest

import mrlsearch
from mrlsearch import Classifier, Encoder, Searcher
from mrlsearch import benchmark, datasets

API = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
LINES = API.splitlines()


def _lines_naming(call: str) -> str:
    return "\n".join(line for line in LINES if call in line)


def _members(cls):
    for name, member in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        yield name, member


@pytest.mark.parametrize("cls", [Searcher, Classifier, Encoder])
def test_every_public_method_and_parameter_is_in_api_md(cls):
    missing = []
    for name, member in _members(cls):
        if isinstance(member, property):
            if f"`{name}`" not in API and f" {name}," not in API and f"`{name}" not in API:
                missing.append(f"property {cls.__name__}.{name}")
            continue
        function = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
        if not callable(function):
            continue
        call = f"{cls.__name__}(" if name == "__init__" else f"{name}("
        text = _lines_naming(call)
        if not text:
            missing.append(f"{cls.__name__}.{name}")
            continue
        for parameter in inspect.signature(function).parameters:
            if parameter not in ("self", "cls") and parameter not in text:
                missing.append(f"{cls.__name__}.{name}({parameter}=...)")
    assert not missing, missing


@pytest.mark.parametrize("function", [benchmark.compare, datasets.synthetic_mrl])
def test_module_functions_are_documented_with_their_parameters(function):
    text = _lines_naming(f"{function.__name__}(")
    assert text, function.__name__
    for parameter in inspect.signature(function).parameters:
        assert parameter in text, (function.__name__, parameter)


def test_every_public_name_is_in_api_md():
    assert not [name for name in mrlsearch.__all__ if name not in API]

"""Encoder arguments checked before any file is read (no model needed)."""

import pytest

from mrlsearch import Encoder


@pytest.mark.parametrize("providers, shown", [
    (3, "int 3"),
    (None, "NoneType None"),
    (b"cpu", "bytes b'cpu'"),
    ({"cpu"}, "set {'cpu'}"),
    (["cpu", 3], "int 3"),
    ([("CPUExecutionProvider", {})], "tuple ('CPUExecutionProvider', {})"),
])
def test_providers_of_the_wrong_type_are_a_type_error_naming_them(tmp_path, providers, shown):
    # checked first: the missing directory is not what the error is about
    with pytest.raises(TypeError, match="'providers' must") as error:
        Encoder(tmp_path / "missing", providers=providers)
    assert f"(got {shown})" in str(error.value)


def test_empty_providers_and_good_names_pass_the_check(tmp_path):
    with pytest.raises(ValueError, match=r"'providers' must name at least one provider"):
        Encoder(tmp_path / "missing", providers=[])
    for providers in ("auto", "cpu", ["cpu"], ("CPUExecutionProvider",)):
        with pytest.raises(FileNotFoundError):  # the check passed; the directory is missing
            Encoder(tmp_path / "missing", providers=providers)

"""``sharding.json`` of a sharded index: written atomically, read back defensively."""

import pytest

from mrlsearch import FormatError
from mrlsearch._format import MAX_MANIFEST_BYTES

pytest.importorskip("ray")  # mrlsearch.distributed needs the 'distributed' extra
from mrlsearch.distributed._layout import (  # noqa: E402
    SHARDING_FILE,
    read_sharding,
    write_sharding,
)


def test_a_written_sharding_file_reads_back(tmp_path):
    write_sharding(tmp_path, n_shards=2, names=["shard-0", "shard-1"], next_id=7)
    data = read_sharding(tmp_path / SHARDING_FILE)
    assert data["shards"] == ["shard-0", "shard-1"] and data["next_id"] == 7


@pytest.mark.parametrize("content, match", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "JSON|nested"),
    (b" " * (MAX_MANIFEST_BYTES + 10), f"more than {MAX_MANIFEST_BYTES} bytes"),
    (b'{"format": "other"}', "is not a"),
])
def test_a_bad_sharding_file_is_a_format_error(tmp_path, content, match):
    path = tmp_path / SHARDING_FILE
    path.write_bytes(content)
    with pytest.raises(FormatError, match=match):
        read_sharding(path)


def test_a_directory_in_place_of_the_sharding_file_is_a_format_error(tmp_path):
    (tmp_path / SHARDING_FILE).mkdir()
    with pytest.raises(FormatError, match="not readable"):
        read_sharding(tmp_path / SHARDING_FILE)

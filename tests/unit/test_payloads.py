"""The payload column: add(payloads=...), get(ids, payload=True), through remove, compact,
save and load (mmap too), and the format on disk."""

import json

import numpy as np
import pytest

from mrlsearch import FormatError, Searcher
from mrlsearch._payloads import PayloadColumn, encode

PAYLOADS = ["first", "", None, b"\x00\xffraw", "naïve – ünïcödé ✓", "tab\tand\nnewline"]


def _vectors(n, dim=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _searcher(n=60, payloads=None, ids=None):
    s = Searcher(16, dims=(8, 16), index_dims=(8,))
    if payloads is None:
        payloads = [PAYLOADS[i % len(PAYLOADS)] for i in range(n)]
    s.add(_vectors(n), ids, payloads=payloads)
    return s, payloads


def test_get_returns_payloads_in_the_order_of_ids():
    s, payloads = _searcher()
    assert s.has_payloads
    order = [5, 0, 3, 2, 1, 4, 59]
    got = s.get(order, payload=True)
    assert got == [payloads[i] for i in order]
    assert type(got[0]) is str and type(got[2]) is bytes and got[3] is None and got[4] == ""
    assert s.get(7, payload=True) == [payloads[7]]
    assert s.get(order).shape == (len(order), 16)  # vectors stay the default
    with pytest.raises(KeyError, match="id 1000 is not in the index"):
        s.get([1, 1000], payload=True)
    with pytest.raises(TypeError, match="'payload'"):
        s.get([1], payload="yes")


def test_index_without_payloads_returns_none():
    s = Searcher(16, dims=(8, 16), index_dims=(8,))
    s.add(_vectors(10))
    assert not s.has_payloads
    assert s.get([3, 1], payload=True) == [None, None]


@pytest.mark.parametrize("payloads, error, match", [
    ("abcdefghij", TypeError, "'payloads' must be a sequence"),
    (b"abcdefghij", TypeError, "'payloads' must be a sequence"),
    (42, TypeError, "'payloads' must be a sequence"),
    (["a"] * 9, ValueError, "'payloads' must hold 10 payloads"),
    (["a"] * 9 + [3], TypeError, r"'payloads' items must be str, bytes or None \(got int at 9\)"),
    (["a"] * 9 + [bytearray(b"x")], TypeError, "'payloads' items"),
    (["a"] * 9 + ["\ud800"], ValueError, "'payloads' item 9 is a str that is not valid UTF-8"),
    (np.array([["a"] * 5] * 2), TypeError, "'payloads' must be a 1-D sequence"),
])
def test_bad_payloads_are_refused_before_anything_is_written(payloads, error, match):
    s = Searcher(16, dims=(8, 16), index_dims=(8,))
    s.add(_vectors(3))
    with pytest.raises(error, match=match):
        s.add(_vectors(10, seed=1), payloads=payloads)
    assert len(s) == 3 and not s.has_payloads


def test_numpy_string_arrays_and_tuples_are_accepted():
    s = Searcher(16, dims=(8, 16), index_dims=(8,))
    s.add(_vectors(3), payloads=np.array(["x", "yy", "zzz"]))
    s.add(_vectors(2, seed=1), payloads=(b"a", None))
    assert s.get([0, 1, 2, 3, 4], payload=True) == ["x", "yy", "zzz", b"a", None]


def test_mixed_adds_replace_and_remove():
    s = Searcher(16, dims=(8, 16), index_dims=(8,))
    s.add(_vectors(4))                                   # no payloads: None
    s.add(_vectors(2, seed=1), payloads=["e", "f"])       # ids 4, 5
    s.add(_vectors(1, seed=2), ids=[4], payloads=["E"])  # replaces id 4 and its payload
    s.add(_vectors(1, seed=3), ids=[5])                  # replaced without payloads: None
    assert s.get([0, 4, 5], payload=True) == [None, "E", None]
    s.remove([4])
    with pytest.raises(KeyError):
        s.get([4], payload=True)


@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_round_trip(tmp_path, mmap):
    s, payloads = _searcher(n=300)
    s.save(tmp_path / "index")
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["version"] == 3
    for name in ("payload_kinds.npy", "payload_offsets.npy", "payload_data.npy"):
        assert name in manifest["files"]
    loaded = Searcher.load(tmp_path / "index", mmap=mmap)
    assert loaded.get(list(range(300)), payload=True) == payloads
    assert loaded.memory_usage()["payloads"] > 0
    # the loaded index takes more payloads (a mapped blob is copied before it grows)
    loaded.add(_vectors(2, seed=5), payloads=["more", b"bytes"])
    assert loaded.get([299, 300, 301], payload=True) == [payloads[299], "more", b"bytes"]
    loaded.save(tmp_path / "index")
    again = Searcher.load(tmp_path / "index", mmap=mmap)
    assert again.get([0, 300, 301], payload=True) == [payloads[0], "more", b"bytes"]


def test_index_without_payloads_is_saved_as_format_2(tmp_path):
    s = Searcher(16, dims=(8, 16), index_dims=(8,))
    s.add(_vectors(20))
    s.save(tmp_path / "plain")
    manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert manifest["version"] == 2
    assert not [name for name in manifest["files"] if name.startswith("payload")]
    loaded = Searcher.load(tmp_path / "plain")
    assert not loaded.has_payloads and loaded.get([0], payload=True) == [None]


def test_removed_payloads_are_not_saved_and_compact_frees_them(tmp_path):
    payloads = [f"row {i}" for i in range(50)]
    payloads[7] = "SECRET-seven"
    s, _ = _searcher(n=50, payloads=payloads)
    s.remove([7])
    s.save(tmp_path / "index")
    assert b"SECRET-seven" not in (tmp_path / "index" / "payload_data.npy").read_bytes()
    loaded = Searcher.load(tmp_path / "index")
    expected = [p for i, p in enumerate(payloads) if i != 7]
    live = [i for i in range(50) if i != 7]
    assert loaded.get(live, payload=True) == expected
    s.compact()
    assert s.tombstones == 0
    assert s.get(live, payload=True) == expected
    assert b"SECRET-seven" not in s._store.payloads.data[: s._store.payloads.size].tobytes()
    s.save(tmp_path / "compacted")
    assert Searcher.load(tmp_path / "compacted", mmap=True).get(live, payload=True) == expected


def test_compact_keeps_payloads_of_rows_added_without_them():
    s = Searcher(16, dims=(8, 16), index_dims=(8,))
    s.add(_vectors(5), payloads=list("abcde"))
    s.add(_vectors(3, seed=1))
    s.remove([0])
    s.compact()
    assert s.get([1, 4, 5, 7], payload=True) == ["b", "e", None, None]


def test_search_results_map_to_payloads():
    vectors = _vectors(200)
    s = Searcher(16, dims=(8, 16), index_dims=(8,))
    s.add(vectors, payloads=[f"doc {i}" for i in range(200)])
    hits = s.search(vectors[:3], k=1)
    assert s.get(hits.ids[:, 0], payload=True) == ["doc 0", "doc 1", "doc 2"]


def test_encode_and_column_checks():
    encoded = encode(["ab", None, b"c"], 3)
    assert encoded.kinds.tolist() == [1, 0, 2]
    assert encoded.offsets.tolist() == [0, 2, 2, 3]
    column = PayloadColumn.from_arrays(encoded.kinds, encoded.offsets, encoded.data)
    assert column.get(np.array([2, 0, 1])) == [b"c", "ab", None]
    with pytest.raises(FormatError, match="offsets must grow"):
        PayloadColumn.from_arrays(encoded.kinds, np.array([0, 2, 1, 3], dtype=np.uint64),
                                  encoded.data)
    with pytest.raises(FormatError, match="offsets must grow"):
        PayloadColumn.from_arrays(encoded.kinds, encoded.offsets, encoded.data[:2])
    with pytest.raises(FormatError, match="kinds must be"):
        PayloadColumn.from_arrays(np.array([1, 5, 2], dtype=np.uint8), encoded.offsets,
                                  encoded.data)
    with pytest.raises(FormatError, match="without a payload has payload bytes"):
        PayloadColumn.from_arrays(np.array([0, 0, 2], dtype=np.uint8), encoded.offsets,
                                  encoded.data)
    bad = PayloadColumn.from_arrays(np.array([1], dtype=np.uint8),
                                    np.array([0, 1], dtype=np.uint64),
                                    np.array([0xFF], dtype=np.uint8), label="x.npy")
    with pytest.raises(FormatError, match="not valid UTF-8"):
        bad.get(np.array([0]))


def test_inconsistent_payload_files_are_a_format_error(tmp_path):
    """A payload file set that is incomplete is refused at load."""
    s, _ = _searcher(n=20)
    s.save(tmp_path / "index")
    manifest_path = tmp_path / "index" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["files"]["payload_kinds.npy"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match="payload files"):
        Searcher.load(tmp_path / "index")


def test_build_stores_payloads_with_the_rows_it_builds():
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((600, 32)).astype(np.float32)
    texts = [f"text {i}" for i in range(600)]
    ids = np.arange(1000, 1600)
    searcher = Searcher.build(vectors, ids=ids, payloads=texts, k=5, target_recall=0.8,
                              dims=(8, 16, 32), progress=False)
    hits = searcher.search(vectors[:4], k=1).ids[:, 0]
    assert hits.tolist() == [1000, 1001, 1002, 1003]
    assert searcher.get(hits, payload=True) == ["text 0", "text 1", "text 2", "text 3"]
    with pytest.raises(ValueError, match="payloads"):
        Searcher.build(vectors, payloads=texts[:10], progress=False)

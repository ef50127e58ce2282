"""Searcher.load(verify="full"|"lazy"|"none") and Searcher.verify(), on good and corrupt files."""

import hashlib
import json

import numpy as np
import pytest

from mrlsearch import FormatError, Searcher, _format

MODES = ("full", "lazy", "none")


@pytest.fixture
def saved(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((400, 32)).astype(np.float32)
    s = Searcher(32, dims=(8, 16, 32), index_dims=(8,))
    s.add(vectors, payloads=[f"text {i}" for i in range(400)])
    s.save(tmp_path / "index")
    return tmp_path / "index", vectors


def _flip_last_value(path, offset=4):
    """Change one byte of the data (not the header): the checksum no longer matches."""
    data = bytearray(path.read_bytes())
    data[-offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("verify", [None, "quick", "FULL", 1, True])
def test_bad_verify_value(saved, verify):
    with pytest.raises(ValueError, match="'verify'"):
        Searcher.load(saved[0], verify=verify)


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("verify", MODES)
def test_good_index_loads_the_same_in_every_mode(saved, verify, mmap):
    path, vectors = saved
    reference = Searcher.load(path).search(vectors[:5], k=5)
    loaded = Searcher.load(path, mmap=mmap, verify=verify)
    result = loaded.search(vectors[:5], k=5)
    np.testing.assert_array_equal(result.ids, reference.ids)
    loaded.verify()
    loaded.verify()  # once passed, again at once
    assert loaded.get([3], payload=True) == ["text 3"]
    assert loaded._deferred_checks == ()


@pytest.mark.parametrize("mmap", [False, True])
def test_full_refuses_a_corrupt_vectors_file_at_load(saved, mmap):
    path, _ = saved
    _flip_last_value(path / "vectors.npy")
    with pytest.raises(FormatError, match=r"vectors\.npy is corrupt"):
        Searcher.load(path, mmap=mmap, verify="full")


@pytest.mark.parametrize("mmap", [False, True])
def test_lazy_reports_a_corrupt_vectors_file_and_then_refuses_every_call(saved, mmap):
    path, vectors = saved
    _flip_last_value(path / "vectors.npy")
    loaded = Searcher.load(path, mmap=mmap, verify="lazy")  # returns before the check
    with pytest.raises(FormatError, match=r"vectors\.npy is corrupt"):
        loaded.verify()
    for call in (lambda: loaded.search(vectors[:2], k=3),
                 lambda: loaded.funnel(vectors[:2], k=3),
                 lambda: loaded.search_graph(vectors[:2], k=3),
                 lambda: loaded.exact(vectors[:2], k=3),
                 lambda: loaded.get([1]),
                 lambda: loaded.ids(),
                 lambda: loaded.add(vectors[:1]),
                 lambda: loaded.remove([1]),
                 lambda: loaded.compact(),
                 lambda: loaded.memory_usage(),
                 lambda: loaded.save(path.parent / "copy"),
                 lambda: loaded.verify()):
        with pytest.raises(FormatError, match=r"vectors\.npy is corrupt"):
            call()
    assert not (path.parent / "copy").exists()


def test_lazy_background_check_fails_searches_without_verify(saved):
    path, vectors = saved
    _flip_last_value(path / "vectors.npy")
    loaded = Searcher.load(path, mmap=True, verify="lazy")
    # wait for the background thread itself (verify() would run the check on this thread)
    import threading

    for thread in threading.enumerate():
        if thread.name == "mrlsearch-verify":
            thread.join(timeout=30)
    with pytest.raises(FormatError, match=r"vectors\.npy is corrupt"):
        loaded.search(vectors[:1], k=3)


@pytest.mark.parametrize("mmap", [False, True])
def test_none_skips_the_check_until_verify(saved, mmap):
    path, vectors = saved
    _flip_last_value(path / "vectors.npy")
    loaded = Searcher.load(path, mmap=mmap, verify="none")
    assert loaded.search(vectors[:2], k=3).ids.shape == (2, 3)  # unchecked: it answers
    with pytest.raises(FormatError, match=r"vectors\.npy is corrupt"):
        loaded.save(path.parent / "copy")  # save verifies first: corruption is not laundered
    assert not (path.parent / "copy").exists()
    with pytest.raises(FormatError, match=r"vectors\.npy is corrupt"):
        loaded.search(vectors[:2], k=3)


@pytest.mark.parametrize("verify", ("lazy", "none"))
def test_deferred_modes_check_the_payload_blob_too(saved, verify):
    path, _ = saved
    _flip_last_value(path / "payload_data.npy", offset=1)
    loaded = Searcher.load(path, verify=verify)
    with pytest.raises(FormatError, match=r"payload_data\.npy is corrupt"):
        loaded.verify()


@pytest.mark.parametrize("verify", MODES)
@pytest.mark.parametrize("name", ["ids.npy", "norms.npy", "codes_8_int8.npy",
                                  "payload_offsets.npy", "hnsw_8.bin"])
def test_small_files_are_checked_at_load_in_every_mode(saved, verify, name):
    path, _ = saved
    _flip_last_value(path / name, offset=1)
    with pytest.raises(FormatError, match=name.replace(".", r"\.")):
        Searcher.load(path, mmap=True, verify=verify)


@pytest.mark.parametrize("verify", MODES)
def test_structure_of_big_files_is_checked_in_every_mode(saved, verify):
    path, _ = saved
    data = (path / "vectors.npy").read_bytes()
    (path / "vectors.npy").write_bytes(data[:-128])  # truncated: its size is wrong
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["vectors.npy"] = _format.sha256_file(path / "vectors.npy")
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match=r"vectors\.npy is \d+ bytes; its header declares"):
        Searcher.load(path, mmap=True, verify=verify)


def test_in_memory_searcher_has_nothing_to_verify():
    s = Searcher(8, dims=(4, 8), index_dims=(4,))
    s.verify()
    s.add(np.eye(8, dtype=np.float32))
    s.verify()


def test_deferred_check_runs_once_and_is_thread_safe(tmp_path):
    import hashlib
    import os
    import threading

    target = tmp_path / "blob.bin"
    target.write_bytes(os.urandom(3 << 20))
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    check = _format.DeferredCheck(os.open(target, os.O_RDONLY), target, digest, "m.json")
    outcomes = []
    threads = [threading.Thread(target=lambda: outcomes.append(check.run())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == [None] * 4 and check.done
    wrong = _format.DeferredCheck(os.open(target, os.O_RDONLY), target, "0" * 64, "m.json")
    assert wrong.run(cancelled=lambda: True) is None and not wrong.done  # cancelled: no outcome
    error = wrong.run()
    assert isinstance(error, FormatError) and "blob.bin is corrupt" in str(error)
    assert wrong.run() is error


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_resigned_vectors_that_are_not_finite_are_refused_by_a_full_verify(tmp_path, dtype,
                                                                            bad):
    # before, such a row loaded, was never found again, and compact() blamed its 'vectors'
    vectors = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    searcher = Searcher(16, dims=(8, 16), index_dims=(8,), dtype=dtype)
    searcher.add(vectors)
    searcher.save(tmp_path / "index")
    stored = np.load(tmp_path / "index" / "vectors.npy")
    stored[205, 12] = bad
    np.save(tmp_path / "index" / "vectors.npy", stored)
    manifest = json.loads((tmp_path / "index" / _format.MANIFEST).read_text())
    manifest["files"]["vectors.npy"] = hashlib.sha256(
        (tmp_path / "index" / "vectors.npy").read_bytes()).hexdigest()  # as its writer would
    (tmp_path / "index" / _format.MANIFEST).write_text(json.dumps(manifest))
    for mmap in (False, True):
        with pytest.raises(FormatError, match=r"vectors\.npy holds a value that is not finite "
                                              r"\(row 205\)"):
            Searcher.load(tmp_path / "index", mmap=mmap)
    # 'none' skips the pass over the values, as it skips the hash
    assert len(Searcher.load(tmp_path / "index", verify="none")) == 300

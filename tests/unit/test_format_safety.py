"""Safety of the on-disk helpers in mrlsearch._format (issue 13, reliability round 2).

Special files and paths outside the directory, hostile manifests, truncated writes, crafted
hnswlib graphs, torn reads during concurrent saves, the writer lock and the cleanup of what
killed saves leave behind. The directories here are written with the helpers themselves (a
small ``demo`` format), so the tests do not depend on the Searcher's own files.
"""

import errno
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import hnswlib
import numpy as np
import pytest
from hnsw_edits import Graph

from mrlsearch import FormatError, _format

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent


@contextmanager
def time_limit(seconds=10.0):
    """Fail instead of hanging: SIGALRM interrupts a blocking open() of a FIFO."""
    def expire(signum, frame):
        raise TimeoutError(f"blocked for more than {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def save_demo(path, version, *, rows=50):
    """A directory of format 'demo': two arrays that both hold ``version``, and a manifest."""
    with _format.atomic_directory(path) as staging:
        files = {
            "a.npy": _format.write_array(staging / "a.npy", np.full(rows, version, np.int64)),
            "b.npy": _format.write_array(staging / "b.npy", np.full((rows, 3), version, np.float32)),
            "notes.json": _format.write_json(staging / "notes.json", {"version": version}),
        }
        _format.write_json(staging / _format.MANIFEST,
                           {"format": "demo", "version": 1, "files": files})


def load_demo(path, *, mmap=False):
    with _format.open_directory(path, format_name="demo", versions=(1,)) as saved:
        a = saved.load_array("a.npy", dtype=np.int64, shape=(None,), mmap=mmap)
        b = saved.load_array("b.npy", dtype=np.float32, shape=(a.shape[0], 3), mmap=mmap)
        notes = saved.read_json("notes.json")
    return a, b, notes


def rewrite_manifest(path, edit):
    manifest = json.loads((path / _format.MANIFEST).read_text())
    edit(manifest)
    (path / _format.MANIFEST).write_text(json.dumps(manifest))


def resign(path):
    def edit(manifest):
        manifest["files"] = {name: hashlib.sha256((path / name).read_bytes()).hexdigest()
                             for name in manifest["files"]}
    rewrite_manifest(path, edit)


# ---------------------------------------------------------------------- round trip, basics
@pytest.mark.parametrize("mmap", [False, True])
def test_demo_round_trip_and_no_leftovers(tmp_path, mmap):
    save_demo(tmp_path / "d", 1)
    save_demo(tmp_path / "d", 2)
    a, b, notes = load_demo(tmp_path / "d", mmap=mmap)
    assert a.tolist() == [2] * 50 and (b == 2).all() and notes == {"version": 2}
    b[0, 0] = 99  # copy-on-write: the file is unchanged
    assert (load_demo(tmp_path / "d")[1] == 2).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no lock file, no staging


def test_empty_arrays_round_trip(tmp_path):
    save_demo(tmp_path / "d", 5, rows=0)
    for mmap in (False, True):
        a, b, _ = load_demo(tmp_path / "d", mmap=mmap)
        assert a.shape == (0,) and b.shape == (0, 3)


def test_checksum_mismatch_is_caught_on_the_bytes_read(tmp_path):
    save_demo(tmp_path / "d", 1)
    data = bytearray((tmp_path / "d" / "b.npy").read_bytes())
    data[-1] ^= 0x40
    (tmp_path / "d" / "b.npy").write_bytes(bytes(data))
    for mmap in (False, True):
        with pytest.raises(FormatError, match=r"b\.npy is corrupt"):
            load_demo(tmp_path / "d", mmap=mmap)
    with pytest.raises(FormatError, match=r"b\.npy is corrupt"):
        _format.read_manifest(tmp_path / "d", format_name="demo", versions=(1,))


@pytest.mark.parametrize("cut", [1, 7, 200])
def test_resigned_truncated_or_padded_arrays_are_refused(tmp_path, cut):
    save_demo(tmp_path / "d", 1)
    data = (tmp_path / "d" / "a.npy").read_bytes()
    (tmp_path / "d" / "a.npy").write_bytes(data[:-cut] if cut < len(data) else data + b"x")
    resign(tmp_path / "d")
    with pytest.raises(FormatError, match=r"a\.npy"):
        load_demo(tmp_path / "d")


def test_a_file_not_listed_cannot_be_read(tmp_path):
    save_demo(tmp_path / "d", 1)
    (tmp_path / "d" / "extra.npy").write_bytes((tmp_path / "d" / "a.npy").read_bytes())
    with _format.open_directory(tmp_path / "d", format_name="demo", versions=(1,)) as saved:
        with pytest.raises(FormatError, match="does not list 'extra.npy'"):
            saved.load_array("extra.npy", dtype=np.int64, shape=(None,))
        with pytest.raises(FormatError, match="does not list"):
            saved.read_bytes("../d/a.npy")


# ---------------------------------------------------------------------- special files, paths
def replace_with(path, kind, outside):
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink_outside":
        outside.write_bytes(b"x" * 10)
        path.symlink_to(outside)
    elif kind == "symlink_inside":
        path.symlink_to(path.parent / "a.npy")
    elif kind == "dangling_symlink":
        path.symlink_to(path.parent / "nothing-here")


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink_outside", "symlink_inside",
                                  "dangling_symlink"])
@pytest.mark.parametrize("name", ["b.npy", "notes.json", _format.MANIFEST])
def test_special_files_are_refused_without_blocking(tmp_path, kind, name):
    save_demo(tmp_path / "d", 1)
    replace_with(tmp_path / "d" / name, kind, tmp_path / "outside.bin")
    with time_limit(10), pytest.raises(FormatError, match=name.replace(".", r"\.")):
        load_demo(tmp_path / "d")
    with time_limit(10), pytest.raises(FormatError):
        _format.read_manifest(tmp_path / "d", format_name="demo", versions=(1,))


def test_a_fifo_given_directly_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with time_limit(10), pytest.raises(FormatError, match="FIFO"):
        _format.load_array(tmp_path, "pipe", dtype=np.int64, shape=(None,))
    with time_limit(10), pytest.raises(FormatError, match="FIFO"):
        _format.sha256_file(tmp_path / "pipe")
    with time_limit(10), pytest.raises(FormatError, match="FIFO"):
        _format.check_hnsw_file(tmp_path / "pipe", rows=1, dim=2, M=4)


@pytest.mark.parametrize("name", ["../outside.npy", "/etc/passwd", "sub/a.npy", ".hidden",
                                  "", "..", "a\\b.npy", "nul\x00.npy", _format.MANIFEST])
def test_manifest_names_outside_the_directory_are_refused(tmp_path, name):
    save_demo(tmp_path / "d", 1)
    (tmp_path / "outside.npy").write_bytes((tmp_path / "d" / "a.npy").read_bytes())
    digest = _format.sha256_file(tmp_path / "outside.npy")
    rewrite_manifest(tmp_path / "d", lambda m: m["files"].__setitem__(name, digest))
    with pytest.raises(FormatError, match="bad file name"):
        load_demo(tmp_path / "d")


@pytest.mark.parametrize("digest", [None, 5, "abc", "G" * 64, "A" * 64, ["x"]])
def test_listed_files_need_a_sha256(tmp_path, digest):
    save_demo(tmp_path / "d", 1)
    rewrite_manifest(tmp_path / "d", lambda m: m["files"].__setitem__("a.npy", digest))
    with pytest.raises(FormatError, match="without a sha256"):
        load_demo(tmp_path / "d")


def test_missing_listed_file_and_missing_manifest(tmp_path):
    save_demo(tmp_path / "d", 1)
    (tmp_path / "d" / "b.npy").unlink()
    with pytest.raises(FormatError, match=r"b\.npy is missing"):
        load_demo(tmp_path / "d")
    (tmp_path / "d" / _format.MANIFEST).unlink()
    with pytest.raises(FormatError, match="manifest.json is missing"):
        load_demo(tmp_path / "d")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FormatError, match="must be a saved"):
        load_demo(tmp_path / "file")
    with pytest.raises(FileNotFoundError):
        load_demo(tmp_path / "nothing")


# ---------------------------------------------------------------------- hostile manifests
@pytest.mark.parametrize("text, match", [
    ("[" * 100_000 + "]" * 100_000, "nested"),
    ('{"a": ' * 40 + "1" + "}" * 40, "nested more than"),
    ('{"format": "demo", "version": 1, "files": {}, "rows": ' + "9" * 5000 + "}", "digits"),
    ('{"format": "demo", "version": 1, "files": {}, "rows": ' + "1" * 25 + "}", "digits"),
    ('{"format": "demo", "version": 1, "files": {}, "rows": -99999999999999999999}', "digits"),
    ('{"format": "demo", "format": "demo", "version": 1, "files": {}}', "appears twice"),
    ('{"format": "demo", "version": 1, "files": {}', "not valid JSON"),
    ('\xff\xfe', "not valid JSON"),
    ("[1, 2]", "must describe format"),
    ('{"format": "demo", "version": true, "files": {}}', "format version"),
    ('{"format": "demo", "version": 1, "files": []}', "must list its files"),
])
def test_hostile_manifests_raise_format_error(tmp_path, text, match):
    save_demo(tmp_path / "d", 1)
    (tmp_path / "d" / _format.MANIFEST).write_bytes(text.encode("latin-1"))
    with pytest.raises(FormatError, match=match):
        load_demo(tmp_path / "d")
    with pytest.raises(FormatError, match=match):
        _format.read_manifest(tmp_path / "d", format_name="demo", versions=(1,))


def test_a_huge_manifest_is_refused_before_parsing(tmp_path):
    save_demo(tmp_path / "d", 1)
    padding = " " * (_format.MAX_MANIFEST_BYTES + 1)
    (tmp_path / "d" / _format.MANIFEST).write_text('{"format": "demo"' + padding + "}")
    with pytest.raises(FormatError, match="more than the"):
        load_demo(tmp_path / "d")


# ---------------------------------------------------------------------- verified writes
def test_helpers_return_on_disk_checksums(tmp_path):
    with _format.atomic_directory(tmp_path / "d") as staging:
        digest = _format.write_array(staging / "a.npy", np.arange(10))
        (staging / "raw.bin").write_bytes(b"raw")
        sealed = _format.seal_file(staging / "raw.bin", size=3)
        assert _format.sealed_checksums(staging) == {"a.npy": digest, "raw.bin": sealed}
    assert digest == _format.sha256_file(tmp_path / "d" / "a.npy")
    assert sealed == hashlib.sha256(b"raw").hexdigest()


def test_a_directory_that_is_not_an_index_is_never_replaced(tmp_path):
    user = tmp_path / "mydata"
    user.mkdir()
    (user / "notes.md").write_text("mine")
    with pytest.raises(FileExistsError, match="does not hold a saved index"), \
            _format.atomic_directory(user) as staging:
        _format.write_array(staging / "a.npy", np.arange(3))
    assert [p.name for p in user.iterdir()] == ["notes.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata"]  # no staging left
    save_demo(user / "index", 1)
    (user / "index" / "extra.txt").write_text("mine too")  # beside a saved index's files
    with pytest.raises(FileExistsError, match=r"not part of its saved index \(extra.txt\)"):
        save_demo(user / "index", 2)
    assert load_demo(user / "index")[2] == {"version": 1}
    (user / "index" / _format.MANIFEST).write_text("[]")  # a manifest without its file list
    with pytest.raises(FileExistsError, match="does not list its files"):
        save_demo(user / "index", 2)
    empty = tmp_path / "empty"
    empty.mkdir()
    save_demo(empty, 1)  # an empty directory, and a saved index, are replaced
    save_demo(empty, 2)
    assert load_demo(empty)[2] == {"version": 2}


def test_a_lock_that_cannot_be_made_names_the_target(tmp_path):
    target = tmp_path / "missing" / "index"
    with pytest.raises(FileNotFoundError, match=r"cannot write .*missing/index") as info, \
            _format.writer_lock(target):
        pass
    assert info.value.filename == str(target)


def test_a_directory_of_another_kind_is_never_replaced(tmp_path):
    save_demo(tmp_path / "model", 1)  # its manifest says format 'demo'
    with pytest.raises(FileExistsError, match="holds a 'demo' directory, not a 'other' one"), \
            _format.atomic_directory(tmp_path / "model", kind="other") as staging:
        _format.write_array(staging / "a.npy", np.arange(3))
    assert load_demo(tmp_path / "model")[2] == {"version": 1}


def test_a_file_put_in_the_target_during_a_save_is_not_deleted(tmp_path):
    save_demo(tmp_path / "d", 1)
    with pytest.raises(FileExistsError, match=r"not part of its saved index \(late.txt\)"), \
            _format.atomic_directory(tmp_path / "d") as staging:
        _format.write_array(staging / "a.npy", np.arange(3))
        (tmp_path / "d" / "late.txt").write_text("written while the save ran")
    assert (tmp_path / "d" / "late.txt").read_text() == "written while the save ran"
    assert load_demo(tmp_path / "d")[2] == {"version": 1}


def test_a_save_through_a_symlink_replaces_what_it_points_to(tmp_path):
    save_demo(tmp_path / "real", 1)
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    save_demo(tmp_path / "link", 2)
    assert (tmp_path / "link").is_symlink()
    assert load_demo(tmp_path / "link")[2] == {"version": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_a_short_write_fails_the_save_and_keeps_the_old_version(tmp_path):
    save_demo(tmp_path / "d", 1)
    with pytest.raises(OSError, match="not written completely") as info, \
            _format.atomic_directory(tmp_path / "d") as staging:
        (staging / "g.bin").write_bytes(b"x" * 100)  # a writer that stopped early
        _format.seal_file(staging / "g.bin", size=4096)
    assert info.value.errno == errno.EIO
    assert load_demo(tmp_path / "d")[2] == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_a_file_changed_after_its_check_fails_the_commit(tmp_path):
    save_demo(tmp_path / "d", 1)
    with pytest.raises(OSError, match="changed after it was written"), \
            _format.atomic_directory(tmp_path / "d") as staging:
        _format.write_array(staging / "a.npy", np.arange(100))
        with open(staging / "a.npy", "r+b") as handle:
            handle.truncate(64)
    assert load_demo(tmp_path / "d")[0].tolist() == [1] * 50


def test_a_manifest_that_disagrees_with_the_disk_fails_the_commit(tmp_path):
    save_demo(tmp_path / "d", 1)
    for files in ({"a.npy": "0" * 64}, {"a.npy": None, "ghost.npy": "0" * 64}):
        with pytest.raises(OSError, match="a.npy on disk|ghost.npy"), \
                _format.atomic_directory(tmp_path / "d") as staging:
            digest = _format.write_array(staging / "a.npy", np.arange(3))
            listed = {k: (v or digest) for k, v in files.items()}
            _format.write_json(staging / _format.MANIFEST,
                               {"format": "demo", "version": 1, "files": listed})
    assert load_demo(tmp_path / "d")[2] == {"version": 1}


def test_a_failing_structural_check_becomes_an_os_error(tmp_path):
    (tmp_path / "g.bin").write_bytes(b"\0" * 200)

    def check(data):
        _format.check_hnsw_file(tmp_path / "g.bin", rows=3, dim=4, M=8, data=data)
    with pytest.raises(OSError, match="not what was written"):
        _format.seal_file(tmp_path / "g.bin", check=check)


FSIZE_SAVER = textwrap.dedent("""
    import resource, sys, hnswlib, numpy as np
    from pathlib import Path
    from mrlsearch import _format
    rng = np.random.default_rng(0)
    def save(target, mode, rows):
        graph = hnswlib.Index(space="l2", dim=16)
        graph.init_index(max_elements=rows, M=8, ef_construction=40)
        graph.add_items(rng.standard_normal((rows, 16)).astype(np.float32), np.arange(rows))
        with _format.atomic_directory(target) as staging:
            files = {}
            if mode == "array":
                files["v.npy"] = _format.write_array(staging / "v.npy", np.zeros((rows, 16)))
            graph.save_index(str(staging / "g.bin"))  # hnswlib ignores write errors
            if mode in ("size", "array"):
                files["g.bin"] = _format.seal_file(staging / "g.bin",
                                                   size=graph.index_file_size())
            else:
                files["g.bin"] = _format.seal_file(staging / "g.bin", check=lambda data:
                    _format.check_hnsw_file(staging / "g.bin", rows=rows, dim=16, M=8, data=data))
            _format.write_json(staging / "manifest.json",
                               {"format": "demo", "version": 1, "files": files})
    modes = ("size", "check", "array")
    for mode in modes:
        save(Path(sys.argv[1]) / mode, mode, 200)
    resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))
    for mode in modes:
        try:
            save(Path(sys.argv[1]) / mode, mode, 2000)
        except OSError as exc:
            print(mode, "refused:", exc)
        else:
            print(mode, "saved")
""")


def test_a_file_size_limit_fails_the_save_and_keeps_the_old_index(tmp_path):
    # RLIMIT_FSIZE: every write beyond 60 kB fails (EFBIG); hnswlib's save_index does not notice
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", FSIZE_SAVER, str(tmp_path)],
                          capture_output=True, text=True, check=False, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [[mode, "refused:"] for mode in
                                                    ("size", "check", "array")], lines
    for mode in ("size", "check", "array"):
        with _format.open_directory(tmp_path / mode, format_name="demo", versions=(1,)) as saved:
            data = saved.read_buffer("g.bin")
            _format.check_hnsw_file(saved.path / "g.bin", rows=200, dim=16, M=8, data=data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["array", "check", "size"]


# ---------------------------------------------------------------------- hnswlib graphs
DIM, M, ROWS = 8, 4, 400


@pytest.fixture(scope="module")
def graph_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("graph") / "g.bin"
    graph = hnswlib.Index(space="l2", dim=DIM)
    graph.init_index(max_elements=ROWS, M=M, ef_construction=20, random_seed=1)
    graph.add_items(np.random.default_rng(0).standard_normal((ROWS, DIM)).astype(np.float32),
                    np.arange(ROWS), num_threads=1)
    for row in (5, 17):
        graph.mark_deleted(row)
    graph.save_index(str(path))
    return path.read_bytes()


DELETED = np.isin(np.arange(ROWS), [5, 17])


def check(data, **kwargs):
    options = {"rows": ROWS, "dim": DIM, "M": M, "deleted": DELETED, "ef_construction": 20}
    options.update(kwargs)
    _format.check_hnsw_file(Path("g.bin"), data=data, **options)


def test_a_valid_graph_passes_in_every_form(graph_bytes, tmp_path):
    check(graph_bytes)
    check(bytearray(graph_bytes))
    check(np.frombuffer(graph_bytes, dtype=np.uint8))
    (tmp_path / "g.bin").write_bytes(graph_bytes)
    _format.check_hnsw_file(tmp_path / "g.bin", rows=ROWS, dim=DIM, M=M, deleted=DELETED)
    assert Graph(graph_bytes).tobytes() == graph_bytes
    assert Graph(graph_bytes).levels().max() >= 2  # the edits below need upper levels


def test_an_empty_graph_passes(tmp_path):
    graph = hnswlib.Index(space="ip", dim=DIM)
    graph.init_index(max_elements=1, M=M)
    graph.save_index(str(tmp_path / "e.bin"))
    _format.check_hnsw_file(tmp_path / "e.bin", rows=0, dim=DIM, M=M)
    with pytest.raises(FormatError, match="empty graph"):
        _format.check_hnsw_file(tmp_path / "e.bin", rows=0, dim=DIM, M=M,
                                data=(tmp_path / "e.bin").read_bytes() + b"\0" * 4)


def edited(graph_bytes, edit):
    graph = Graph(graph_bytes)
    edit(graph)
    return graph.tobytes()


def upper_element(graph, level):
    return int(np.flatnonzero(graph.levels() >= level)[0])


def entry_to_low_element(g):
    g.header["entry_point"] = int(np.flatnonzero(g.levels() == 0)[0])


def link_to_low_element(g):
    element = upper_element(g, 2)
    g.upper[element][1, 0] = 1  # one link at level 2 ...
    g.upper[element][1, 1] = int(np.flatnonzero(g.levels() < 2)[0])  # ... to a level-0/1 element


def duplicate_label(g):
    word = g.labels_word()
    g.level0[1, word] = g.level0[0, word]


def clear_delete_marks(g):
    g.level0[:, 0] &= ~np.uint32(1 << 16)


@pytest.mark.parametrize("edit, match", [
    (entry_to_low_element, "entry point"),
    (lambda g: g.header.__setitem__("max_level", g.header["max_level"] + 1), "entry point"),
    (lambda g: g.header.__setitem__("max_level", 99), "max level"),
    (lambda g: g.header.__setitem__("entry_point", ROWS), "entry point"),
    (link_to_low_element, "does not exist at that level"),
    (lambda g: g.upper[upper_element(g, 1)].__setitem__((0, 1), ROWS + 5), "upper-level neighbour id"),
    (lambda g: g.upper[upper_element(g, 1)].__setitem__((0, 0), M + 1), "above maxM"),
    (lambda g: g.upper[upper_element(g, 1)].__setitem__((0, 0), 1 << 20), "flag bits"),
    (lambda g: g.header.__setitem__("ef_construction", 0), "ef_construction"),
    (lambda g: g.header.__setitem__("ef_construction", 21), "ef_construction"),
    (lambda g: g.header.__setitem__("mult", 60.0), "mult"),
    (lambda g: g.header.__setitem__("mult", np.nan), "mult"),
    (lambda g: g.header.__setitem__("max_elements", 1 << 40), "capacity"),
    (lambda g: g.header.__setitem__("max_elements", ROWS - 1), "capacity"),
    (lambda g: g.header.__setitem__("m", 1), "field m"),
    (duplicate_label, "appears twice"),
    (lambda g: g.level0.__setitem__((3, g.labels_word()), ROWS), "label beyond"),
    (clear_delete_marks, "delete mark"),
    (lambda g: g.level0.__setitem__((9, 0), g.level0[9, 0] | (1 << 16)), "delete mark"),
    (lambda g: g.level0.__setitem__((2, 0), g.level0[2, 0] | (1 << 24)), "flag bits"),
    (lambda g: g.level0.__setitem__((2, 1), ROWS), "level-0 neighbour id"),
    (lambda g: g.level0.__setitem__((2, 0), 2 * M + 1), "above maxM0"),
    (lambda g: g.level0.__setitem__((4, 1 + 2 * M), np.float32(np.inf).view(np.uint32)),
     "not finite"),
    (lambda g: setattr(g, "trailing", b"\0\0\0\0"), "trailing"),
    (lambda g: g.upper.__setitem__(0, np.zeros((70, M + 1), np.uint32)), "above the graph"),
])
def test_consistently_edited_graphs_are_refused(graph_bytes, edit, match):
    with pytest.raises(FormatError, match=match):
        check(edited(graph_bytes, edit))


def test_mismatched_expectations_are_refused(graph_bytes):
    for kwargs, match in [({"rows": ROWS - 1, "deleted": None}, "count"), ({"dim": DIM + 1}, "label_offset|size_data"),
                          ({"M": 5}, "field"), ({"M": 1}, "outside"),
                          ({"deleted": np.zeros(ROWS, bool)}, "delete mark")]:
        with pytest.raises(FormatError, match=match):
            check(graph_bytes, **kwargs)
    larger = edited(graph_bytes, lambda g: g.header.__setitem__("max_elements", 500))
    check(larger, max_elements=500)
    with pytest.raises(FormatError, match="capacity 500"):
        check(larger, max_elements=450)
    for cut in (1, 50, len(graph_bytes) // 2, len(graph_bytes) - 90):
        with pytest.raises(FormatError):
            check(graph_bytes[:cut])


FUZZ_SCRIPT = textwrap.dedent("""
    import json, sys, tempfile, os
    from pathlib import Path
    import hnswlib, numpy as np
    sys.path.insert(0, sys.argv[1])
    from hnsw_edits import Graph, random_edit
    from mrlsearch import FormatError, _format
    cases, seed = int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(seed)
    dim, M, rows = 8, 4, 300
    work = Path(tempfile.mkdtemp())
    graph = hnswlib.Index(space="l2", dim=dim)
    graph.init_index(max_elements=rows, M=M, ef_construction=20, random_seed=seed)
    # one thread: the graph, and so every edit drawn on it, is the same on any machine
    graph.add_items(rng.standard_normal((rows, dim)).astype(np.float32), np.arange(rows),
                    num_threads=1)
    graph.mark_deleted(7)
    deleted = np.arange(rows) == 7
    graph.save_index(str(work / "g.bin"))
    pristine = (work / "g.bin").read_bytes()
    counts = {"rejected": 0, "accepted": 0}
    kinds = {}
    for case in range(cases):
        g = Graph(pristine)
        for _ in range(int(rng.integers(1, 4))):
            kind = random_edit(g, rng)
        data = g.tobytes()
        kinds[kind] = kinds.get(kind, 0) + 1
        try:
            _format.check_hnsw_file(work / "g.bin", rows=rows, dim=dim, M=M, data=data,
                                    deleted=deleted, ef_construction=20)
        except FormatError:
            counts["rejected"] += 1
            continue
        counts["accepted"] += 1
        (work / "e.bin").write_bytes(data)
        loaded = hnswlib.Index(space="l2", dim=dim)
        loaded.load_index(str(work / "e.bin"), max_elements=rows)
        loaded.set_ef(50)
        # an accepted edit may still disconnect the graph (fewer than k found: RuntimeError)
        # or re-delete an element; what must never happen is a crash
        for step in range(4):
            try:
                if step == 1:
                    loaded.resize_index(rows + 20)
                    loaded.add_items(rng.standard_normal((20, dim)).astype(np.float32),
                                     np.arange(rows, rows + 20))
                elif step == 2:
                    loaded.mark_deleted(int(rng.integers(0, rows)))
                else:
                    loaded.knn_query(rng.standard_normal((5, dim)).astype(np.float32), k=5)
            except RuntimeError:
                counts["hnswlib_errors"] = counts.get("hnswlib_errors", 0) + 1
    print(json.dumps({"counts": counts, "kinds": kinds}))
""")


def run_graph_fuzz(cases, seed):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", FUZZ_SCRIPT, str(TESTS), str(cases), str(seed)],
                          capture_output=True, text=True, check=False, timeout=1800, env=env)
    # a negative return code is a signal: SIGSEGV (-11) is what the check must prevent
    assert proc.returncode == 0, f"return code {proc.returncode}: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_random_graph_edits_never_crash_hnswlib_quick():
    result = run_graph_fuzz(60, seed=3)
    assert result["counts"]["rejected"] > 0


@pytest.mark.slow
def test_random_graph_edits_never_crash_hnswlib():
    result = run_graph_fuzz(1200, seed=11)
    assert result["counts"]["rejected"] + result["counts"]["accepted"] == 1200
    assert result["counts"]["rejected"] > 600
    assert len(result["kinds"]) >= 12


# ---------------------------------------------------------------------- private copies
def test_private_copy_feeds_hnswlib_the_verified_bytes(tmp_path, graph_bytes):
    with _format.atomic_directory(tmp_path / "d") as staging:
        (staging / "g.bin").write_bytes(graph_bytes)
        files = {"g.bin": _format.seal_file(staging / "g.bin", check=check)}
        _format.write_json(staging / _format.MANIFEST, {"format": "demo", "version": 1,
                                                        "files": files})
    seen = []
    with _format.open_directory(tmp_path / "d", format_name="demo", versions=(1,)) as saved:
        with saved.private_copy("g.bin", check=lambda data: seen.append(check(data))) as path:
            assert path.read_bytes() == graph_bytes
            graph = hnswlib.Index(space="l2", dim=DIM)
            graph.load_index(str(path), max_elements=ROWS)
            assert graph.element_count == ROWS
        assert seen == [None]
    data = bytearray(graph_bytes)
    data[-5] ^= 1
    (tmp_path / "d" / "g.bin").write_bytes(bytes(data))
    with _format.open_directory(tmp_path / "d", format_name="demo", versions=(1,)) as saved, \
            pytest.raises(FormatError, match="is corrupt"), saved.private_copy("g.bin"):
        pass


# ---------------------------------------------------------------------- concurrency
def test_a_load_reads_the_version_it_pinned_while_a_save_swaps_it(tmp_path):
    save_demo(tmp_path / "d", 1)
    with _format.open_directory(tmp_path / "d", format_name="demo", versions=(1,)) as saved:
        save_demo(tmp_path / "d", 2)  # replaces and deletes the directory the load pinned
        assert saved.load_array("a.npy", dtype=np.int64, shape=(None,)).tolist() == [1] * 50
        assert saved.read_json("notes.json") == {"version": 1}
    assert load_demo(tmp_path / "d")[2] == {"version": 2}


def test_a_load_starts_again_when_the_directory_vanishes_under_it(tmp_path, monkeypatch):
    save_demo(tmp_path / "d", 1)
    original = _format._reading._check_manifest
    calls = []

    def swap_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            save_demo(tmp_path / "d", 2)  # between the manifest and the files
        return original(*args, **kwargs)
    monkeypatch.setattr(_format._reading, "_check_manifest", swap_first)
    a, b, notes = load_demo(tmp_path / "d")
    assert len(calls) == 2 and notes == {"version": 2} and (a == 2).all() and (b == 2).all()


def test_threads_saving_and_loading_never_mix_versions(tmp_path):
    save_demo(tmp_path / "d", 0)
    stop = time.monotonic() + 1.5
    errors, loads = [], [0]

    def saver(offset):
        version = offset
        try:
            while time.monotonic() < stop:
                version += 10
                save_demo(tmp_path / "d", version, rows=2000)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def loader(mmap):
        try:
            while time.monotonic() < stop:
                a, b, notes = load_demo(tmp_path / "d", mmap=mmap)
                assert (a == a[0]).all() and (b == a[0]).all() and notes["version"] == a[0]
                loads[0] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=saver, args=(i,)) for i in (1, 2)]
    threads += [threading.Thread(target=loader, args=(m,)) for m in (False, True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    assert loads[0] > 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


PROCESS_SAVER = textwrap.dedent("""
    import sys, time, json
    import numpy as np
    from pathlib import Path
    from mrlsearch import _format
    target, tag, seconds = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    spans, version = [], tag
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        version += 100
        with _format.atomic_directory(target) as staging:
            began = time.time()
            files = {"a.npy": _format.write_array(staging / "a.npy", np.full(3000, version)),
                     "b.npy": _format.write_array(staging / "b.npy", np.full(3000, version))}
            time.sleep(0.005)
            _format.write_json(staging / "manifest.json",
                               {"format": "demo", "version": 1, "files": files})
            ended = time.time()
        spans.append((began, ended))
    print(json.dumps(spans))
""")

PROCESS_LOADER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from mrlsearch import _format
    target, seconds = sys.argv[1], float(sys.argv[2])
    loads = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        with _format.open_directory(target, format_name="demo", versions=(1,)) as saved:
            a = saved.load_array("a.npy", dtype=np.int64, shape=(None,))
            b = saved.load_array("b.npy", dtype=np.int64, shape=(None,), mmap=True)
        assert (a == a[0]).all() and (b == a[0]).all(), (a[0], b[0])
        loads += 1
    print(loads)
""")


def test_two_processes_saving_one_path_take_turns(tmp_path):
    target = tmp_path / "d"
    with _format.atomic_directory(target) as staging:
        files = {name: _format.write_array(staging / name, np.zeros(3000, np.int64))
                 for name in ("a.npy", "b.npy")}
        _format.write_json(staging / "manifest.json",
                           {"format": "demo", "version": 1, "files": files})
    env = dict(os.environ, PYTHONPATH=str(REPO))
    savers = [subprocess.Popen([sys.executable, "-c", PROCESS_SAVER, str(target), str(tag), "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
              for tag in (1, 2)]
    loader = subprocess.Popen([sys.executable, "-c", PROCESS_LOADER, str(target), "1.3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    outputs = [proc.communicate(timeout=120) for proc in savers + [loader]]
    for proc, (out, err) in zip(savers + [loader], outputs):
        assert proc.returncode == 0, err[-2000:]
    spans = sorted(span for out, _ in outputs[:2] for span in json.loads(out))
    assert len(spans) > 10
    # the writer lock: no two saves were ever inside their atomic_directory at once
    overlaps = [(a, b) for a, b in itertools.pairwise(spans) if b[0] < a[1]]
    assert not overlaps, overlaps[:3]
    assert int(outputs[2][0]) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


# ---------------------------------------------------------------------- leftovers and the lock
def make_leftovers(parent, name):
    stale = [parent / f".{name}.tmp-0123abcd", parent / f".{name}.trash-89abcdef",
             parent / f".{name}.tmp-{'f' * 32}"]
    for path in stale[:2]:
        path.mkdir()
        (path / "vectors.npy").write_bytes(b"x" * 1000)
    stale[2].write_bytes(b"half a classifier")
    kept = [parent / f".{name}.old-notatoken", parent / ".other.tmp-0123abcd",
            parent / f".{name}.tmp-0123abcd.tmp-00000000"]
    for path in kept:
        path.mkdir()
    return stale, kept


def test_a_save_removes_what_killed_saves_left_and_nothing_else(tmp_path):
    stale, kept = make_leftovers(tmp_path, "d")
    save_demo(tmp_path / "d", 1)
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)


def test_a_load_removes_leftovers_only_when_no_save_runs(tmp_path):
    save_demo(tmp_path / "d", 1)
    stale, kept = make_leftovers(tmp_path, "d")
    with _format.writer_lock(tmp_path / "d"):  # a save is running
        load_demo(tmp_path / "d")
        assert all(path.exists() for path in stale)
        assert _format.cleanup_stale(tmp_path / "d") == 0
    load_demo(tmp_path / "d")
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)


KILLED_SAVER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from mrlsearch import _format
    with _format.atomic_directory(sys.argv[1]) as staging:
        _format.write_array(staging / "a.npy", np.zeros(1000))
        print(staging.name, flush=True)
        time.sleep(60)
""")


def test_the_staging_of_a_killed_writer_is_removed_once_it_is_dead(tmp_path):
    save_demo(tmp_path / "d", 1)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVER, str(tmp_path / "d")],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        staging = tmp_path / proc.stdout.readline().strip()
        assert staging.is_dir()
        assert _format.cleanup_stale(tmp_path / "d") == 0  # alive: it holds the lock
        load_demo(tmp_path / "d")
        assert staging.is_dir()
    finally:
        proc.kill()
        proc.wait()
    assert staging.is_dir()
    assert _format.cleanup_stale(tmp_path / "d") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_writer_lock_excludes_threads_and_leaves_no_file(tmp_path):
    inside, overlaps = [0], [0]

    def worker():
        for _ in range(30):
            with _format.writer_lock(tmp_path / "x") as held:
                assert held
                inside[0] += 1
                if inside[0] > 1:
                    overlaps[0] += 1
                time.sleep(0.0005)
                inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps[0] == 0
    with _format.writer_lock(tmp_path / "x"), \
            _format.writer_lock(tmp_path / "x", blocking=False) as held:
        assert held is False
    assert list(tmp_path.iterdir()) == []


def test_a_save_finishing_while_a_loader_looks_is_not_called_missing(tmp_path, monkeypatch):
    # the race the threaded test above hit: the loader sees the path missing (between a save's
    # two renames), then the save finishes, discards its backup and deletes its lock file
    # before the loader looks for them; the path is there again and must be found
    from mrlsearch._format import _reading

    target = tmp_path / "d"
    real_backups_of = _reading.backups_of

    def save_finishes(parent, name):
        if not target.exists():
            save_demo(target, 7)
        return real_backups_of(parent, name)

    monkeypatch.setattr(_reading, "backups_of", save_finishes)
    assert _reading.resolve_directory(target) == target
    monkeypatch.setattr(_reading, "backups_of", real_backups_of)
    with pytest.raises(FileNotFoundError, match="No index directory"):
        _reading.resolve_directory(tmp_path / "never")

"""Fuzz the loaders: damaged files raise FormatError (or load and answer), never crash.

Two kinds of damage: plain corruption (the manifest's sha256 catches it) and *re-signed*
corruption, where the manifest's checksums are rewritten to match the damaged files - that
reaches the structural checks (npy headers, shapes, the hnswlib graph validator) that stand
between a file and hnswlib. Thousands of cases; marked slow.
"""

import hashlib
import json
import shutil
import zipfile

import numpy as np
import pytest

from mrlsearch import Classifier, FormatError, Searcher

pytestmark = pytest.mark.slow
CASES_PER_KIND = 1000


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    s = Searcher(24, (8, 16, 24), index_dims=(8, 16), M=8, ef_construction=40)
    s.add(rng.standard_normal((120, 24)))
    s.remove([3, 4, 5])
    s.save(base / "index")
    other = Searcher(24, (8, 16, 24), index_dims=(8, 16), M=12, ef_construction=40)
    other.add(rng.standard_normal((90, 24)))
    other.save(base / "other")
    return base


def resign(directory):
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"] = {name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
                         for name in manifest["files"] if (directory / name).exists()}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def load_and_query(directory):
    try:
        searcher = Searcher.load(directory)
    except FormatError:
        return "rejected"
    queries = np.random.default_rng(1).standard_normal((3, 24))
    for stages in ([(8, 20), (24, 5)], [(16, 30), (24, 5)]):
        result = searcher.funnel(queries, 5, stages)
        assert set(result.ids[result.ids >= 0].tolist()) <= set(searcher.ids().tolist())
    return "loaded"


def damaged_copy(pristine, tmp_path, case):
    target = tmp_path / f"case{case}"
    shutil.copytree(pristine / "index", target)
    return target


@pytest.mark.parametrize("resigned", [False, True])
def test_byte_flips_and_truncations(pristine, tmp_path, resigned):
    rng = np.random.default_rng(2 + resigned)
    names = ["vectors.npy", "norms.npy", "ids.npy", "deleted.npy", "hnsw_8.bin", "hnsw_16.bin"]
    outcomes = {"rejected": 0, "loaded": 0}
    for case in range(CASES_PER_KIND):
        target = damaged_copy(pristine, tmp_path, case)
        path = target / names[case % len(names)]
        data = bytearray(path.read_bytes())
        if case % 3 == 0:
            data = data[: int(rng.integers(0, len(data)))]
        else:  # xor with a non-zero byte: every flip really changes the file
            for _ in range(int(rng.integers(1, 8))):
                data[int(rng.integers(0, len(data)))] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(data))
        if resigned:
            resign(target)
        outcome = load_and_query(target)
        outcomes[outcome] += 1
        if not resigned:
            assert outcome == "rejected", f"case {case}: corruption of {path.name} not detected"
        shutil.rmtree(target)
    assert outcomes["rejected"] > 0


def test_foreign_graphs_and_missing_files(pristine, tmp_path):
    for case, name in enumerate(["hnsw_8.bin", "hnsw_16.bin"]):
        target = damaged_copy(pristine, tmp_path, case)
        shutil.copy(pristine / "other" / name, target / name)
        resign(target)
        with pytest.raises(FormatError, match="not a valid hnswlib graph"):
            Searcher.load(target)
    for case, name in enumerate(["vectors.npy", "hnsw_8.bin", "manifest.json"], start=10):
        target = damaged_copy(pristine, tmp_path, case)
        (target / name).unlink()
        with pytest.raises(FormatError):
            Searcher.load(target)


def test_manifest_field_mutations(pristine, tmp_path):
    rng = np.random.default_rng(4)
    manifest = json.loads((pristine / "index" / "manifest.json").read_text())
    keys = [k for k in manifest if k != "files"]
    values = [None, -1, 0, 1, 10**12, "x", [], {}, [8, 8], 2.5, True]
    for case in range(CASES_PER_KIND):
        target = damaged_copy(pristine, tmp_path, case)
        edited = dict(manifest)
        key = keys[case % len(keys)]
        if case % 7 == 0:
            edited.pop(key)
        else:
            edited[key] = values[int(rng.integers(0, len(values)))]
        (target / "manifest.json").write_text(json.dumps(edited))
        load_and_query(target)  # must not raise anything but FormatError
        shutil.rmtree(target)


def test_classifier_file_damage(tmp_path):
    rng = np.random.default_rng(5)
    clf = Classifier([rng.standard_normal((4, m)) for m in (4, 8)], [np.zeros(4)] * 2, (4, 8))
    clf.thresholds = [0.5, 0.5]
    clf.save(tmp_path / "clf.npz")
    data = (tmp_path / "clf.npz").read_bytes()
    for case in range(CASES_PER_KIND):
        damaged = bytearray(data)
        if case % 2:
            damaged = damaged[: int(rng.integers(0, len(damaged)))]
        else:
            for _ in range(int(rng.integers(1, 6))):
                damaged[int(rng.integers(0, len(damaged)))] ^= int(rng.integers(1, 256))
        path = tmp_path / f"c{case}.npz"
        path.write_bytes(bytes(damaged))
        try:
            loaded = Classifier.load(path)
        except FormatError:
            continue
        loaded.cascade(rng.standard_normal((2, 8)), 0.5)  # a survivor must work
    with zipfile.ZipFile(tmp_path / "pickle.npz", "w") as archive:
        archive.writestr("format.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': "
                         b"False, 'shape': (), }" + b" " * 60 + b"\n" + b"\x80\x04N.")
    with pytest.raises(FormatError):
        Classifier.load(tmp_path / "pickle.npz")


# ---------------------------------------------------------------------- issue 13 classes
@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink"])
@pytest.mark.parametrize("name", ["hnsw_8.bin", "vectors.npy", "manifest.json"])
def test_special_files_in_an_index_are_refused_without_blocking(pristine, tmp_path, kind, name):
    import os
    import signal

    target = damaged_copy(pristine, tmp_path, 0)
    (target / name).unlink()
    if kind == "fifo":
        os.mkfifo(target / name)
    elif kind == "directory":
        (target / name).mkdir()
    else:
        (target / name).symlink_to(pristine / "index" / name)

    def expire(signum, frame):
        raise TimeoutError("load blocked")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 20)
    try:
        with pytest.raises(FormatError, match=name.replace(".", r"\.")):
            Searcher.load(target)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("graph", ["../other/hnsw_8.bin", "ABSOLUTE", "unlisted.bin"])
def test_graph_paths_must_be_listed_files_inside_the_index(pristine, tmp_path, graph):
    target = damaged_copy(pristine, tmp_path, 0)
    if graph == "ABSOLUTE":
        graph = str(pristine / "other" / "hnsw_8.bin")
    shutil.copy(pristine / "index" / "hnsw_8.bin", target / "unlisted.bin")
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["graphs"]["8"] = graph
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatError):
        Searcher.load(target)


@pytest.mark.parametrize("text", ["[" * 50_000 + "]" * 50_000, '{"rows": ' + "7" * 5000 + "}",
                                  '{"a": ' * 60 + "0" + "}" * 60])
def test_hostile_index_manifests_raise_format_error(pristine, tmp_path, text):
    target = damaged_copy(pristine, tmp_path, 0)
    (target / "manifest.json").write_text(text)
    with pytest.raises(FormatError):
        Searcher.load(target)


INDEX_GRAPH_FUZZ = """
import json, shutil, sys, hashlib
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[1])
from hnsw_edits import Graph, random_edit
from mrlsearch import FormatError, Searcher
pristine, work, cases = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(7)
outcomes = {"rejected": 0, "loaded": 0}
for case in range(cases):
    target = work / f"case{case}"
    shutil.copytree(pristine, target)
    name = ["hnsw_8.bin", "hnsw_16.bin"][case % 2]
    graph = Graph((target / name).read_bytes())
    for _ in range(int(rng.integers(1, 3))):
        random_edit(graph, rng)
    (target / name).write_bytes(graph.tobytes())
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((target / name).read_bytes()).hexdigest()
    (target / "manifest.json").write_text(json.dumps(manifest))
    try:
        searcher = Searcher.load(target)
    except FormatError:
        outcomes["rejected"] += 1
    else:
        outcomes["loaded"] += 1
        queries = rng.standard_normal((3, 24))
        for stages in ([(8, 20), (24, 5)], [(16, 30), (24, 5)]):
            searcher.funnel(queries, 5, stages)
    shutil.rmtree(target)
print(json.dumps(outcomes))
"""


def test_structured_graph_edits_in_an_index_never_crash(pristine, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", INDEX_GRAPH_FUZZ, str(tests), str(pristine / "index"),
         str(tmp_path), "400"],
        capture_output=True, text=True, check=False, timeout=1800,
        env=dict(os.environ, PYTHONPATH=str(tests.parent)))
    assert proc.returncode == 0, f"return code {proc.returncode}: {proc.stderr[-2000:]}"
    outcomes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcomes["rejected"] > 200

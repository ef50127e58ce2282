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
        assert set(result.ids[result.ids >= 0].tolist()) <= set(searcher._ids.tolist())
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

"""Classifier files: zip bombs, unknown members, special files, concurrent saves and loads."""

import io
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tracemalloc
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from mrlsearch import Classifier, FormatError, _format

REPO = Path(__file__).resolve().parents[2]
DIMS = (4, 8)


def make(seed, shared=True, n_classes=5):
    rng = np.random.default_rng(seed)
    if shared:
        clf = Classifier.shared(rng.standard_normal((n_classes, DIMS[-1])),
                                rng.standard_normal(n_classes), DIMS)
    else:
        clf = Classifier([rng.standard_normal((n_classes, m)) for m in DIMS],
                         [rng.standard_normal(n_classes) for _ in DIMS], DIMS)
    clf.thresholds = [0.1 * (seed % 9), -np.inf]
    return clf


def npy_bytes(array):
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def members(clf):
    """The members Classifier.save writes, as {name: npy bytes}."""
    with tempfile.TemporaryDirectory() as directory:
        clf.save(Path(directory) / "clf.npz")
        with zipfile.ZipFile(Path(directory) / "clf.npz") as archive:
            return {name: archive.read(name) for name in archive.namelist()}


def write_zip(path, entries, *, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression, compresslevel=9) as archive:
        for name, data in entries.items():
            if callable(data):  # a writer of a large member, streamed
                info = zipfile.ZipInfo(name)
                info.compress_type = compression
                with archive.open(info, "w", force_zip64=True) as member:
                    data(member)
            else:
                archive.writestr(name, data)


def zeros_member(header_shape, total_bytes):
    """A member whose npy header declares ``header_shape`` float32, followed by zeros up to
    ``total_bytes`` (deflate shrinks the zeros about 1000-fold)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": header_shape})
    head = header.getvalue()

    def write(member):
        member.write(head)
        left = total_bytes - len(head)
        block = bytes(16 << 20)
        while left > 0:
            member.write(block[: min(left, len(block))])
            left -= len(block)
    return write


def peak_while_loading(path):
    tracemalloc.start()
    try:
        with pytest.raises(FormatError) as info:
            Classifier.load(path)
        return tracemalloc.get_traced_memory()[1], info.value
    finally:
        tracemalloc.stop()


@contextmanager
def time_limit(seconds=10.0):
    def expire(signum, frame):
        raise TimeoutError(f"blocked for more than {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------- bombs
def test_a_small_file_declaring_hundreds_of_megabytes_is_refused_unread(tmp_path):
    entries = members(make(1))
    entries["weight.npy"] = zeros_member((5, 64 << 20 >> 2), 256 << 20)
    write_zip(tmp_path / "bomb.npz", entries, compression=zipfile.ZIP_DEFLATED)
    size = (tmp_path / "bomb.npz").stat().st_size
    assert size < 1 << 20
    peak, error = peak_while_loading(tmp_path / "bomb.npz")
    assert "uncompressed bytes" in str(error)
    assert peak < 8 << 20, f"{peak >> 20} MiB allocated for a {size >> 10} KiB file"


def test_a_member_whose_size_disagrees_with_its_header_is_refused_unread(tmp_path):
    entries = members(make(2))
    entries["weight.npy"] = zeros_member((5, 8), 40 << 20)  # header says 160 bytes
    write_zip(tmp_path / "lying.npz", entries, compression=zipfile.ZIP_DEFLATED)
    peak, error = peak_while_loading(tmp_path / "lying.npz")
    assert "declares" in str(error) and "header" in str(error)
    assert peak < 4 << 20


def test_an_unknown_member_is_refused_unread(tmp_path):
    entries = members(make(3))
    entries["junk.npy"] = zeros_member((10 << 20,), 40 << 20)
    write_zip(tmp_path / "junk.npz", entries, compression=zipfile.ZIP_DEFLATED)
    peak, error = peak_while_loading(tmp_path / "junk.npz")
    assert "unknown member 'junk.npy'" in str(error)
    assert peak < 4 << 20


def test_shapes_must_agree_between_members(tmp_path):
    entries = members(make(4))
    entries["weight.npy"] = npy_bytes(np.zeros((6, 8), np.float32))  # bias has 5 classes
    write_zip(tmp_path / "a.npz", entries)
    with pytest.raises(FormatError, match="'weight' is float32 of shape \\(6, 8\\)"):
        Classifier.load(tmp_path / "a.npz")
    entries = members(make(4))
    entries["dims.npy"] = npy_bytes(np.arange(1, 5000))
    write_zip(tmp_path / "b.npz", entries)
    with pytest.raises(FormatError, match="at most 4096"):
        Classifier.load(tmp_path / "b.npz")
    entries = members(make(4))
    entries["weight.npy"] = npy_bytes(np.zeros((5, 8), np.complex64))
    write_zip(tmp_path / "c.npz", entries)
    with pytest.raises(FormatError, match="complex64"):
        Classifier.load(tmp_path / "c.npz")


@pytest.mark.slow
def test_a_two_megabyte_file_declaring_gigabytes_is_refused_unread(tmp_path):
    entries = members(make(5))
    entries["weight.npy"] = zeros_member((5, 100 << 20), 2 << 30)
    write_zip(tmp_path / "bomb.npz", entries, compression=zipfile.ZIP_DEFLATED)
    assert (tmp_path / "bomb.npz").stat().st_size < 3 << 20
    peak, _ = peak_while_loading(tmp_path / "bomb.npz")
    assert peak < 8 << 20


# ---------------------------------------------------------------------- damaged archives
def test_member_damage_and_duplicates_raise_format_error(tmp_path):
    clf = make(6, shared=False)
    clf.save(tmp_path / "ok.npz")
    data = bytearray((tmp_path / "ok.npz").read_bytes())
    start = data.index(b"weight_8.npy") + 200  # inside the stored (uncompressed) data
    data[start] ^= 0x55
    (tmp_path / "crc.npz").write_bytes(bytes(data))
    with pytest.raises(FormatError, match="not a readable .npz|CRC|Bad"):
        Classifier.load(tmp_path / "crc.npz")
    entries = members(clf)
    with zipfile.ZipFile(tmp_path / "dup.npz", "w") as archive:
        for name, payload in entries.items():
            archive.writestr(name, payload)
        with pytest.warns(UserWarning):
            archive.writestr("bias_4.npy", entries["bias_4.npy"])
    with pytest.raises(FormatError, match="appears twice"):
        Classifier.load(tmp_path / "dup.npz")
    entries.pop("weight_8.npy")
    write_zip(tmp_path / "missing.npz", entries)
    with pytest.raises(FormatError, match="missing member 'weight_8'"):
        Classifier.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_special_files_in_place_of_a_classifier_are_refused_without_blocking(tmp_path, kind):
    path = tmp_path / "clf.npz"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    with time_limit(10), pytest.raises(FormatError, match="regular file"):
        Classifier.load(path)
    with pytest.raises(FileNotFoundError):
        Classifier.load(tmp_path / "missing.npz")


# ---------------------------------------------------------------------- saving
def test_save_fsyncs_the_file_and_the_directory_and_leaves_nothing(tmp_path, monkeypatch):
    synced = []
    real = _format._atomic.fsync_path
    monkeypatch.setattr(_format._atomic, "fsync_path",
                        lambda p: (synced.append(Path(p)), real(p)))
    make(7).save(tmp_path / "clf.npz")
    assert tmp_path in synced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf.npz"]


def test_a_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    make(8).save(tmp_path / "clf.npz")
    before = (tmp_path / "clf.npz").read_bytes()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="No space"):
        make(9).save(tmp_path / "clf.npz")
    assert (tmp_path / "clf.npz").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf.npz"]


def test_threads_saving_and_loading_one_path(tmp_path):
    path = tmp_path / "clf.npz"
    classifiers = [make(seed, shared=bool(seed % 2)) for seed in range(4)]
    classifiers[0].save(path)
    x = np.random.default_rng(0).standard_normal((16, DIMS[-1]))
    answers = {tuple(c.thresholds): c.logits(x) for c in classifiers}
    stop = time.monotonic() + 1.5
    errors, loads = [], [0]

    def saver(clf):
        try:
            while time.monotonic() < stop:
                clf.save(path)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def loader():
        try:
            while time.monotonic() < stop:
                loaded = Classifier.load(path)
                np.testing.assert_array_equal(loaded.logits(x),
                                              answers[tuple(loaded.thresholds)])
                loads[0] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=saver, args=(c,)) for c in classifiers]
    threads += [threading.Thread(target=loader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    assert loads[0] > 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf.npz"]


KILLED_SAVE = textwrap.dedent("""
    import sys, time
    import numpy as np
    from mrlsearch import _format
    with _format.atomic_file(sys.argv[1]) as handle:
        handle.write(b"half a classifier")
        print("writing", flush=True)
        time.sleep(60)
""")


def test_a_killed_save_leaves_the_old_file_and_the_next_save_cleans_up(tmp_path):
    path = tmp_path / "clf.npz"
    make(10).save(path)
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(path)],
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.kill()
        proc.wait()
    assert path.read_bytes() == before
    assert len(list(tmp_path.iterdir())) > 1  # its temporary file (and lock file) remain
    Classifier.load(path)
    make(11).save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf.npz"]

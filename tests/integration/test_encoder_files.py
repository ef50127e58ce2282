"""Encoder refuses damaged or special model files with a typed error, never hangs (issue 13)."""

import hashlib
import json
import os
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from exporters import build_model, export_onnx  # noqa: E402
from mrlsearch import Encoder, FormatError  # noqa: E402

pytestmark = pytest.mark.export
#: a blocking open of a FIFO would hang forever; anything near this is a hang
HANG_SECONDS = 20


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model({"backbone": "mlp", "in_features": 6, "embed_dim": 8, "hidden": [8],
                         "dims": [4, 8]}).eval()
    out = tmp_path_factory.mktemp("model") / "m"
    example = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
    export_onnx(model, out, example)
    return out


@pytest.fixture
def model_dir(exported, tmp_path):
    copy = tmp_path / "m"
    copy.mkdir()
    for child in exported.iterdir():
        (copy / child.name).write_bytes(child.read_bytes())
    return copy


def encoder_in_thread(*args, **kwargs):
    """Encoder(...) in a thread: a hang fails the test instead of blocking the suite."""
    outcome = {}

    def run():
        try:
            outcome["value"] = Encoder(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_SECONDS)
    assert not thread.is_alive(), "Encoder hung"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def rewrite_checksum(model_dir, name):
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((model_dir / name).read_bytes()).hexdigest()
    (model_dir / "manifest.json").write_text(json.dumps(manifest))


def test_intact_model_loads(model_dir):
    encoder = encoder_in_thread(model_dir)
    assert encoder.encode(np.ones((2, 6), np.float32)).shape == (2, 8)


@pytest.mark.parametrize("verify", [True, False])
def test_fifo_in_place_of_model_does_not_hang(model_dir, verify):
    (model_dir / "model.onnx").unlink()
    os.mkfifo(model_dir / "model.onnx")
    with pytest.raises(FormatError, match=r"model\.onnx must be a regular file \(got a FIFO\)"):
        encoder_in_thread(model_dir, verify=verify)


def test_fifo_in_place_of_manifest_does_not_hang(model_dir):
    (model_dir / "manifest.json").unlink()
    os.mkfifo(model_dir / "manifest.json")
    with pytest.raises(FormatError, match=r"manifest\.json must be a regular file"):
        encoder_in_thread(model_dir)


def test_missing_model_file(model_dir):
    (model_dir / "model.onnx").unlink()
    with pytest.raises(FormatError, match=r"model\.onnx is missing"):
        encoder_in_thread(model_dir)


def test_directory_in_place_of_model(model_dir):
    (model_dir / "model.onnx").unlink()
    (model_dir / "model.onnx").mkdir()
    with pytest.raises(FormatError, match=r"model\.onnx must be a regular file \(got a directory"):
        encoder_in_thread(model_dir)


@pytest.mark.parametrize("providers", [3, ["cpu", 3], [("CPUExecutionProvider", {})]])
def test_providers_of_the_wrong_type(model_dir, providers):
    with pytest.raises(TypeError, match="'providers' must"):
        Encoder(model_dir, providers=providers)
    assert Encoder(model_dir, providers=["cpu"]).provider == "CPUExecutionProvider"


def test_symlinked_model_is_refused(model_dir, tmp_path):
    target = tmp_path / "elsewhere.onnx"
    (model_dir / "model.onnx").rename(target)
    (model_dir / "model.onnx").symlink_to(target)
    with pytest.raises(FormatError, match=r"model\.onnx must be a regular file"):
        encoder_in_thread(model_dir)


@pytest.mark.parametrize("providers", ["auto", "cpu"])
@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_onnx_with_valid_checksum(model_dir, providers, damage):
    path = model_dir / "model.onnx"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2],
                      "garbage": bytes(np.random.default_rng(0).integers(0, 256, 4096,
                                                                          dtype=np.uint8)),
                      "empty": b""}[damage])
    rewrite_checksum(model_dir, "model.onnx")
    with pytest.raises(FormatError, match=r"model\.onnx is not a valid ONNX model"):
        encoder_in_thread(model_dir, providers=providers)


def test_changed_model_bytes_fail_the_checksum(model_dir):
    path = model_dir / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"model\.onnx is corrupt: its sha256"):
        encoder_in_thread(model_dir)


@pytest.mark.parametrize("text, pattern", [
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ('{"format": "mrlsearch.model", "version": ' + "9" * 5000 + "}", "not valid JSON"),
    ('{"format": "mrlsearch.model", "version": 1, "files": {"../x": "0"}}', "bad file name"),
    ('{"format": "mrlsearch.model", "version": 1, "files": {}}', "must list model.onnx"),
    ('"just a string"', "must describe format"),
])
def test_hostile_manifests(model_dir, text, pattern):
    (model_dir / "manifest.json").write_text(text)
    with pytest.raises(FormatError, match=pattern):
        encoder_in_thread(model_dir)


def test_manifest_normalize_must_be_a_bool(model_dir):
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["normalize"] = "yes"
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match="'normalize' must be true or false"):
        encoder_in_thread(model_dir)

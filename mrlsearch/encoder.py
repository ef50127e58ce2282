"""Encoder: onnxruntime inference of a model directory written by ``exporters``.

Providers are chosen deliberately: ``"auto"`` uses CUDA only when a CUDA session really starts,
and an explicitly requested provider that cannot run raises :class:`ProviderError` instead of
onnxruntime's silent fallback to the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from . import _format
from ._errors import DimensionError, FormatError, ProviderError
from ._validation import check_matrix, check_positive_int

__all__ = ["Encoder"]

MODEL_FORMAT = "mrlsearch.model"
MODEL_VERSIONS = (1,)
_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
            "gpu": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_PROGRESS_MIN_ROWS = 10_000


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            "mrlsearch.Encoder needs onnxruntime: pip install 'mrlsearch[cpu]' "
            "(or 'mrlsearch[gpu]' for onnxruntime-gpu; install only one of the two)"
        ) from exc
    return onnxruntime


class Encoder:
    """Embed vectors or texts with an exported MRL model.

    Parameters
    ----------
    model_dir : str or path-like
        Directory written by ``exporters.export_onnx`` (``model.onnx``, ``manifest.json`` and,
        for text models, ``tokenizer.json``).
    providers : {'auto', 'cpu', 'cuda'} or list of str, default='auto'
        ``'auto'``: CUDA when onnxruntime-gpu can start a CUDA session here, else CPU.
        Explicit names (``'cuda'``, ``'CUDAExecutionProvider'``, ...) must run, or
        :class:`ProviderError` is raised.
    dim : int, optional
        Default output prefix dim (one of :attr:`dims`; default: full).
    normalize : bool, default=True
        L2-normalise each output prefix when the model's metric is cosine.
    threads : int, optional
        Intra-op threads of the CPU provider (default: onnxruntime's choice).
    verify : bool, default=True
        Check the sha256 of every file against ``manifest.json``.

    Examples
    --------
    >>> enc = Encoder("model_dir/")                                # doctest: +SKIP
    >>> enc.provider                                               # doctest: +SKIP
    'CPUExecutionProvider'
    >>> enc.encode(["how do I sort a list?"], dim=64).shape         # doctest: +SKIP
    (1, 64)
    """

    def __init__(self, model_dir: str | os.PathLike, providers: str | Sequence[str] = "auto", *,
                 dim: int | None = None, normalize: bool = True, threads: int | None = None,
                 verify: bool = True) -> None:
        self._dir = _format.resolve_directory(model_dir, what="model", argument="model_dir")
        if verify:
            manifest = _format.read_manifest(self._dir, format_name=MODEL_FORMAT,
                                             versions=MODEL_VERSIONS)
        else:
            import json

            manifest = json.loads((self._dir / _format.MANIFEST).read_text())
        self._manifest = manifest
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # no fallback chatter: we report the provider ourselves
        if threads is not None:
            options.intra_op_num_threads = check_positive_int(threads, "threads")
        self._session = self._start_session(ort, options, providers)
        self._input_names = [i.name for i in self._session.get_inputs()]
        metadata = self._session.get_modelmeta().custom_metadata_map
        try:
            self._dims = tuple(int(d) for d in metadata["mrl.dims"].split(","))
            self._metric = metadata["mrl.metric"]
        except (KeyError, ValueError) as exc:
            raise FormatError(f"{self._dir / 'model.onnx'} lacks the mrl.dims / mrl.metric "
                              f"metadata ({exc})") from exc
        if list(self._dims) != list(manifest.get("dims", [])):
            raise FormatError(f"{self._dir / 'model.onnx'} dims {self._dims} differ from "
                              f"manifest.json's {manifest.get('dims')}")
        self._normalize = bool(normalize)
        self._dim = self._check_dim(dim)
        self._tokenizer = None
        if "input_ids" in self._input_names:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(self._dir / "tokenizer.json"))
            tokenizer.enable_truncation(int(manifest.get("max_length") or 128))
            tokenizer.no_padding()
            self._tokenizer = tokenizer

    # ------------------------------------------------------------------ providers
    def _start_session(self, ort, options, providers):
        available = ort.get_available_providers()
        path = str(self._dir / "model.onnx")
        if isinstance(providers, str) and providers == "auto":
            if "CUDAExecutionProvider" in available:
                try:
                    session = ort.InferenceSession(
                        path, options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
                    if session.get_providers()[0] == "CUDAExecutionProvider":
                        return session
                except Exception:  # CUDA libraries missing: the CPU session below is the answer
                    pass
            return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        names = [providers] if isinstance(providers, str) else list(providers)
        if not names:
            raise ValueError("'providers' must name at least one provider (got [])")
        wanted = [_ALIASES.get(str(n).lower(), n) for n in names]
        missing = [n for n in wanted if n not in available]
        if missing:
            hint = (" - install mrlsearch[gpu] (onnxruntime-gpu, not together with onnxruntime) "
                    "on a machine with CUDA" if "CUDAExecutionProvider" in missing else "")
            raise ProviderError(f"'providers' asks for {missing[0]}, which this onnxruntime "
                                f"does not have (available: {', '.join(available)}){hint}")
        try:
            session = ort.InferenceSession(path, options, providers=wanted)
        except Exception as exc:
            raise ProviderError(f"onnxruntime could not start {wanted[0]}: {exc}") from exc
        if session.get_providers()[0] != wanted[0]:
            raise ProviderError(
                f"onnxruntime fell back from {wanted[0]} to {session.get_providers()[0]} "
                "(is a GPU and its CUDA/cuDNN runtime present?)")
        return session

    # ------------------------------------------------------------------ properties
    @property
    def provider(self) -> str:
        """The execution provider actually running, e.g. ``'CPUExecutionProvider'``."""
        return self._session.get_providers()[0]

    @property
    def dims(self) -> tuple[int, ...]:
        """Nesting dims of the model (from its metadata)."""
        return self._dims

    @property
    def metric(self) -> str:
        """``'cosine'``, ``'ip'`` or ``'l2'`` (from the model's metadata)."""
        return self._metric

    @property
    def dim(self) -> int:
        """Full output dim of the model."""
        return self._dims[-1]

    @property
    def is_text(self) -> bool:
        """True when the model takes text (``input_ids``/``attention_mask``)."""
        return self._tokenizer is not None

    @property
    def manifest(self) -> dict:
        """The model directory's manifest (dims, metric, precision, parity, ...)."""
        return dict(self._manifest)

    def __repr__(self) -> str:
        return (f"<mrlsearch.Encoder {self._dir} dims={self._dims} metric={self._metric!r} "
                f"provider={self.provider!r}>")

    def _check_dim(self, dim) -> int:
        if dim is None:
            return self._dims[-1]
        if isinstance(dim, bool) or dim not in self._dims:
            raise DimensionError(f"'dim' must be one of dims {self._dims} (got {dim!r})")
        return int(dim)

    # ------------------------------------------------------------------ encoding
    def encode(self, inputs, batch_size: int = 256, dim: int | None = None, *,
               progress: bool | None = None) -> np.ndarray:
        """Embed a batch.

        Parameters
        ----------
        inputs : array-like of shape (n, in_features), or list of str for a text model
        batch_size : int, default=256
        dim : int, optional
            Output prefix dim (one of :attr:`dims`; default: the Encoder's ``dim``).
        progress : bool, optional
            Progress bar (default: for 10 000 rows or more on a terminal).

        Returns
        -------
        ndarray of shape (n, dim), float32
            Each prefix L2-normalised on its own when the metric is cosine and ``normalize``.
        """
        batch_size = check_positive_int(batch_size, "batch_size")
        out_dim = self._dim if dim is None else self._check_dim(dim)
        if self.is_text:
            embeddings = self._encode_texts(inputs, batch_size, progress)
        else:
            embeddings = self._encode_arrays(inputs, batch_size, progress)
        embeddings = np.ascontiguousarray(embeddings[:, :out_dim], dtype=np.float32)
        if self._normalize and self._metric == "cosine" and embeddings.size:
            norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
            embeddings /= np.maximum(norms, 1e-12)
        return embeddings

    def _bar(self, total: int, progress: bool | None):
        show = progress if progress is not None else total >= _PROGRESS_MIN_ROWS
        return tqdm(total=total, desc="mrlsearch: encoding", unit="row",
                    disable=None if show else True, leave=False)

    def _encode_arrays(self, inputs, batch_size: int, progress) -> np.ndarray:
        if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str):
            raise TypeError("'inputs' must be an array for this vector model (got strings)")
        expected = self._session.get_inputs()[0].shape[1]
        if not isinstance(expected, int):
            raise FormatError(f"{self._dir / 'model.onnx'} has no fixed feature dim")
        batch, _ = check_matrix(inputs, "inputs", dim=expected, allow_empty=True)
        chunks = []
        with self._bar(len(batch), progress) as bar:
            for start in range(0, len(batch), batch_size):
                part = batch[start:start + batch_size]
                chunks.append(self._session.run(["embedding"], {self._input_names[0]: part})[0])
                bar.update(len(part))
        if not chunks:
            return np.empty((0, self._dims[-1]), dtype=np.float32)
        return np.concatenate(chunks)

    def _encode_texts(self, inputs, batch_size: int, progress) -> np.ndarray:
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, (list, tuple)) or not all(isinstance(t, str) for t in inputs):
            raise TypeError("'inputs' must be a list of strings for this text model")
        if not inputs:
            return np.empty((0, self._dims[-1]), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(inputs))
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(lengths, kind="stable")  # similar lengths share a batch: less padding
        out = np.empty((len(inputs), self._dims[-1]), dtype=np.float32)
        with self._bar(len(inputs), progress) as bar:
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                width = int(lengths[rows].max())
                ids = np.zeros((len(rows), width), dtype=np.int64)
                mask = np.zeros((len(rows), width), dtype=np.int64)
                for i, row in enumerate(rows):
                    n = lengths[row]
                    ids[i, :n] = encodings[row].ids
                    mask[i, :n] = 1
                out[rows] = self._session.run(["embedding"],
                                              {"input_ids": ids, "attention_mask": mask})[0]
                bar.update(len(rows))
        return out

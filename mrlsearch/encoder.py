"""Encoder: onnxruntime inference of a model directory written by ``exporters``.

Providers are chosen deliberately: ``"auto"`` uses CUDA only when a CUDA session really starts,
and an explicitly requested provider that cannot run raises :class:`ProviderError` instead of
onnxruntime's silent fallback to the CPU.

Files are read once each, through a descriptor opened without blocking and checked to be a
regular file (a FIFO, a device or a directory in place of ``model.onnx`` raises
:class:`FormatError` instead of hanging); the checksum is computed on the very bytes that
onnxruntime then parses, so a concurrent rewrite of the directory cannot mix two versions.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

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
#: largest manifest.json / tokenizer.json / model.onnx read (a file claiming more is refused)
_MAX_MANIFEST_BYTES = 1 << 20
_MAX_FILE_BYTES = 8 << 30


def _read_regular(path: Path, *, max_bytes: int = _MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path``, which must be a regular file (not a link, FIFO or directory).

    Opened with ``O_NONBLOCK | O_NOFOLLOW`` so that a FIFO cannot block the call, then checked
    with ``fstat`` on the same descriptor before anything is read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FormatError(f"{path} is missing") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise FormatError(f"{path} must be a regular file (got a symbolic link)") from None
        raise FormatError(f"{path} cannot be read ({exc.strerror})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = ("a directory" if stat.S_ISDIR(info.st_mode) else
                    "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a special file")
            raise FormatError(f"{path} must be a regular file (got {kind})")
        if info.st_size > max_bytes:
            raise FormatError(f"{path} is {info.st_size} bytes, more than the {max_bytes} "
                              "this reader accepts")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 24, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise FormatError(f"{path} grew past {max_bytes} bytes while being read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_model_manifest(directory: Path) -> dict:
    """Parse and check ``manifest.json`` (format, version, file list) of a model directory."""
    path = directory / _format.MANIFEST
    raw = _read_regular(path, max_bytes=_MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers bad JSON and integers past Python's digit limit
        raise FormatError(f"{path} is not valid JSON ({type(exc).__name__}: "
                          f"{str(exc)[:200]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MODEL_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise FormatError(f"{path} must describe format {MODEL_FORMAT!r} (got {got!r})")
    if manifest.get("version") not in MODEL_VERSIONS:
        raise FormatError(f"{path} has format version {manifest.get('version')!r}; this "
                          f"mrlsearch reads version(s) {', '.join(map(str, MODEL_VERSIONS))}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise FormatError(f"{path} must list its files with their sha256 (got {files!r:.200})")
    for name in files:
        if not name or "/" in name or "\\" in name or name.startswith(".") or name == \
                _format.MANIFEST:
            raise FormatError(f"{path} lists a bad file name {name!r}")
    if "model.onnx" not in files:
        raise FormatError(f"{path} must list model.onnx with its sha256")
    for key in ("normalize",):
        if key in manifest and not isinstance(manifest[key], bool):
            raise FormatError(f"{path}: {key!r} must be true or false "
                              f"(got {manifest[key]!r:.50})")
    return manifest


def _checked_bytes(directory: Path, name: str, manifest: dict | None) -> bytes:
    """Read ``name`` once; with a manifest, its sha256 must match the listed one."""
    data = _read_regular(directory / name)
    if manifest is not None:
        digest = manifest["files"].get(name)
        if digest is None:
            raise FormatError(f"{directory / name} is not listed in "
                              f"{directory / _format.MANIFEST}")
        if hashlib.sha256(data).hexdigest() != digest:
            raise FormatError(f"{directory / name} is corrupt: its sha256 does not match "
                              f"{directory / _format.MANIFEST}")
    return data


def _check_providers(providers) -> str | list[str]:
    """``'auto'``, or the provider names as a non-empty list of str (checked before any file
    is read or any session started)."""
    if isinstance(providers, str):
        return providers if providers == "auto" else [providers]
    if not isinstance(providers, Sequence) or isinstance(providers, (bytes, bytearray)):
        raise TypeError(f"'providers' must be 'auto', a provider name or a list of provider "
                        f"names (got {type(providers).__name__} {providers!r:.100})")
    names = list(providers)
    if not names:
        raise ValueError("'providers' must name at least one provider (got [])")
    bad = [name for name in names if not isinstance(name, str)]
    if bad:
        raise TypeError(f"'providers' must hold provider names (str), e.g. 'cpu' or "
                        f"'CUDAExecutionProvider' (got {type(bad[0]).__name__} "
                        f"{bad[0]!r:.100})")
    return names


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
        :class:`ProviderError` is raised. Only names are accepted (not onnxruntime's
        ``(name, options)`` tuples).
    dim : int, optional
        Default output prefix dim (one of :attr:`dims`; default: full).
    normalize : bool, optional
        L2-normalise each returned prefix (see :meth:`encode`) when the model's metric is
        cosine. Default: what the model's manifest says (``"normalize"``), which is what its
        classification heads expect: ``exporters`` writes ``false`` for a model exported with
        heads trained on the raw embedding, so ``Classifier.load(model_dir / "classifier.npz")``
        gets the vectors it was trained on, and ``true`` for retrieval models.
    threads : int, optional
        Intra-op threads of the CPU provider (default: onnxruntime's choice).
    verify : bool, default=True
        Check the sha256 of every file against ``manifest.json``.

    Raises
    ------
    TypeError
        If ``providers`` is not ``'auto'``, a str or a sequence of str (checked first, before
        any file is read).
    ValueError
        If ``providers`` is an empty sequence.
    ProviderError
        If a named provider is not in this onnxruntime or cannot start.
    FileNotFoundError, FormatError
        If ``model_dir`` is missing, or is not a valid model directory.

    Examples
    --------
    >>> enc = Encoder("model_dir/")                                # doctest: +SKIP
    >>> enc.provider                                               # doctest: +SKIP
    'CPUExecutionProvider'
    >>> enc.encode(["how do I sort a list?"], dim=64).shape         # doctest: +SKIP
    (1, 64)
    """

    def __init__(self, model_dir: str | os.PathLike, providers: str | Sequence[str] = "auto", *,
                 dim: int | None = None, normalize: bool | None = None,
                 threads: int | None = None, verify: bool = True) -> None:
        providers = _check_providers(providers)
        self._dir = _format.resolve_directory(model_dir, what="model", argument="model_dir")
        manifest = _read_model_manifest(self._dir)
        checked = manifest if verify else None
        if verify:  # every listed file, not only those read here (classifier.npz)
            for name in manifest["files"]:
                if name not in ("model.onnx", "tokenizer.json"):
                    _checked_bytes(self._dir, name, manifest)
        self._manifest = manifest
        model_bytes = _checked_bytes(self._dir, "model.onnx", checked)
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # no fallback chatter: we report the provider ourselves
        if threads is not None:
            options.intra_op_num_threads = check_positive_int(threads, "threads")
        self._session = self._start_session(ort, options, providers, model_bytes)
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
        if normalize is None:
            normalize = manifest.get("normalize", True)
        elif not isinstance(normalize, bool):
            raise TypeError(f"'normalize' must be None, True or False (got {normalize!r})")
        self._normalize = bool(normalize)
        self._dim = self._check_dim(dim)
        self._tokenizer = None
        self._add_special_tokens = bool(manifest.get("add_special_tokens", True))
        if "input_ids" in self._input_names:
            from tokenizers import Tokenizer

            raw = _checked_bytes(self._dir, "tokenizer.json", checked)
            try:
                tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
            except Exception as exc:  # tokenizers raises its own Exception type
                raise FormatError(f"{self._dir / 'tokenizer.json'} is not a valid tokenizer "
                                  f"({str(exc)[:200]})") from None
            max_length = manifest.get("max_length", 128)
            if max_length is not None:  # None: no truncation (static models such as WordLlama)
                if isinstance(max_length, bool) or not isinstance(max_length, int) \
                        or max_length < 1:
                    raise FormatError(f"{self._dir / 'manifest.json'}: 'max_length' must be a "
                                      f"positive int or null (got {max_length!r:.50})")
                tokenizer.enable_truncation(max_length)
            else:
                tokenizer.no_truncation()
            tokenizer.no_padding()
            self._tokenizer = tokenizer

    # ------------------------------------------------------------------ providers
    def _bad_model(self, ort, options, model_bytes: bytes, exc: Exception) -> FormatError | None:
        """A FormatError when the CPU provider cannot load the bytes either (the file's fault)."""
        try:
            ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as cpu_exc:
            return FormatError(f"{self._dir / 'model.onnx'} is not a valid ONNX model "
                               f"({str(cpu_exc)[:300]})")
        return None

    def _start_session(self, ort, options, providers, model_bytes: bytes):
        available = ort.get_available_providers()
        if providers == "auto":
            if "CUDAExecutionProvider" in available:
                try:
                    session = ort.InferenceSession(
                        model_bytes, options,
                        providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
                    if session.get_providers()[0] == "CUDAExecutionProvider":
                        return session
                except Exception:  # CUDA libraries missing: the CPU session below is the answer
                    pass
            try:
                return ort.InferenceSession(model_bytes, options,
                                            providers=["CPUExecutionProvider"])
            except Exception as exc:
                raise FormatError(f"{self._dir / 'model.onnx'} is not a valid ONNX model "
                                  f"({str(exc)[:300]})") from None
        wanted = [_ALIASES.get(n.lower(), n) for n in providers]
        missing = [n for n in wanted if n not in available]
        if missing:
            hint = (" - install mrlsearch[gpu] (onnxruntime-gpu, not together with onnxruntime) "
                    "on a machine with CUDA" if "CUDAExecutionProvider" in missing else "")
            raise ProviderError(f"'providers' asks for {missing[0]}, which this onnxruntime "
                                f"does not have (available: {', '.join(available)}){hint}")
        try:
            session = ort.InferenceSession(model_bytes, options, providers=wanted)
        except Exception as exc:
            bad = self._bad_model(ort, options, model_bytes, exc)
            if bad is not None:
                raise bad from None
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
    def normalize(self) -> bool:
        """Whether :meth:`encode` L2-normalises the returned prefix (cosine models)."""
        return self._normalize

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
                f"normalize={self._normalize} provider={self.provider!r}>")

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
            The model output truncated to its first ``dim`` columns. When :attr:`normalize`
            is true and the metric is cosine, that returned prefix ``z[:, :dim]`` is divided by
            its own L2 norm (so every row has norm 1 at the dim asked for) - not the full
            ``z`` normalised and then truncated, whose prefixes would have norms below 1. With
            ``normalize=False`` the raw model output is returned, truncated.

        Notes
        -----
        Texts are sorted by token count and batched in that order (less padding), then
        returned in input order.
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
        if isinstance(inputs, (list, tuple)) and not inputs:  # no rows, as for a text model
            return np.empty((0, self._dims[-1]), dtype=np.float32)
        expected = self._session.get_inputs()[0].shape[1]
        if not isinstance(expected, int):
            raise FormatError(f"{self._dir / 'model.onnx'} has no fixed feature dim")
        batch, _ = check_matrix(inputs, "inputs", dim=expected, allow_empty=True)
        chunks = []
        with self._bar(len(batch), progress) as bar:
            for start in range(0, len(batch), batch_size):
                part = batch[start:start + batch_size]
                chunks.append(self._prefix_of(
                    self._session.run(["embedding"], {self._input_names[0]: part})[0]))
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
        try:
            encodings = self._tokenizer.encode_batch(
                list(inputs), add_special_tokens=self._add_special_tokens)
        except Exception as exc:  # tokenizers names no row: find the text it cannot take
            for row, text in enumerate(inputs):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as bad:
                    raise ValueError(
                        f"'inputs' must be valid Unicode text (row {row} holds "
                        f"{text[bad.start:bad.end]!r}, a lone surrogate, at {bad.start})"
                    ) from None
            raise
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(lengths, kind="stable")  # similar lengths share a batch: less padding
        out = np.empty((len(inputs), self._dims[-1]), dtype=np.float32)
        with self._bar(len(inputs), progress) as bar:
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                width = max(1, int(lengths[rows].max()))
                ids = np.zeros((len(rows), width), dtype=np.int64)
                mask = np.zeros((len(rows), width), dtype=np.int64)
                for i, row in enumerate(rows):
                    n = lengths[row]
                    ids[i, :n] = encodings[row].ids
                    mask[i, :n] = 1
                out[rows] = self._prefix_of(self._session.run(
                    ["embedding"], {"input_ids": ids, "attention_mask": mask})[0])
                bar.update(len(rows))
        return out

    def _prefix_of(self, embeddings: np.ndarray) -> np.ndarray:
        """The first ``dims[-1]`` columns of a batch the model returned: a model may output
        more (its dims need not reach its width), never fewer."""
        width = embeddings.shape[1] if embeddings.ndim == 2 else -1
        if width < self._dims[-1]:
            raise FormatError(f"{self._dir / 'model.onnx'} returned embeddings of shape "
                              f"{embeddings.shape}, narrower than its largest dim "
                              f"{self._dims[-1]}")
        return embeddings[:, : self._dims[-1]]

"""Bring your own model: export sentence-transformers models and WordLlama to model directories.

Both produce the same model directory :func:`exporters.export_onnx` writes (``model.onnx`` with
``input_ids`` / ``attention_mask`` in and ``embedding`` out, ``tokenizer.json``,
``manifest.json``), so :class:`mrlsearch.Encoder` reads them like any other text model. Nothing
is downloaded: models come from local paths (or objects already in memory).

* :func:`export_sentence_transformer` - any local sentence-transformers model (transformer,
  pooling, optional Dense / Normalize), optionally fused with a trained MRL adapter into one
  ONNX graph: text in, MRL embedding out.
* :func:`export_wordllama` - WordLlama's token-embedding lookup and masked mean as a tiny ONNX
  graph (Gather, Mul, ReduceSum, Div).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mrlsearch._validation import check_dims, check_positive_int

from .export import export_onnx
from .layers import MRLModel

__all__ = ["default_dims", "export_sentence_transformer", "export_wordllama",
           "load_wordllama"]

#: texts that trace and validate an exported text graph (two lengths, punctuation, digits)
EXAMPLE_TEXTS = (
    "Return the fields of a dataclass instance as a new dictionary.",
    "Sort the list in place; the sort is stable.",
    ("Create and return a temporary directory, removed when the context exits, whatever "
     "happens inside it (exceptions included)."),
    "Open a URL and return a file-like object with the response body and headers.",
    "HNSW graphs over 16 dims, reranked at 384.",
    "x",
    "Parse 2024-01-31 as a date.",
    "Split a string into a list of words, separated by runs of whitespace.",
)


def default_dims(dim: int, *, smallest: int = 8) -> tuple[int, ...]:
    """Powers of two from ``smallest`` below ``dim``, then ``dim``: ``384 -> (8, ..., 256, 384)``.

    Examples
    --------
    >>> default_dims(384)
    (8, 16, 32, 64, 128, 256, 384)
    """
    dims, m = [], smallest
    while m < dim:
        dims.append(m)
        m *= 2
    return (*dims, int(dim))


def _tokenize(tokenizer, texts: Sequence[str], *, add_special_tokens: bool = True):
    """``(input_ids, attention_mask)`` int64 tensors, padded to the longest text, as Encoder
    does (one text per row, no padding inside the tokenizer)."""
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
    width = max(1, max(len(e.ids) for e in encodings))
    ids = torch.zeros((len(encodings), width), dtype=torch.long)
    mask = torch.zeros((len(encodings), width), dtype=torch.long)
    for i, encoding in enumerate(encodings):
        n = len(encoding.ids)
        ids[i, :n] = torch.tensor(encoding.ids, dtype=torch.long)
        mask[i, :n] = 1
    return ids, mask


class SentenceTransformerBackbone(nn.Module):
    """A sentence-transformers model (and an optional adapter) as ``(input_ids, mask) ->
    embedding``, with the tokenizer ``Encoder`` will use.

    Parameters
    ----------
    model : sentence_transformers.SentenceTransformer
    adapter : nn.Module, optional
        Applied to the sentence embedding (what ``SentenceTransformer.encode`` returns):
        an :class:`MRLModel` (e.g. from :func:`exporters.fit_adapter`) or any module.
    max_length : int, optional
        Tokens per text (default: the model's ``max_seq_length``).
    """

    def __init__(self, model, adapter: nn.Module | None = None, *,
                 max_length: int | None = None) -> None:
        super().__init__()
        from tokenizers import Tokenizer

        hf_tokenizer = getattr(model, "tokenizer", None)
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError("the sentence-transformers model must have a fast (Rust) "
                             "tokenizer: its tokenizer has no backend_tokenizer")
        self.st = model.cpu().eval()
        self.adapter = adapter.cpu().eval() if adapter is not None else None
        self.max_length = (int(model.max_seq_length) if max_length is None
                           else check_positive_int(max_length, "max_length"))  # 0 is refused
        self._tokenizer_json = backend.to_str()
        self.tokenizer = Tokenizer.from_str(self._tokenizer_json)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self.add_special_tokens = True
        self.source = {"kind": "sentence-transformers",
                       "modules": [type(m).__name__ for m in model],
                       "adapter": type(adapter).__name__ if adapter is not None else None}
        for parameter in self.parameters():
            parameter.requires_grad = False

    def tokenizer_json(self) -> str:
        return self._tokenizer_json

    def tokenize(self, texts: Sequence[str]):
        return _tokenize(self.tokenizer, texts)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        embedding = self.st(features)["sentence_embedding"]
        if self.adapter is not None:
            embedding = self.adapter(embedding)
        return embedding


def _load_sentence_transformer(model_or_path):
    from sentence_transformers import SentenceTransformer

    if isinstance(model_or_path, SentenceTransformer):
        return model_or_path
    path = Path(model_or_path)
    if not path.is_dir():
        raise FileNotFoundError(f"'model_or_path' must be a SentenceTransformer or a local "
                                f"model directory (no directory at {path}; nothing is "
                                "downloaded)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


def export_sentence_transformer(model_or_path, out_dir: str | os.PathLike, *,
                                dims: Sequence[int] | None = None,
                                adapter: nn.Module | None = None,
                                max_length: int | None = None, opset: int = 17,
                                fp16: bool = False, quantize: str | None = None,
                                example: Sequence[str] | None = None,
                                validate: bool = True) -> dict:
    """Export a local sentence-transformers model to a model directory for ``Encoder``.

    The graph is the model's own forward pass (transformer, pooling, Dense, Normalize - every
    module of the pipeline) from token ids to the sentence embedding, optionally followed by
    ``adapter`` (one graph: text in, MRL embedding out). ``Encoder(out_dir).encode(texts,
    dim=m)`` then equals ``SentenceTransformer.encode(texts, truncate_dim=m)`` with each
    truncated row renormalised (the model is compared by cosine).

    Parameters
    ----------
    model_or_path : SentenceTransformer or path
        A loaded model, or a local directory (loaded offline, on the CPU).
    out_dir : path
        Model directory to write (atomically).
    dims : sequence of int, optional
        Nesting dims to record (default: the adapter's dims when it is an :class:`MRLModel`,
        else powers of two below the output dim, then the output dim; see
        :func:`default_dims`). Any model can be truncated; only an MRL-trained one (or an
        MRL adapter) keeps its quality at short prefixes - benchmarks tell.
    adapter : nn.Module, optional
        Applied to the sentence embedding, e.g. the model :func:`exporters.fit_adapter`
        trained on ``SentenceTransformer.encode`` outputs.
    max_length : int, optional
        Tokens per text (default: the model's ``max_seq_length``).
    opset, fp16, quantize, validate
        As for :func:`exporters.export_onnx`; ``quantize='int8'`` is dynamic per-channel
        quantisation of the MatMuls.
    example : list of str, optional
        Texts to trace and validate with (default: a few built-in sentences).

    Returns
    -------
    dict
        The manifest (``parity`` per prefix against the torch forward pass).

    Examples
    --------
    >>> from exporters import export_sentence_transformer, minilm_path  # doctest: +SKIP
    >>> export_sentence_transformer(minilm_path(), "models/minilm")     # doctest: +SKIP
    >>> Encoder("models/minilm").encode(["a query"], dim=64).shape       # doctest: +SKIP
    (1, 64)
    """
    st = _load_sentence_transformer(model_or_path)
    backbone = SentenceTransformerBackbone(st, adapter, max_length=max_length)
    get_dim = getattr(st, "get_embedding_dimension", None) \
        or st.get_sentence_embedding_dimension
    width = int(get_dim())
    if adapter is not None:
        with torch.no_grad():
            width = int(adapter(torch.zeros(2, width)).shape[1])
    if dims is None:
        dims = adapter.dims if isinstance(adapter, MRLModel) else default_dims(width)
    dims = check_dims(dims, "dims", max_dim=width)
    similarity = str(getattr(st, "similarity_fn_name", None) or "cosine")
    metric = {"cosine": "cosine", "dot": "ip", "euclidean": "l2"}.get(similarity, "cosine")
    model = MRLModel(backbone, width, dims, metric=metric)
    return export_onnx(model, out_dir, list(example or EXAMPLE_TEXTS), opset=opset, fp16=fp16,
                       quantize=quantize, validate=validate,
                       normalize=metric == "cosine")


# ---------------------------------------------------------------------------- WordLlama
def load_wordllama(*, config: str = "l2_supercat", dim: int = 256, cache_dir=None):
    """Load the WordLlama weights shipped in the ``wordllama`` package, offline.

    WordLlama's loader does not look where the package ships its tokenizer
    (``wordllama/tokenizers/``); this copies it into a cache folder (default
    ``~/.cache/mrlsearch/wordllama``, both ``tokenizer/`` and ``tokenizers/``, the names
    wordllama versions use) and loads with ``disable_download=True``. The weights are read
    from the package itself.
    """
    import shutil

    import wordllama
    from wordllama import WordLlama

    package = Path(wordllama.__file__).parent
    cache = Path(cache_dir or Path.home() / ".cache" / "mrlsearch" / "wordllama")
    for folder in ("tokenizer", "tokenizers"):
        (cache / folder).mkdir(parents=True, exist_ok=True)
        for source in (package / "tokenizers").glob("*.json"):
            target = cache / folder / source.name
            if not target.is_file():
                shutil.copy(source, target)
    return WordLlama.load(config=config, dim=dim, cache_dir=cache, disable_download=True)


class WordLlamaBackbone(nn.Module):
    """WordLlama as a graph: ``embedding[input_ids]`` averaged over the attention mask."""

    def __init__(self, wordllama) -> None:
        super().__init__()
        weights = np.ascontiguousarray(np.asarray(wordllama.embedding, dtype=np.float32))
        # the shipped weights are float16: stored as such (half the file), cast after the
        # lookup - bit-identical to WordLlama's own float32 copy
        half = weights.astype(np.float16)
        exact = bool(np.array_equal(half.astype(np.float32), weights))
        self.embedding = nn.Embedding.from_pretrained(
            torch.as_tensor(half if exact else weights), freeze=True)
        from tokenizers import Tokenizer

        self._tokenizer_json = wordllama.tokenizer.to_str()
        self.tokenizer = Tokenizer.from_str(self._tokenizer_json)
        self.tokenizer.no_padding()  # WordLlamaInference pads its own copy
        self.tokenizer.no_truncation()
        self.max_length = None  # WordLlama does not truncate
        self.add_special_tokens = False  # nor add <s> / </s>
        self.source = {"kind": "wordllama", "vocab": int(weights.shape[0]),
                       "dim": int(weights.shape[1])}

    def tokenizer_json(self) -> str:
        return self._tokenizer_json

    def tokenize(self, texts: Sequence[str]):
        return _tokenize(self.tokenizer, texts, add_special_tokens=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        summed = (self.embedding(input_ids).to(torch.float32) * mask).sum(dim=1)
        return summed / mask.sum(dim=1).clamp(min=1.0)


def export_wordllama(out_dir: str | os.PathLike, *, wordllama=None,
                     dims: Sequence[int] | None = None, config: str = "l2_supercat",
                     dim: int = 256, opset: int = 17, fp16: bool = False,
                     example: Sequence[str] | None = None, validate: bool = True) -> dict:
    """Export WordLlama (an MRL-trained static embedding model) as a tiny ONNX text model.

    ``Encoder(out_dir).encode(texts, dim=m)`` equals ``WordLlama.embed(texts)[:, :m]``
    renormalised per row.

    Parameters
    ----------
    out_dir : path
    wordllama : WordLlamaInference, optional
        A loaded model (default: :func:`load_wordllama` with ``config`` and ``dim``).
    dims : sequence of int, optional
        Default: (64, 128, 256) cut to the model's dim - WordLlama's trained MRL prefixes.
    config : str, default='l2_supercat'
    dim : int, default=256
    opset, fp16, validate
        As for :func:`exporters.export_onnx` (int8 does not apply: there is no MatMul).
    example : list of str, optional

    Examples
    --------
    >>> export_wordllama("models/wordllama")                       # doctest: +SKIP
    >>> Encoder("models/wordllama").encode(["a query"], dim=64).shape  # doctest: +SKIP
    (1, 64)
    """
    wl = wordllama if wordllama is not None else load_wordllama(config=config, dim=dim)
    backbone = WordLlamaBackbone(wl)
    width = backbone.source["dim"]
    if dims is None:
        dims = tuple(m for m in (64, 128, 256, 512, 1024) if m < width) + (width,)
    dims = check_dims(dims, "dims", max_dim=width)
    model = MRLModel(backbone, width, dims, metric="cosine")
    return export_onnx(model, out_dir, list(example or EXAMPLE_TEXTS), opset=opset, fp16=fp16,
                       validate=validate, normalize=True)

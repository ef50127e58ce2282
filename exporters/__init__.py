"""exporters: the torch side of mrlsearch.

Train Matryoshka (MRL / MRL-E) encoders and classifiers, evaluate them per nesting dim, and
export them to ONNX for :class:`mrlsearch.Encoder`.
"""

from __future__ import annotations

from .backbones import MLP, FrozenAdapter, TextEncoder, minilm_path
from .data import (
    ClassificationData,
    PairData,
    docstring_modules,
    docstring_pairs,
    load_array_data,
    load_digits_data,
)
from .evaluate import evaluate, write_metrics
from .export import ExportValidationError, export_onnx, validate_onnx
from .interop import export_sentence_transformer, export_wordllama, load_wordllama
from .layers import MRLLinear, MRLModel, PrefixLogits
from .losses import MatryoshkaLoss, info_nce
from .models import build_model, load_run, save_run
from .train import Trainer, fit_adapter, seed_everything

__all__ = [
    "build_model",
    "ClassificationData",
    "docstring_modules",
    "docstring_pairs",
    "evaluate",
    "export_onnx",
    "export_sentence_transformer",
    "export_wordllama",
    "ExportValidationError",
    "fit_adapter",
    "FrozenAdapter",
    "info_nce",
    "load_array_data",
    "load_digits_data",
    "load_run",
    "load_wordllama",
    "MatryoshkaLoss",
    "minilm_path",
    "MLP",
    "MRLLinear",
    "MRLModel",
    "PairData",
    "PrefixLogits",
    "save_run",
    "seed_everything",
    "TextEncoder",
    "Trainer",
    "validate_onnx",
    "write_metrics",
]

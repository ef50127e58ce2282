"""Build an :class:`MRLModel` from a JSON config, and save/load trained runs (no pickle)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .backbones import MLP, FrozenAdapter, TextEncoder, minilm_path
from .layers import MRLModel

__all__ = ["build_model", "load_run", "save_run"]

BACKBONES = ("mlp", "adapter", "text")


def build_model(config: dict) -> MRLModel:
    """An untrained model from a config such as ``{"backbone": "mlp", "in_features": 64,
    "embed_dim": 64, "dims": [8, 16, 32, 64], "num_classes": 10}``."""
    kind = config.get("backbone")
    if kind not in BACKBONES:
        raise ValueError(f"'backbone' must be one of {', '.join(BACKBONES)} (got {kind!r})")
    embed_dim = int(config["embed_dim"])
    if kind == "mlp":
        backbone = MLP(config["in_features"], embed_dim, config.get("hidden", (256,)),
                       dropout=config.get("dropout", 0.0))
    elif kind == "adapter":
        backbone = FrozenAdapter(config["in_features"], embed_dim, config.get("hidden", 0),
                                 init=config.get("init", "identity"),
                                 bias=config.get("bias", "init" not in config))  # old runs: bias
    else:
        path = config.get("model_path") or str(minilm_path())
        backbone = TextEncoder(path, embed_dim, trainable=config.get("trainable", False),
                               max_length=config.get("max_length", 128))
    return MRLModel(backbone, embed_dim, config["dims"], num_classes=config.get("num_classes"),
                    efficient=config.get("efficient", False), metric=config.get("metric", "cosine"))


def model_config(model: MRLModel, backbone: str) -> dict:
    """The config that rebuilds ``model`` with :func:`build_model`."""
    config = {"backbone": backbone, **model.backbone.config, "embed_dim": model.embed_dim,
              "dims": list(model.dims), "metric": model.metric,
              "num_classes": model.head.num_classes if model.head is not None else None,
              "efficient": bool(model.head.efficient) if model.head is not None else False}
    return config


def save_run(model: MRLModel, config: dict, run_dir: str | os.PathLike) -> None:
    """Write ``model.safetensors`` + ``config.json`` (+ ``classifier.npz`` with a head).

    Each file replaces its old version atomically, and ``config.json``, which makes the
    directory a run for :func:`load_run`, comes last: a crash leaves the old files or new
    ones, never a torn file, and a first run cut short is not taken for a run.
    """
    from safetensors.torch import save

    from mrlsearch._format import atomic_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_file(run_dir / "model.safetensors") as handle:
        handle.write(save(weights))
    if model.head is not None:
        model.head.to_classifier().save(run_dir / "classifier.npz")  # atomic too
    with atomic_file(run_dir / "config.json") as handle:
        handle.write((json.dumps(config, indent=2) + "\n").encode())


def load_run(run_dir: str | os.PathLike) -> tuple[MRLModel, dict]:
    """Rebuild a trained model from a run directory written by :func:`save_run`."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"No config.json in {run_dir}: not a training run directory")
    config = json.loads(config_path.read_text())
    model = build_model(config)
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    model.eval()
    return model, config

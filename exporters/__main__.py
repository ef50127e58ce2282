"""``python -m exporters``: train MRL models and export them to ONNX.

    python -m exporters train --data digits --backbone mlp --dims 8,16,32,64 --out runs/digits
    python -m exporters train --data docstrings --backbone adapter --dims 16,32,64,384 --out runs/doc
    python -m exporters export runs/digits --out models/digits [--fp16 | --int8]
    python -m exporters export-st MODEL_DIR --out models/minilm [--adapter runs/doc] [--int8]
    python -m exporters export-wordllama --out models/wordllama

``train --backbone adapter`` trains :func:`exporters.fit_adapter` on sentence-transformers
features (the packaged MiniLM unless ``--features-model``): PCA-rotation start, symmetric InfoNCE,
batch 512, the best validation epoch kept (epoch 0, the raw model, included).

Exit codes: 0 ok, 1 error (one line, the traceback with --debug), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

__all__ = ["main"]


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints (got {text!r})") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one int (got {text!r})")
    return values


def _int_at_least(low: int):
    """An argparse type: an int >= ``low`` (a 0 is refused, not read as "the default")."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int (got {text!r})") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an int >= {low} (got {value})")
        return value
    return parse


_positive_int = _int_at_least(1)


def _positive_int_list(text: str) -> list[int]:
    values = _int_list(text)
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected ints >= 1 (got {text!r})")
    return values


def _check_finite_weights(model) -> None:
    """Refuse to save a model whose weights went to NaN or inf in training."""
    import torch

    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise ValueError("training diverged: the weights hold NaN or inf; nothing was saved "
                         "(lower --lr, or check the data)")


def _check_run_out(out: Path, resume: bool) -> None:
    """Refuse, before any work, an --out that cannot hold this run: a file, or a directory
    holding an earlier run unless ``resume`` (which then needs its checkpoints)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"'--out' ({out}) exists and is not a directory")
    checkpoints = out / "checkpoints" / "last"
    if resume:
        if not checkpoints.is_dir():
            raise ValueError(f"--resume: {out} holds no checkpoints/last to continue")
        return
    if checkpoints.is_dir() or (out / "config.json").exists():
        raise ValueError(f"'--out' ({out}) holds an earlier run: pass --resume to continue its "
                         "checkpoints (with the same data, dims and seed), or choose another "
                         "directory")


def _load_data(name: str, *, max_pairs: int | None, seed: int, max_length: int):
    """(data, text_inputs) for --data; docstrings become MiniLM features unless --backbone text."""
    from .data import docstring_pairs, load_array_data, load_digits_data

    if name == "digits":
        return load_digits_data(seed=seed)
    if name == "docstrings":
        return docstring_pairs(max_pairs=max_pairs, seed=seed)
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"--data must be digits, docstrings or an .npz file (got {name})")
    return load_array_data(path, seed=seed)


def _featurise(pairs, max_length: int, model_path: str | None = None):
    """``SentenceTransformer.encode`` of every text of a PairData (for the adapter backbone):
    what ``export-st --adapter`` feeds the adapter at inference."""
    from sentence_transformers import SentenceTransformer

    from .backbones import minilm_path
    from .data import PairData

    model = SentenceTransformer(str(model_path or minilm_path()), device="cpu",
                                local_files_only=True)
    model.max_seq_length = max_length
    fields = ("train_queries", "train_positives", "val_queries", "val_positives",
              "test_queries", "test_positives")
    return PairData(*(model.encode(list(getattr(pairs, f)), batch_size=64,
                                   convert_to_numpy=True).astype(np.float32) for f in fields))


def _train_adapter(args, data, texts: bool) -> None:
    from .evaluate import evaluate, write_metrics
    from .models import model_config, save_run
    from .train import fit_adapter

    if texts:
        data = _featurise(data, args.max_length, args.features_model)
    model, history = fit_adapter(data, args.dims, embed_dim=args.embed_dim,
                                 hidden=args.adapter_hidden, init=args.init,
                                 epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                 seed=args.seed, device=args.device, progress=True)
    _check_finite_weights(model)  # the adapter returns its best epoch, maybe the first
    metrics = evaluate(model, data, dims=args.dims)
    metrics.update(history=[{**h, "val": {str(m): v for m, v in h["val"].items()}}
                            for h in history], kind="MRL adapter", data=args.data,
                   features_model=args.features_model or "all-MiniLM-L6-v2 (packaged)")
    out = Path(args.out)
    save_run(model, model_config(model, "adapter"), out)
    write_metrics(metrics, out / "metrics.json")
    last = metrics["per_dim"][args.dims[-1]]
    print(f"wrote {out}: " + ", ".join(f"{k} {v:.3f}" for k, v in last.items())
          + f" at {args.dims[-1]} dims")


def _cmd_train(args: argparse.Namespace) -> None:
    from .data import ClassificationData
    from .evaluate import evaluate, write_metrics
    from .losses import MatryoshkaLoss
    from .models import build_model, model_config, save_run
    from .train import Trainer

    _check_run_out(Path(args.out), args.resume)
    data = _load_data(args.data, max_pairs=args.max_pairs, seed=args.seed,
                      max_length=args.max_length)
    classification = isinstance(data, ClassificationData)
    texts = not classification and isinstance(data.train_queries, list)
    if texts and args.backbone == "mlp":
        raise ValueError("--backbone mlp takes vectors: use adapter or text for docstrings")
    if not texts and args.backbone == "text":
        raise ValueError("--backbone text takes texts: use --data docstrings")
    adapter_on_pairs = args.backbone == "adapter" and not classification
    args.epochs = args.epochs or (4 if adapter_on_pairs else 20)
    args.batch_size = args.batch_size or (512 if adapter_on_pairs else 64)
    if adapter_on_pairs:
        return _train_adapter(args, data, texts)
    in_features = (data.in_features if classification else
                   None if texts else int(np.asarray(data.train_queries).shape[1]))
    embed_dim = args.embed_dim or args.dims[-1]
    eval_dims = args.dims
    train_dims = [embed_dim] if args.ff else args.dims
    config = {"backbone": args.backbone, "embed_dim": embed_dim, "dims": train_dims,
              "num_classes": data.num_classes if classification else None,
              "efficient": args.efficient, "metric": "cosine"}
    if args.backbone == "mlp":
        config.update(in_features=in_features, hidden=args.hidden)
    elif args.backbone == "adapter":
        config.update(in_features=in_features, hidden=args.adapter_hidden, init=args.init)
    else:
        config.update(trainable=args.trainable, max_length=args.max_length)
    model = build_model(config)
    loss = MatryoshkaLoss("cross_entropy" if classification else "infonce", train_dims)
    out = Path(args.out)
    trainer = Trainer(model, loss, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                      device=args.device, seed=args.seed, checkpoint_dir=out / "checkpoints",
                      patience=args.patience)
    created = not out.exists()
    try:
        history = trainer.fit(data)  # raises on a NaN loss before checkpointing that epoch
        _check_finite_weights(model)
    except BaseException:
        if created:  # a failed first run leaves no directory to be refused as an earlier run
            shutil.rmtree(out, ignore_errors=True)
        raise
    metrics = evaluate(model, data, dims=eval_dims)
    metrics.update(history=history, kind="FF" if args.ff else "MRL-E" if args.efficient else "MRL",
                   data=args.data)
    save_run(model, model_config(model, args.backbone), out)
    write_metrics(metrics, out / "metrics.json")
    last = metrics["per_dim"][eval_dims[-1]]
    print(f"wrote {out}: " + ", ".join(f"{k} {v:.3f}" for k, v in last.items())
          + f" at {eval_dims[-1]} dims")


def _cmd_export(args: argparse.Namespace) -> None:
    from .export import export_onnx
    from .models import load_run

    model, config = load_run(args.run_dir)
    if config["backbone"] == "text":
        example = ["An example sentence for tracing.", "Another, somewhat longer one, to trace "
                   "the dynamic sequence axis of the exported graph."] * 4
    else:
        rng = np.random.default_rng(0)
        example = rng.standard_normal((16, config["in_features"])).astype(np.float32)
    manifest = export_onnx(model, args.out, example, opset=args.opset, fp16=args.fp16,
                           quantize="int8" if args.int8 else None)
    worst = max(r["max_abs_diff"] for r in manifest["parity"].values())
    print(f"exported {args.run_dir} to {args.out} ({manifest['precision']}, opset "
          f"{manifest['opset']}, IR {manifest['ir_version']}); max abs diff vs torch {worst:.2e}")
    print(json.dumps({"dims": manifest["dims"], "metric": manifest["metric"]}))


def _cmd_export_st(args: argparse.Namespace) -> None:
    from .interop import export_sentence_transformer
    from .models import load_run

    adapter = load_run(args.adapter)[0] if args.adapter else None
    manifest = export_sentence_transformer(args.model, args.out, adapter=adapter,
                                           dims=args.dims, max_length=args.max_length,
                                           opset=args.opset, fp16=args.fp16,
                                           quantize="int8" if args.int8 else None)
    _report_export(args.model, args.out, manifest)


def _cmd_export_wordllama(args: argparse.Namespace) -> None:
    from .interop import export_wordllama

    manifest = export_wordllama(args.out, dims=args.dims, config=args.config, dim=args.dim,
                                opset=args.opset, fp16=args.fp16)
    _report_export("WordLlama " + args.config, args.out, manifest)


def _report_export(source, out, manifest: dict) -> None:
    worst = max(r["max_abs_diff"] for r in manifest["parity"].values())
    print(f"exported {source} to {out} ({manifest['precision']}, opset {manifest['opset']}, "
          f"IR {manifest['ir_version']}); max abs diff vs torch {worst:.2e}")
    print(json.dumps({"dims": manifest["dims"], "metric": manifest["metric"],
                      "normalize": manifest["normalize"]}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m exporters",
                                     description="Train MRL models and export them to ONNX.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an MRL model on built-in or .npz data")
    train.add_argument("--data", required=True, help="digits, docstrings or an .npz file")
    train.add_argument("--backbone", choices=("mlp", "adapter", "text"), default="mlp")
    train.add_argument("--dims", type=_int_list, required=True, help="nesting dims, e.g. 8,16,64")
    train.add_argument("--embed-dim", type=_positive_int, default=None,
                       help="default: the last dim")
    train.add_argument("--hidden", type=_positive_int_list, default=[256],
                       help="hidden widths (mlp)")
    train.add_argument("--adapter-hidden", type=_int_at_least(0), default=0,
                       help="adapter: residual MLP width (0: linear adapter)")
    train.add_argument("--init", choices=("pca", "identity", "orthogonal"), default="pca",
                       help="adapter: starting map (each equals the raw model at full dim)")
    train.add_argument("--features-model", default=None,
                       help="adapter on texts: local sentence-transformers model directory "
                            "(default: the packaged all-MiniLM-L6-v2)")
    train.add_argument("--efficient", action="store_true", help="MRL-E head (shared weight)")
    train.add_argument("--ff", action="store_true",
                       help="fixed-feature baseline: loss at the full dim only")
    train.add_argument("--trainable", action="store_true", help="fine-tune the transformer")
    train.add_argument("--max-length", type=_positive_int, default=128, help="tokens per text")
    train.add_argument("--max-pairs", type=_positive_int, default=None,
                       help="subsample docstring pairs")
    train.add_argument("--epochs", type=_positive_int, default=None,
                       help="default: 4 for an adapter on pairs, else 20")
    train.add_argument("--batch-size", type=_positive_int, default=None,
                       help="default: 512 for an adapter on pairs (in-batch negatives), else 64")
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--patience", type=_positive_int, default=None)
    train.add_argument("--device", default="auto")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True, help="run directory to write")
    train.add_argument("--resume", action="store_true",
                       help="continue the checkpoints of an earlier run in --out (the same "
                            "data, dims and seed); without it such an --out is refused")
    train.set_defaults(func=_cmd_train)

    export = commands.add_parser("export", help="export a run directory to an ONNX model dir")
    export.add_argument("run_dir")
    export.add_argument("--out", required=True, help="model directory to write")
    export.add_argument("--opset", type=int, default=17)
    precision = export.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="float16 weights")
    precision.add_argument("--int8", action="store_true", help="dynamic int8 quantisation")
    export.set_defaults(func=_cmd_export)

    export_st = commands.add_parser(
        "export-st", help="export a local sentence-transformers model (+ adapter run)")
    export_st.add_argument("model", help="local sentence-transformers model directory")
    export_st.add_argument("--out", required=True, help="model directory to write")
    export_st.add_argument("--adapter", default=None, help="adapter run directory to fuse")
    export_st.add_argument("--dims", type=_int_list, default=None, help="nesting dims")
    export_st.add_argument("--max-length", type=_positive_int, default=None, help="tokens per text")
    export_st.add_argument("--opset", type=int, default=17)
    precision = export_st.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="float16 weights")
    precision.add_argument("--int8", action="store_true", help="dynamic int8 quantisation")
    export_st.set_defaults(func=_cmd_export_st)

    export_wl = commands.add_parser("export-wordllama", help="export WordLlama (offline)")
    export_wl.add_argument("--out", required=True, help="model directory to write")
    export_wl.add_argument("--config", default="l2_supercat")
    export_wl.add_argument("--dim", type=int, default=256)
    export_wl.add_argument("--dims", type=_int_list, default=None, help="nesting dims")
    export_wl.add_argument("--opset", type=int, default=17)
    export_wl.add_argument("--fp16", action="store_true", help="float16 weights")
    export_wl.set_defaults(func=_cmd_export_wordllama)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except Exception as exc:  # one line for the user; --debug shows the traceback
        if args.debug:
            raise
        print(f"exporters: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

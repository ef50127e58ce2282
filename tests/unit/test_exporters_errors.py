"""Bad arguments to the torch side get clear errors before any work starts."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from exporters import MatryoshkaLoss, Trainer, build_model, export_onnx  # noqa: E402
from exporters.data import load_digits_data  # noqa: E402


def small_model(**extra):
    config = {"backbone": "mlp", "in_features": 8, "embed_dim": 8, "hidden": [8],
              "dims": [4, 8], "num_classes": 3, **extra}
    return build_model(config)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"opset": 12}, ValueError, r"'opset' must be one of"),
        ({"quantize": "int4"}, ValueError, r"'quantize' must be None or 'int8' \(got 'int4'\)"),
        ({"fp16": True, "quantize": "int8"}, ValueError, r"'fp16' and 'quantize' are exclusive"),
    ],
)
def test_export_argument_errors(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        export_onnx(small_model(), tmp_path / "m", np.zeros((2, 8), np.float32), **kwargs)
    assert not (tmp_path / "m").exists()


def test_export_example_errors(tmp_path):
    with pytest.raises(ValueError, match=r"'example' must be a 2-D array \(got shape \(8,\)\)"):
        export_onnx(small_model(), tmp_path / "m", np.zeros(8, np.float32))
    with pytest.raises(TypeError, match=r"'model' must be an MRLModel"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "m", np.zeros((2, 2), np.float32))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"epochs": 0}, ValueError, r"'epochs' must be a positive int \(got 0\)"),
        ({"batch_size": 2.5}, ValueError, r"'batch_size' must be a positive int"),
        ({"lr": -1.0}, ValueError, r"'lr' must be > 0 \(got -1.0\)"),
    ],
)
def test_trainer_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        Trainer(small_model(), MatryoshkaLoss("cross_entropy", (4, 8)), **kwargs)


def test_trainer_rejects_mismatched_loss_and_data():
    with pytest.raises(ValueError, match=r"'loss' dims \(4,\) must equal the head's dims"):
        Trainer(small_model(), MatryoshkaLoss("cross_entropy", (4,)))
    with pytest.raises(ValueError, match="needs a model with num_classes"):
        Trainer(small_model(num_classes=None), MatryoshkaLoss("cross_entropy", (4, 8)))
    trainer = Trainer(build_model({"backbone": "mlp", "in_features": 64, "embed_dim": 8,
                                   "dims": [4, 8]}), MatryoshkaLoss("infonce", (4, 8)),
                      progress=False)
    with pytest.raises(TypeError, match="an infonce loss trains on PairData"):
        trainer.fit(load_digits_data())


def test_build_model_rejects_unknown_backbone():
    with pytest.raises(ValueError, match=r"'backbone' must be one of mlp, adapter, text"):
        build_model({"backbone": "cnn", "embed_dim": 8, "dims": [8]})


@pytest.mark.parametrize("value", [0, 2, 3.5, True])
def test_docstring_modules_rejects_a_bad_class_minimum(value):
    from exporters import docstring_modules

    with pytest.raises(ValueError, match="'min_per_class'"):
        docstring_modules(min_per_class=value)


def test_docstring_modules_is_a_clean_split():
    from exporters import docstring_modules

    data = docstring_modules(min_per_class=30, seed=0)
    splits = [(data.x_train, data.y_train), (data.x_val, data.y_val), (data.x_test, data.y_test)]
    texts = [set(x) for x, _ in splits]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    for x, y in splits:
        assert len(x) == len(y) and all(isinstance(t, str) and len(t) >= 40 for t in x)
    # every class is in every split, and it has at least min_per_class texts in all
    for _, y in splits:
        assert set(y.tolist()) == set(range(data.num_classes))
    counts = np.bincount(np.concatenate([y for _, y in splits]))
    assert counts.min() >= 30 and len(data.class_names) == data.num_classes
    with pytest.raises(TypeError, match="in_features"):
        _ = data.in_features
    again = docstring_modules(min_per_class=30, seed=0)
    assert again.x_test == data.x_test  # deterministic


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.where(np.eye(20, 4) > 0, np.nan, 1.0), "y": np.zeros(20, int)},
     r"'x' in .* must be finite \(row 0 holds NaN or inf\)"),
    ({"x": np.ones((20, 4)), "y": np.full(20, 0.5)}, r"'y' .* must hold integer class labels"),
    ({"x": np.ones((20, 4)), "y": np.zeros(15, int)}, r"'y' .* one label per row \(20; got"),
    ({"x": np.ones((20, 4)), "y": -np.ones(20, int)}, r"'y' .* labels >= 0 \(got -1\)"),
    ({"x": np.ones(20), "y": np.zeros(20, int)}, r"'x' .* must be a 2-D numeric array"),
    ({"x": np.ones((3, 4)), "y": np.zeros(3, int)}, r"'x' .* at least 10 rows"),
    ({"x": np.ones((20, 4)), "y": np.zeros(20, int), "x_test": np.ones((5, 3)),
      "y_test": np.zeros(5, int)}, r"'x_test' .* must have 4 columns like 'x' \(got 3\)"),
    ({"queries": np.ones((20, 12)), "positives": np.ones((20, 6))},
     r"'positives' .* must have 12 columns like 'queries' \(got 6\)"),
])
def test_array_data_is_checked_before_training(tmp_path, arrays, match):
    # before: NaN rows and float labels were taken (metrics on NaN rows), and the rest failed
    # with a bare IndexError or a zero-size array message
    from exporters.data import load_array_data

    with pytest.raises(ValueError, match=match):
        load_array_data(_npz(tmp_path / "data.npz", **arrays))


def test_a_file_that_is_not_an_npz_says_so(tmp_path):
    from exporters.data import load_array_data

    (tmp_path / "data.npz").write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match=r"data.npz is not an .npz archive"):
        load_array_data(tmp_path / "data.npz")
    data = load_array_data(_npz(tmp_path / "good.npz", x=np.ones((20, 4)), y=np.arange(20) % 2))
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 20
    # binary features and labels, integer features: data as before
    for x, y in ((np.eye(20, 4, dtype=bool), np.arange(20) % 2 == 0),
                 (np.ones((20, 4), np.uint8), np.arange(20, dtype=np.uint8) % 3)):
        data = load_array_data(_npz(tmp_path / "more.npz", x=x, y=y))
        assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(ValueError, match=r"must hold arrays 'x' and 'y'"):
        load_array_data(tmp_path / "empty.npz")


def test_a_diverging_fit_raises_before_checkpointing_its_nan_epoch(tmp_path):
    from safetensors.numpy import load_file

    model = build_model({"backbone": "mlp", "in_features": 64, "embed_dim": 16, "hidden": [16],
                         "dims": [8, 16], "num_classes": 10})
    loss = MatryoshkaLoss("cross_entropy", (8, 16))
    trainer = Trainer(model, loss, lr=1e30, epochs=3, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"training diverged: the loss was nan in epoch"):
        trainer.fit(load_digits_data(seed=0))
    for kept in tmp_path.glob("*/model.safetensors"):  # what was saved is finite
        assert all(np.isfinite(array).all() for array in load_file(str(kept)).values())


def test_a_run_cut_short_while_saving_is_not_taken_for_a_run(tmp_path, monkeypatch):
    from exporters.models import load_run, model_config, save_run
    from mrlsearch import Classifier

    model = small_model()
    config = model_config(model, "mlp")

    def fail(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(Classifier, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        save_run(model, config, tmp_path / "run")
    # config.json comes last: without it the directory is not a run, and nothing is torn
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model.safetensors"]
    with pytest.raises(FileNotFoundError, match="No config.json"):
        load_run(tmp_path / "run")
    monkeypatch.undo()
    save_run(model, config, tmp_path / "run")
    loaded, _ = load_run(tmp_path / "run")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)

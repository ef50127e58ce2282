"""A short training run on digits: MRL keeps small prefixes useful at no full-dim cost."""

import pytest

torch = pytest.importorskip("torch")

from exporters import MatryoshkaLoss, Trainer, build_model, evaluate, load_digits_data  # noqa: E402

DIMS = (2, 4, 8, 16, 32, 64)
CHANCE = 0.1
FULL_DIM_GAP = 0.02  # issue target: MRL full-dim top-1 within 2 points of FF


def train(dims, *, efficient=False, epochs=15):
    data = load_digits_data(seed=0)
    torch.manual_seed(0)  # the initial weights: Trainer seeds only from fit on
    model = build_model({"backbone": "mlp", "in_features": 64, "embed_dim": 64, "hidden": [256],
                         "dims": list(dims), "num_classes": 10, "efficient": efficient})
    Trainer(model, MatryoshkaLoss("cross_entropy", dims), lr=3e-3, epochs=epochs, batch_size=64,
            seed=0, progress=False).fit(data)
    return model, data


@pytest.fixture(scope="module")
def results():
    out = {}
    for name, dims, efficient in (("MRL", DIMS, False), ("MRL-E", DIMS, True), ("FF", (64,), False)):
        model, data = train(dims, efficient=efficient)
        out[name] = evaluate(model, data, dims=DIMS)["per_dim"]
    return out


def test_mrl_small_prefixes_beat_chance_and_match_ff_at_full_dim(results, capsys):
    with capsys.disabled():
        for name, per_dim in results.items():
            print(f"\n  {name:6s} linear top-1 per dim: "
                  + ", ".join(f"{m}:{v['linear_top1']:.3f}" for m, v in per_dim.items()), end="")
        print()
    for name in ("MRL", "MRL-E"):
        assert results[name][8]["linear_top1"] > 5 * CHANCE
        assert results[name][64]["linear_top1"] >= results["FF"][64]["linear_top1"] - FULL_DIM_GAP
        # where truncating the FF model collapses, MRL does not
        assert results[name][2]["linear_top1"] > results["FF"][2]["linear_top1"] + 0.2


def test_checkpoint_resume_continues_training(tmp_path):
    data = load_digits_data(seed=0)
    config = {"backbone": "mlp", "in_features": 64, "embed_dim": 16, "hidden": [32],
              "dims": [4, 16], "num_classes": 10}
    model = build_model(config)
    loss = MatryoshkaLoss("cross_entropy", (4, 16))
    Trainer(model, loss, epochs=2, checkpoint_dir=tmp_path, progress=False).fit(data)
    assert (tmp_path / "last" / "model.safetensors").is_file()
    resumed = build_model(config)
    history = Trainer(resumed, loss, epochs=3, checkpoint_dir=tmp_path, progress=False).fit(data)
    assert [h["epoch"] for h in history] == [1, 2, 3]


@pytest.mark.export
def test_encoder_and_heads_chained_with_defaults_reproduce_torch(tmp_path):
    """Issue 15: Encoder(model_dir) + Classifier.load(model_dir), defaults only, give
    torch's per-dim accuracy: the manifest says the heads take the raw embedding."""
    pytest.importorskip("onnxruntime")
    import numpy as np

    from exporters import export_onnx
    from mrlsearch import Classifier, Encoder

    dims = (4, 8, 16, 64)
    torch.manual_seed(0)
    model, data = train(dims, epochs=8)
    want = evaluate(model, data, dims=dims)["per_dim"]
    manifest = export_onnx(model, tmp_path / "digits", data.x_val[:32])
    assert manifest["normalize"] is False and manifest["classifier_input"] == "raw"
    encoder = Encoder(tmp_path / "digits")
    clf = Classifier.load(tmp_path / "digits")  # the model directory, as Encoder takes it
    z = encoder.encode(data.x_test)
    got = {m: float((clf.predict(z, dim=m) == data.y_test).mean()) for m in dims}
    one_row = 1.0 / len(data.y_test)  # float32 ties between onnxruntime and torch, at most
    for m in dims:
        assert abs(got[m] - want[m]["linear_top1"]) <= one_row, (m, got[m], want[m])
    # the normalised output is what used to break the heads: it must not be the default
    normalised = Encoder(tmp_path / "digits", normalize=True).encode(data.x_test)
    assert not np.allclose(normalised, z)
    # and a calibrated cascade on the default output stops early
    clf.calibrate(encoder.encode(data.x_val), data.y_val, max_drop=0.01)
    assert clf.cascade(z).expected_dim < dims[-1]

"""FrozenAdapter starts as the raw model; fit_adapter never returns worse than it (validation)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from exporters import FrozenAdapter, MatryoshkaLoss, PairData, fit_adapter, info_nce  # noqa: E402


def cosines(x):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


@pytest.fixture
def pairs():
    """Queries = positives + noise, in a space where the useful directions are the last ones
    (raw truncation is poor at small prefixes, a learnt rotation fixes that)."""
    rng = np.random.default_rng(0)
    n, d = 1200, 32
    scale = np.linspace(0.2, 2.0, d).astype(np.float32)
    base = rng.standard_normal((n, d)).astype(np.float32) * scale
    noisy = base + 0.7 * rng.standard_normal((n, d)).astype(np.float32)
    return PairData(noisy[:800], base[:800], noisy[800:1000], base[800:1000], noisy[1000:],
                    base[1000:])


@pytest.mark.parametrize("init", ["identity", "orthogonal", "pca"])
@pytest.mark.parametrize("hidden", [0, 16])
def test_step_zero_equals_the_raw_model_at_full_dim(init, hidden):
    torch.manual_seed(0)
    x = np.random.default_rng(1).standard_normal((50, 12)).astype(np.float32)
    adapter = FrozenAdapter(12, hidden=hidden, init=init)
    if init == "pca":
        adapter.init_pca(x)
    with torch.no_grad():
        y = adapter(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(cosines(y), cosines(x), atol=1e-5)
    if init == "identity":
        np.testing.assert_allclose(y, x, atol=1e-6)  # every prefix, not only the full dim


def test_pca_init_orders_variance():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 8)).astype(np.float32) * np.arange(1, 9, dtype=np.float32)
    adapter = FrozenAdapter(8, init="pca").init_pca(x)
    with torch.no_grad():
        y = adapter(torch.as_tensor(x)).numpy()
    energy = (y ** 2).mean(axis=0)
    assert np.all(np.diff(energy) <= 1e-3 * energy[0])
    with pytest.raises(ValueError, match=r"'x' must have shape \(n, 8\)"):
        adapter.init_pca(x[:, :4])


@pytest.mark.parametrize("rows", [5, 400])
def test_pca_init_is_a_rotation_with_few_or_many_rows(rows):
    """Fewer rows than features (full SVD) and more rows (thin SVD: the full one's rows x rows
    U took 32 GB at 63k docstring texts) both give a rotation led by the top principal axis."""
    x = np.random.default_rng(2).standard_normal((rows, 16)).astype(np.float32)
    adapter = FrozenAdapter(16, init="pca").init_pca(x)
    w = adapter.linear.weight.detach().double().numpy()
    np.testing.assert_allclose(w @ w.T, np.eye(16), atol=1e-5)
    normed = x / np.linalg.norm(x, axis=1, keepdims=True)
    top = np.linalg.svd(normed.astype(np.float64), full_matrices=True)[2][0]
    assert abs(float(w[0] @ top)) > 1 - 1e-5  # the first axis is the top principal axis


def test_bad_arguments():
    with pytest.raises(ValueError, match="'init' must be one of identity, orthogonal, pca"):
        FrozenAdapter(8, init="random")
    with pytest.raises(ValueError, match="'epochs' must be a positive int"):
        fit_adapter(PairData(*([np.zeros((4, 8), np.float32)] * 6)), (4, 8), epochs=0)
    with pytest.raises(ValueError, match="must hold 2-D float arrays"):
        fit_adapter(PairData(["a"], ["b"], ["c"], ["d"], ["e"], ["f"]), (4, 8))


def test_symmetric_info_nce_adds_the_reverse_direction():
    torch.manual_seed(0)
    q, p = torch.randn(6, 4), torch.randn(6, 4)
    forward = info_nce(q, p)
    backward = info_nce(p, q)
    assert float(info_nce(q, p, symmetric=True)) == pytest.approx(
        0.5 * float(forward + backward), rel=1e-6)
    loss = MatryoshkaLoss("infonce", (2, 4), symmetric=True)
    assert loss.get_config_dict()["symmetric"] is True


def test_fit_adapter_improves_small_prefixes(pairs):
    _, history = fit_adapter(pairs, (4, 8, 32), batch_size=128, epochs=6, lr=1e-2,
                             init="identity")
    raw, final = history[0]["val"], next(h for h in history if h["kept"])["val"]
    assert history[0]["epoch"] == 0 and len(history) == 7
    assert final[4] > raw[4] + 0.05
    assert final[32] >= raw[32] - 0.005


def test_fit_adapter_keeps_the_raw_model_when_training_only_hurts():
    # MRL-ordered data (raw truncation is already the best order) and training pairs that do
    # not match: every trained epoch is worse on validation, so epoch 0 - the raw model - is
    # what comes back
    rng = np.random.default_rng(0)
    n, d = 1200, 32
    base = (rng.standard_normal((n, d)) * 3 / np.arange(1, d + 1)).astype(np.float32)
    noisy = base + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    mismatched = base[:800][rng.permutation(800)]
    data = PairData(noisy[:800], mismatched, noisy[800:1000], base[800:1000], noisy[1000:],
                    base[1000:])
    model, history = fit_adapter(data, (4, 8, 32), batch_size=128, epochs=2, lr=0.5,
                                 init="identity")
    assert all(np.mean(list(h["val"].values())) < np.mean(list(history[0]["val"].values()))
               for h in history[1:])
    assert [h["kept"] for h in history] == [True, False, False]
    x = torch.as_tensor(data.test_queries)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), data.test_queries, atol=1e-6)

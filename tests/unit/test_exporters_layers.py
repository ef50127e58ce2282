import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from exporters import MatryoshkaLoss, MRLLinear  # noqa: E402
from mrlsearch import DimensionError  # noqa: E402

DIMS = (4, 8, 16)


def test_mrl_e_logits_are_column_prefix_products():
    torch.manual_seed(0)
    head = MRLLinear(16, 5, DIMS, efficient=True)
    z = torch.randn(3, 16)
    weight, bias = head.shared.weight, head.shared.bias
    for m, logits in zip(DIMS, head(z)):
        torch.testing.assert_close(logits, z[:, :m] @ weight[:, :m].T + bias)


@pytest.mark.parametrize("efficient", [True, False])
def test_heads_over_a_wider_embedding_become_the_same_classifier(efficient):
    # an MRL-E head over 32 features with dims up to 16 handed all 32 columns to
    # Classifier.shared, which refused them: training ran, then saving failed
    torch.manual_seed(3)
    head = MRLLinear(32, 5, DIMS, efficient=efficient)
    z = torch.randn(6, 32)
    classifier = head.to_classifier()
    for m, logits in zip(DIMS, head(z)):
        np.testing.assert_allclose(classifier.logits(z.numpy()[:, :16], m),
                                   logits.detach().numpy(), rtol=1e-5, atol=1e-5)


def test_mrl_heads_are_independent():
    torch.manual_seed(1)
    head = MRLLinear(16, 5, DIMS)
    z = torch.randn(3, 16)
    before = [t.detach().clone() for t in head(z)]
    with torch.no_grad():
        head.heads[1].weight.add_(1.0)
    after = head(z)
    torch.testing.assert_close(after[0], before[0])
    torch.testing.assert_close(after[2], before[2])
    assert not torch.allclose(after[1], before[1])
    # a loss at one dim only sends gradients to that dim's head
    F.cross_entropy(head(z)[0], torch.tensor([0, 1, 2])).backward()
    assert head.heads[0].weight.grad is not None
    assert head.heads[1].weight.grad is None and head.heads[2].weight.grad is None


def test_loss_is_weighted_sum_of_per_dim_losses():
    torch.manual_seed(2)
    head = MRLLinear(16, 5, DIMS)
    z, y = torch.randn(6, 16), torch.randint(0, 5, (6,))
    outputs = head(z)
    plain = MatryoshkaLoss("cross_entropy", DIMS)
    expected = sum(F.cross_entropy(o, y) for o in outputs)
    torch.testing.assert_close(plain(outputs, y), expected)
    weighted = MatryoshkaLoss("cross_entropy", DIMS, weights=(1.0, 0.5, 2.0))
    expected = sum(w * F.cross_entropy(o, y) for w, o in zip((1.0, 0.5, 2.0), outputs))
    torch.testing.assert_close(weighted(outputs, y), expected)


def test_infonce_normalises_each_prefix():
    torch.manual_seed(3)
    q, p = torch.randn(8, 16), torch.randn(8, 16)
    loss = MatryoshkaLoss("infonce", DIMS, temperature=0.1)
    per_dim = loss.per_dim((q, p))
    for m, value in zip(DIMS, per_dim):
        sims = F.normalize(q[:, :m], dim=-1) @ F.normalize(p[:, :m], dim=-1).T / 0.1
        torch.testing.assert_close(value, F.cross_entropy(sims, torch.arange(8)))
    # scaling a prefix does not change a cosine loss
    torch.testing.assert_close(loss((q * 3.0, p), None), loss((q, p), None))


def test_wraps_any_callable():
    calls = []

    def base(prefix, target):
        calls.append(prefix.shape[-1])
        return prefix.sum() * 0 + prefix.shape[-1]

    loss = MatryoshkaLoss(base, DIMS)
    assert float(loss(torch.zeros(2, 16), torch.zeros(2))) == sum(DIMS)
    assert calls == list(DIMS)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"base": "mse", "dims": DIMS}, ValueError, "'base' must be 'cross_entropy', 'infonce'"),
        ({"base": "infonce", "dims": (8, 4)}, DimensionError, "'dims' must be strictly increasing"),
        ({"base": "infonce", "dims": DIMS, "weights": (1.0,)}, ValueError,
         r"'weights' must hold one weight per dim \(3\) \(got 1\)"),
        ({"base": "infonce", "dims": DIMS, "temperature": 0}, ValueError, "'temperature' must be a finite number > 0"),
    ],
)
def test_loss_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        MatryoshkaLoss(**kwargs)


def test_head_errors():
    with pytest.raises(DimensionError, match=r"'dims' must not exceed 16"):
        MRLLinear(16, 3, (8, 32))
    with pytest.raises(ValueError, match=r"'z' must have 16 features \(got 8\)"):
        MRLLinear(16, 3, (8, 16))(torch.zeros(2, 8))


def test_embed_returns_numpy_forward_in_eval_mode():
    from exporters import build_model

    torch.manual_seed(4)
    model = build_model({"backbone": "mlp", "in_features": 6, "embed_dim": 8, "hidden": [16],
                         "dims": [4, 8]})
    model.train()
    x = torch.randn(5, 6)
    got = model.embed(x.numpy(), batch_size=2)
    assert model.training  # embed puts the training mode back
    assert model.embed(x.numpy()[:0]).shape == (0, 8)
    from exporters.evaluate import embed_inputs

    np.testing.assert_array_equal(embed_inputs(model, x.numpy(), batch_size=2), got)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(got), model(x))
    assert got.dtype.name == "float32"


@pytest.mark.parametrize("make, error, match", [
    (lambda: MatryoshkaLoss("infonce", DIMS, temperature=float("nan")), ValueError,
     r"'temperature' must be a finite number > 0 \(got nan\)"),
    (lambda: MatryoshkaLoss("infonce", DIMS, temperature=float("inf")), ValueError,
     r"'temperature' must be a finite number > 0"),
    (lambda: MatryoshkaLoss("infonce", DIMS, temperature="0.1"), TypeError,
     r"'temperature' must be a number \(got '0.1'\)"),
    (lambda: MatryoshkaLoss("infonce", DIMS, weights=[1, float("nan"), 1]), ValueError,
     r"'weights' must be finite and non-negative"),
    (lambda: MatryoshkaLoss("infonce", DIMS, weights="ab"), TypeError,
     r"'weights' must be a sequence of numbers"),
    (lambda: MRLLinear(16, -1, DIMS), ValueError, r"'num_classes' must be a positive int"),
    (lambda: MRLLinear(16, 0, DIMS), ValueError, r"'num_classes' must be a positive int"),
    (lambda: MatryoshkaLoss("cross_entropy", (4, 8))((torch.zeros(2, 3), torch.zeros(2, 3))),
     ValueError, r"'target' must be given"),
])
def test_loss_and_head_arguments_that_would_make_nan_or_crash_are_refused(make, error, match):
    # before: NaN temperature or weight gave a NaN loss, 'ab' numpy's float message, a
    # negative class count torch's negative-dimension error, a missing target an AttributeError
    with pytest.raises(error, match=match):
        make()

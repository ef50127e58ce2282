"""The MRL-E head's fused prefix logits (one addmm chain, hand-written backward) against the
straightforward per-dim implementation: same logits, loss and gradients."""

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from exporters import MatryoshkaLoss, MRLLinear, PrefixLogits  # noqa: E402


def _reference(z, weight, bias, dims, y, weights):
    """One matmul and one cross-entropy per dim, in float64."""
    z, weight, bias = z.double(), weight.double(), bias.double()
    return sum(c * F.cross_entropy(z[:, :m] @ weight[:, :m].T + bias, y)
               for c, m in zip(weights, dims))


@pytest.mark.parametrize("in_features, dims, weights", [
    (64, (8, 16, 32, 64), (1.0, 1.0, 1.0, 1.0)),
    (48, (4, 12, 40), (0.5, 2.0, 1.0)),       # last dim < in_features: trailing columns unused
    (32, (32,), (1.0,)),                      # a single dim
])
def test_fused_mrl_e_matches_per_dim_reference(in_features, dims, weights):
    torch.manual_seed(0)
    head = MRLLinear(in_features, 7, dims, efficient=True)
    with torch.no_grad():
        head.shared.bias.normal_()
    z = torch.randn(9, in_features, requires_grad=True)
    y = torch.randint(0, 7, (9,))
    outputs = head(z)
    assert isinstance(outputs, PrefixLogits) and len(outputs) == len(dims)
    for m, logits in zip(dims, outputs):
        expected = z[:, :m] @ head.shared.weight[:, :m].T + head.shared.bias
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    loss = MatryoshkaLoss("cross_entropy", dims, weights=weights)(outputs, y)
    grads = torch.autograd.grad(loss, (z, head.shared.weight, head.shared.bias))

    z64 = z.detach().double().requires_grad_()
    w64 = head.shared.weight.detach().double().requires_grad_()
    b64 = head.shared.bias.detach().double().requires_grad_()
    expected_loss = _reference(z64, w64, b64, dims, y, weights)
    expected_grads = torch.autograd.grad(expected_loss, (z64, w64, b64))
    torch.testing.assert_close(loss.double(), expected_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        assert got.shape == want.shape
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
    if dims[-1] < in_features:  # columns past the last dim get no gradient
        assert torch.all(grads[0][:, dims[-1]:] == 0)
        assert torch.all(grads[1][:, dims[-1]:] == 0)


def test_fused_backward_passes_gradcheck():
    from exporters.layers import _PrefixLogitsFunction

    torch.manual_seed(1)
    z = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z, w, b: _PrefixLogitsFunction.apply(z, w, b, (2, 5, 10)), (z, weight, bias))


def test_autocast_path_gives_the_same_logits():
    torch.manual_seed(2)
    head = MRLLinear(32, 5, (8, 16, 32), efficient=True)
    z = torch.randn(6, 32)
    fused = head(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = head(z)
    assert isinstance(mixed, PrefixLogits)
    for a, b in zip(fused, mixed):
        torch.testing.assert_close(a, b.float(), rtol=0.05, atol=0.05)


def test_loss_with_plain_tuple_equals_loss_with_prefix_logits():
    torch.manual_seed(3)
    head = MRLLinear(16, 4, (4, 16), efficient=True)
    z, y = torch.randn(5, 16), torch.randint(0, 4, (5,))
    outputs = head(z)
    loss = MatryoshkaLoss("cross_entropy", (4, 16))
    torch.testing.assert_close(loss(outputs, y), loss(tuple(t.clone() for t in outputs), y))

"""The blocked full-softmax loss equals the plain PyTorch definition, in value and in both gradients."""

from __future__ import annotations

import pytest
import torch

from driftrec.models import losses
from driftrec.models.sasrec import SASRec, SASRecParams


def _both(n: int, c: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g) * 0.7
    classes = torch.randn(c, d, generator=g) * 0.7
    target = torch.randint(0, c, (n,), generator=g)
    weight = torch.rand(n, generator=g) * 2.0  # unequal weights: the fine-tuning window's are not all 1
    out = []
    for fn in (losses.reference_full_softmax_loss, losses.full_softmax_loss):
        hh, cc = h.clone().requires_grad_(), classes.clone().requires_grad_()
        loss = fn(hh, cc, target, weight)
        (loss * 3.0).backward()  # an upstream gradient other than 1 must scale both gradients
        out.append((loss.detach(), hh.grad, cc.grad))
    return out


@pytest.mark.parametrize("n,c,d", [(700, 9743, 64), (5, 3, 8), (5000, 200, 16)])
def test_blocked_loss_and_gradients_equal_the_reference(n, c, d):
    (ref, ref_h, ref_c), (got, got_h, got_c) = _both(n, c, d, seed=n + c)
    assert losses.block_rows(c) < n or c < 10  # the large case really runs several blocks
    assert float(got) == pytest.approx(float(ref), rel=1e-6)
    for got_g, ref_g in ((got_h, ref_h), (got_c, ref_c)):  # float32 sums in another order: ~1e-7 of the largest
        assert float((got_g - ref_g).abs().max()) <= 1e-5 * float(ref_g.abs().max())
    assert float(ref_c.abs().sum()) > 0


def _is_blocked(loss: torch.Tensor) -> bool:
    return type(loss.grad_fn).__name__.startswith("_BlockedLinearCrossEntropy")


def test_the_reference_where_blocking_does_not_apply():
    """Without gradients, and for half-precision inputs, the reference runs; float64 is blocked and matches it."""
    g = torch.Generator().manual_seed(5)
    h, classes = torch.randn(40, 8, generator=g), torch.randn(30, 8, generator=g)
    target, weight = torch.randint(0, 30, (40,), generator=g), torch.ones(40)
    want = float(losses.reference_full_softmax_loss(h, classes, target, weight))
    with torch.no_grad():
        assert float(losses.full_softmax_loss(h, classes, target, weight)) == pytest.approx(want, rel=1e-6)
    half = losses.full_softmax_loss(h.bfloat16().requires_grad_(), classes.bfloat16(), target, weight)
    assert not _is_blocked(half) and half.dtype == torch.float32
    double = losses.full_softmax_loss(h.double().requires_grad_(), classes.double(), target, weight.double())
    assert _is_blocked(double) and float(double.detach()) == pytest.approx(want, rel=1e-6)
    hh = h.clone().requires_grad_()
    single = losses.full_softmax_loss(hh, classes, target, weight)
    assert _is_blocked(single)
    (grad_h,) = torch.autograd.grad(single, hh, create_graph=True)
    with pytest.raises(RuntimeError):  # its gradients are constants: a second derivative must fail, not be zero
        grad_h.sum().backward()
    with pytest.raises(ValueError, match="class indices"):
        losses.full_softmax_loss(h.clone().requires_grad_(), classes, torch.full_like(target, -1), weight)


def test_block_rows_stay_in_bounds():
    assert losses.block_rows(9743) == (1 << 20) // 9743
    assert losses.block_rows(10_000_000) == losses.MIN_BLOCK_ROWS
    assert losses.block_rows(3) == losses.MAX_BLOCK_ROWS


def test_a_sasrec_step_gets_the_reference_gradients(monkeypatch):
    """The model's loss goes through the blocked path on the CPU; its parameter gradients equal the reference's."""
    torch.manual_seed(3)
    model = SASRec(SASRecParams(n_items=300, n_categories=4, text_dim=12, max_seq_len=8, d_model=16, dropout=0.0))
    model.set_side_info(torch.randn(300, 12).numpy(), torch.ones(300).numpy(), torch.randint(1, 5, (300,)).numpy())
    seq = torch.randint(0, 301, (9, 8))
    target = torch.randint(1, 301, (9, 8))
    weight = (seq > 0).float()
    interest = torch.rand(9, 5)
    grads = []
    for fn in (losses.full_softmax_loss, losses.reference_full_softmax_loss):
        monkeypatch.setattr("driftrec.models.sasrec.full_softmax_loss", fn)
        model.zero_grad()
        loss = model(seq, target, weight, interest)
        assert _is_blocked(loss) == (fn is losses.full_softmax_loss)
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "id_emb.weight" in grads[0]
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6), k

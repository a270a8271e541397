"""Next-item training losses over the tied item vectors: full softmax (two implementations) and sampled softmax.

The full softmax over the catalogue is most of a CPU training step: the (positions x items) logits, their
log-softmax, its backward and the zero-filled gradient are four passes over a matrix of ~250 MB for a batch of
6,400 positions and 10k items, each freshly allocated and page-faulted. :func:`full_softmax_loss` computes the same
loss and gradients a block of rows (~4 MB of logits) at a time and keeps only the gradients of its two inputs (the
idea of fused linear cross-entropy kernels on GPUs): a SASRec step at 9,742 items 2.05x as fast.
:func:`reference_full_softmax_loss` is the plain PyTorch definition the blocked one is tested and benchmarked against
(``benchmarks/bench_loss.py``).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

# Rows of logits per block: about this many floats (4 MB in float32), reused in place block after block.
BLOCK_FLOATS = 1 << 20
MIN_BLOCK_ROWS, MAX_BLOCK_ROWS = 32, 4096


def block_rows(n_classes: int) -> int:
    return max(MIN_BLOCK_ROWS, min(MAX_BLOCK_ROWS, BLOCK_FLOATS // max(n_classes, 1)))


def reference_full_softmax_loss(h: torch.Tensor, classes: torch.Tensor, target: torch.Tensor,
                                weight: torch.Tensor) -> torch.Tensor:
    """``sum_i weight_i * CE(h_i @ classes.T, target_i) / sum_i weight_i`` by the book (targets are 0-based)."""
    ce = F.cross_entropy((h @ classes.T).float(), target, reduction="none")
    return (ce * weight).sum() / weight.sum().clamp(min=1e-9)


class _BlockedLinearCrossEntropy(torch.autograd.Function):
    """The reference loss with both input gradients computed in the forward pass, block by block; backward
    only scales them by the incoming gradient (the loss is a scalar)."""

    @staticmethod
    def forward(ctx, h, classes, target, weight, rows):  # noqa: D102 (autograd's signature)
        scale = weight / weight.sum().clamp(min=1e-9)
        grad_h, grad_c = torch.empty_like(h), torch.zeros_like(classes)
        loss = h.new_zeros((), dtype=torch.float64)
        for start in range(0, h.shape[0], rows):
            end = min(h.shape[0], start + rows)
            hb, tb, sb = h[start:end], target[start:end], scale[start:end]
            at = torch.arange(end - start, device=h.device)
            z = hb @ classes.T
            top = z.amax(1, keepdim=True)
            picked = z[at, tb]
            z.sub_(top).exp_()
            total = z.sum(1, keepdim=True)
            loss += ((total.log() + top).squeeze(1) - picked).mul(sb).sum(dtype=torch.float64)
            z.div_(total)  # softmax: d(CE)/d(logits) = softmax - onehot(target), times the row's share
            z[at, tb] -= 1.0
            z.mul_(sb.unsqueeze(1))
            torch.mm(z, classes, out=grad_h[start:end])
            grad_c.addmm_(z.T, hb)
        ctx.save_for_backward(grad_h, grad_c)
        return loss.to(h.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable  # the saved gradients are constants: no double backward
    def backward(ctx, grad):  # noqa: D102
        grad_h, grad_c = ctx.saved_tensors
        return grad_h * grad, grad_c * grad, None, None, None


def full_softmax_loss(h: torch.Tensor, classes: torch.Tensor, target: torch.Tensor,
                      weight: torch.Tensor) -> torch.Tensor:
    """:func:`reference_full_softmax_loss`, blocked on the CPU (same value and gradients to float rounding); the
    reference on a GPU (one kernel per op is what a GPU wants), for half-precision inputs or under autocast (their
    logits need the reference's float32 softmax), and without gradients (the blocked pass computes them)."""
    blocked = (h.device.type == "cpu" and h.dtype in (torch.float32, torch.float64) and classes.dtype == h.dtype
               and not torch.is_autocast_enabled(h.device.type) and torch.is_grad_enabled()
               and (h.requires_grad or classes.requires_grad))
    if not blocked:
        return reference_full_softmax_loss(h, classes, target, weight)
    if target.numel() and int(target.min()) < 0:  # indexing would wrap around where cross_entropy raises
        raise ValueError(f"targets must be class indices >= 0, got {int(target.min())}")
    return _BlockedLinearCrossEntropy.apply(h, classes, target, weight.to(h.dtype), block_rows(classes.shape[0]))


def sampled_softmax_loss(h: torch.Tensor, items: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                         sampled: int) -> torch.Tensor:
    """Softmax over each position's target plus ``sampled`` uniform negatives shared by the batch (accidental hits
    masked), for catalogues too large for the full one. ``items`` has the padding row 0; ``target`` is 1-based."""
    neg = torch.randint(1, items.shape[0], (sampled,), device=h.device)
    pos_logit = (h * items[target]).sum(-1, keepdim=True)
    neg_logits = h @ items[neg].T
    neg_logits = neg_logits.masked_fill(neg.unsqueeze(0) == target.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos_logit, neg_logits], dim=1).float()
    ce = F.cross_entropy(logits, torch.zeros_like(target), reduction="none")
    return (ce * weight).sum() / weight.sum().clamp(min=1e-9)

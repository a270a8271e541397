"""SASRec's scoring forward (``encode`` in eval mode = ``encode_last``) against the full all-positions forward.

The top-k scorer ranks the catalogue with ``encode``; it must give the user vectors of ``hidden(...)[:, -1]`` (the
forward the model was trained with) while computing the last layer for the last position only. Torch only, random
weights large enough that attention is far from uniform.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from driftrec.models.sasrec import SASRec, SASRecParams

TOL = 1e-5  # float32: the two forwards sum in different orders (observed max abs difference ~5e-7 on |h| ~ 2)


def _model(layers: int, heads: int, seed: int = 0, max_len: int = 20, d: int = 32) -> SASRec:
    torch.manual_seed(seed)
    m = SASRec(SASRecParams(n_items=300, n_categories=4, text_dim=6, max_seq_len=max_len, d_model=d, heads=heads,
                            layers=layers, dropout=0.3, use_text=True))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
        m.id_emb.weight[0].zero_()
    rng = np.random.default_rng(seed)
    m.set_side_info(rng.normal(size=(300, 6)), rng.integers(0, 2, 300), rng.integers(0, 5, 300))
    return m.eval()


def _batch(lengths, max_len: int = 20, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    seq = np.zeros((len(lengths), max_len), np.int64)
    for i, n in enumerate(lengths):
        if n:
            seq[i, max_len - n :] = rng.integers(1, 301, n)
    interest = rng.dirichlet(np.ones(5), len(lengths)).astype(np.float32)
    return torch.as_tensor(seq), torch.as_tensor(interest)


@pytest.mark.parametrize(("layers", "heads"), [(1, 1), (2, 2), (3, 4)])
def test_encode_equals_the_last_row_of_the_full_forward(layers, heads):
    model = _model(layers, heads)
    seq, interest = _batch([0, 1, 2, 7, 19, 20, 20, 5, 13, 3])  # empty, full and everything between
    with torch.no_grad():
        full = model.hidden(seq, interest)[:, -1]
        fast = model.encode(seq, interest)
    assert fast.shape == (10, 32)
    assert full.abs().max() > 1.0  # not a degenerate comparison of near-zero vectors
    torch.testing.assert_close(fast, full, rtol=0, atol=TOL)
    # The scores rank the catalogue the same way: top 20 of each user identical.
    items = model.item_vectors()
    assert torch.equal(torch.topk(fast @ items[1:].T, 20).indices, torch.topk(full @ items[1:].T, 20).indices)


def test_short_histories_drop_the_shared_padding_and_keep_absolute_positions():
    """Every history shorter than 4 items: 16 of the 20 columns are padding for all users and are not computed, but
    the real items keep positions 16..19 (a forward that renumbered them from 0 would differ)."""
    model = _model(2, 2, seed=3)
    seq, interest = _batch([1, 4, 3, 2, 4, 1], seed=4)
    with torch.no_grad():
        full = model.hidden(seq, interest)[:, -1]
        fast = model.encode(seq, interest)
        renumbered = model.hidden(seq[:, -4:], interest)[:, -1]  # the same items at positions 0..3
    torch.testing.assert_close(fast, full, rtol=0, atol=TOL)
    assert (renumbered - full).abs().max() > 100 * TOL


def test_last_layer_runs_the_feed_forward_on_the_last_position_only():
    """The saving itself: the last layer's feed-forward sees one row per user, the earlier layers every kept
    column (the full forward passes every position through both)."""
    model = _model(2, 2, seed=5)
    seq, interest = _batch([20, 3, 9], seed=6)
    shapes: dict[int, tuple] = {}
    hooks = [layer.linear1.register_forward_hook(lambda mod, inp, out, i=i: shapes.__setitem__(i, tuple(inp[0].shape)))
             for i, layer in enumerate(model.encoder.layers)]
    try:
        with torch.no_grad():
            model.encode(seq, interest)
    finally:
        for h in hooks:
            h.remove()
    assert shapes == {0: (3, 20, 32), 1: (3, 1, 32)}


def test_training_mode_keeps_the_full_forward_with_dropout():
    """``encode`` during training is the trained forward (dropout active), not the eval-only shortcut."""
    model = _model(2, 2, seed=7).train()
    seq, interest = _batch([5, 20, 8], seed=8)
    torch.manual_seed(0)
    a = model.encode(seq, interest)
    torch.manual_seed(0)
    b = model.hidden(seq, interest)[:, -1]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.requires_grad  # gradients flow, unlike the no_grad scoring forward

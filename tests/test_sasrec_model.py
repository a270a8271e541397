"""The recommender's torch kernels, without Ray or Spark: masking, losses, growth, checkpoints, ranking metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from driftrec.models.batches import extend_space, interest_matrix, train_batch, valid_batch
from driftrec.models.checkpoint import load_checkpoint, save_checkpoint
from driftrec.models.evaluation import ndcg_at_k, target_ranks
from driftrec.models.sasrec import SASRec, SASRecParams, pad_left


def _space(n=12, text_dim=8, seed=0):
    rng = np.random.default_rng(seed)
    emb = [rng.normal(size=text_dim).astype(np.float32) if i % 4 else None for i in range(n)]
    items = pd.DataFrame({"item_id": np.arange(100, 100 + n), "category": [["a", "b", None][i % 3] for i in range(n)],
                          "embedding": emb})
    return extend_space(np.zeros(0, np.int64), [], items, text_dim), items


def _model(space, **kw):
    torch.manual_seed(0)
    m = SASRec(SASRecParams(n_items=space.n_items, n_categories=len(space.categories), text_dim=space.text_dim,
                            max_seq_len=6, d_model=16, heads=2, layers=1, dropout=0.0, **kw))
    m.set_side_info(space.text, space.has_text, space.item_category)
    return m.eval()


def _rows():
    return pd.DataFrame({
        "item_ids": [[100, 101, 102], [103, 104], [105, 106, 107, 108, 109, 110, 111, 100]],
        "event_ts": [[1, 2, 3], [10, 20], [1, 2, 3, 4, 5, 6, 7, 8]],
        "interest_categories": [["a", "b"], [], ["zzz"]],
        "interest_p": [[0.25, 0.75], [], [1.0]],
    })


def test_space_keeps_old_order_and_marks_text():
    space, items = _space()
    assert list(space.item_ids) == list(range(100, 112)) and space.categories == ["a", "b"]
    assert list(space.has_text) == [0.0 if i % 4 == 0 else 1.0 for i in range(12)]
    grown = extend_space(space.item_ids[::-1], ["b", "a"], pd.concat(
        [items, pd.DataFrame({"item_id": [99], "category": ["c"], "embedding": [None]})]), 8)
    assert list(grown.item_ids) == list(range(111, 99, -1)) + [99]
    assert grown.categories == ["b", "a", "c"] and grown.item_category[-1] == 3


def test_batches_shift_targets_pad_left_and_window_weights():
    space, _ = _space()
    b = train_batch(_rows(), space.index(), space.category_index(), 2, 4, window_start=3)
    assert b["seq"][0].tolist() == [0, 0, 1, 2] and b["target"][0].tolist() == [0, 0, 2, 3]
    assert b["weight"][0].tolist() == [0, 0, 0, 1]  # only the target at t >= 3 counts
    assert b["seq"][2].tolist() == [9, 10, 11, 12] and b["target"][2].tolist() == [10, 11, 12, 1]  # last 4 kept
    np.testing.assert_allclose(b["interest"][0], [0, 0.25, 0.75])
    assert b["interest"][1].sum() == 0 and b["interest"][2].sum() == 0  # unknown category dropped
    v = valid_batch(_rows(), space.index(), space.category_index(), 2, 4)
    assert v["target"].tolist() == [3, 5, 1] and v["seq"][1].tolist() == [0, 0, 0, 4]


def test_one_lookup_per_batch_gives_each_sequence_its_indices():
    from driftrec.models.batches import _indices

    index = pd.Index(np.array([50, 30, 90, 110], dtype=np.int64))
    col = [[30, 50, 70], [], np.array([110]), [90, 90, 1000]]  # 70 and 1000 are not in the space
    got = _indices(col, index)
    assert [g.tolist() for g in got] == [[2, 1, 0], [], [4], [3, 3, 0]]
    assert _indices([], index) == []


@given(st.lists(st.lists(st.floats(0.01, 5), min_size=1, max_size=4), min_size=1, max_size=5))
@settings(max_examples=30, deadline=None)
def test_interest_rows_are_distributions(ps):
    cats = [["a", "b", "c", "d"][: len(p)] for p in ps]
    m = interest_matrix(cats, ps, {"a": 1, "b": 2, "c": 3, "d": 4}, 4)
    np.testing.assert_allclose(m.sum(1), 1.0, rtol=1e-5)
    assert (m >= 0).all() and (m[:, 0] == 0).all()


def test_padding_never_produces_nan_and_future_items_do_not_leak():
    space, _ = _space()
    m = _model(space)
    seq = torch.tensor([[0, 0, 0, 0, 0, 3], [1, 2, 3, 4, 5, 6]])
    interest = torch.zeros(2, 3)
    h = m.hidden(seq, interest)
    assert torch.isfinite(h).all()
    changed = seq.clone()
    changed[1, 5] = 9  # editing the last item must not change earlier positions (causal)
    torch.testing.assert_close(m.hidden(changed, interest)[1, :5], h[1, :5])


@pytest.mark.parametrize("sampled", [0, 5])
def test_losses_train_a_memorisable_pattern(sampled):
    space, _ = _space()
    m = _model(space).train()
    b = train_batch(_rows(), space.index(), space.category_index(), 2, 6)
    t = {k: torch.as_tensor(v) for k, v in b.items()}
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    first = None
    for _ in range(60):
        loss = m(t["seq"], t["target"], t["weight"], t["interest"], sampled)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


def test_grow_keeps_old_scores_and_checkpoint_round_trip_is_exact(tmp_path):
    space, items = _space()
    m = _model(space)
    seq = torch.tensor([[0, 0, 1, 2, 3, 4]])
    interest = torch.tensor([[0.0, 0.5, 0.5]])
    before = m.score(seq, interest)
    more = pd.concat([items, pd.DataFrame({"item_id": [500, 501], "category": ["c", "a"],
                                           "embedding": [np.ones(8, np.float32), None]})])
    space2 = extend_space(space.item_ids, space.categories, more, 8)
    g = m.grow(space2.n_items, len(space2.categories))
    g.set_side_info(space2.text, space2.has_text, space2.item_category)
    g.eval()
    after = g.score(seq, torch.cat([interest, torch.zeros(1, 1)], 1))
    torch.testing.assert_close(after[:, : space.n_items], before)
    assert torch.count_nonzero(g.id_emb.weight[-2:]) == 0  # new items start from text + category only
    loaded, lspace, meta = load_checkpoint(save_checkpoint(tmp_path / "ck", g, space2, {"version": 3}))
    assert meta["version"] == 3 and np.array_equal(lspace.item_ids, space2.item_ids)
    assert lspace.categories == space2.categories
    assert torch.equal(loaded.score(seq, torch.cat([interest, torch.zeros(1, 1)], 1)), after)


def test_ablation_model_has_no_text_parameters():
    space, _ = _space()
    assert _model(space, use_text=False).text_proj is None


def test_full_catalogue_ranks_break_ties_by_index():
    scores = np.array([[1.0, 3.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert target_ranks(scores, np.array([2, 3])).tolist() == [1, 3]
    assert target_ranks(scores, np.array([-1, 0])).tolist() == [4, 0]
    assert ndcg_at_k(np.array([0, 1, 20])) == pytest.approx((1 + 1 / np.log2(3)) / 3)
    assert pad_left([np.array([1, 2, 3])], 2).tolist() == [[2, 3]]

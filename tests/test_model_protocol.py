"""A second model plugs in through the protocol: checkpoints, warm-start growth, the training job's start plan and
the top-k scorer use it unchanged (torch and numpy only, no Spark or Ray)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from driftrec.models.batches import extend_space
from driftrec.models.checkpoint import load_checkpoint, save_checkpoint
from driftrec.models.protocol import (
    SequenceModel,
    load_model,
    model_class,
    model_name,
    model_to_bytes,
    new_model,
    register_model,
)
from tests.conftest import make_conf


@dataclass(frozen=True)
class MeanParams:
    n_items: int
    n_categories: int
    text_dim: int
    max_seq_len: int = 6
    d_model: int = 8
    use_text: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@register_model
class MeanModel(nn.Module):
    """The user vector is the mean of the history's item vectors; item vector = id row + projected text."""

    name = "mean"

    def __init__(self, p: MeanParams):
        super().__init__()
        self.p = p
        self.id_emb = nn.Embedding(p.n_items + 1, p.d_model, padding_idx=0)
        self.text_proj = nn.Linear(p.text_dim, p.d_model, bias=False)
        self.register_buffer("text", torch.zeros(p.n_items + 1, p.text_dim))
        self.register_buffer("has_text", torch.zeros(p.n_items + 1))
        self.register_buffer("item_category", torch.zeros(p.n_items + 1, dtype=torch.long))

    @classmethod
    def from_params(cls, params: dict) -> MeanModel:
        return cls(MeanParams(**params))

    @classmethod
    def params_for(cls, space, tcfg) -> MeanParams:
        return MeanParams(space.n_items, len(space.categories), space.text_dim, tcfg.max_seq_len, tcfg.d_model)

    def warm_startable(self, tcfg, text_dim: int) -> bool:
        return self.p.d_model == tcfg.d_model and self.p.text_dim == text_dim

    def set_side_info(self, text, has_text, item_category) -> None:
        with torch.no_grad():
            self.text[1:] = torch.as_tensor(np.asarray(text, np.float32))
            self.has_text[1:] = torch.as_tensor(np.asarray(has_text, np.float32))
            self.item_category[1:] = torch.as_tensor(np.asarray(item_category, np.int64))

    def side_info(self):
        return self.text[1:].numpy().copy(), self.has_text[1:].numpy().copy(), self.item_category[1:].numpy().copy()

    def item_vectors(self) -> torch.Tensor:
        return self.id_emb.weight + self.has_text.unsqueeze(1) * self.text_proj(self.text)

    def encode(self, seq, interest, items=None) -> torch.Tensor:
        items = self.item_vectors() if items is None else items
        mask = (seq > 0).float().unsqueeze(-1)
        return (items[seq] * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def score(self, seq, interest) -> torch.Tensor:
        items = self.item_vectors()
        return self.encode(seq, interest, items) @ items[1:].T

    def forward(self, seq, target, weight, interest, sampled: int = 0) -> torch.Tensor:
        items = self.item_vectors()
        logits = self.encode(seq, interest, items) @ items[1:].T
        return F.cross_entropy(logits, target[:, -1] - 1)

    def grow(self, n_items: int, n_categories: int) -> MeanModel:
        new = MeanModel(MeanParams(**{**self.p.to_dict(), "n_items": n_items, "n_categories": n_categories}))
        state = new.state_dict()
        for k, v in self.state_dict().items():
            if k == "id_emb.weight":
                state[k].zero_()
            if state[k].shape == v.shape:
                state[k] = v
            else:
                state[k][: v.shape[0]] = v
        new.load_state_dict(state)
        return new


def _items(ids, text_dim=4, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"item_id": ids, "category": ["a" if i % 2 else "b" for i in ids],
                         "embedding": [rng.normal(size=text_dim).astype(np.float32) for _ in ids]})


def _trained(space) -> MeanModel:
    torch.manual_seed(1)
    m = MeanModel(MeanParams(space.n_items, len(space.categories), space.text_dim))
    nn.init.normal_(m.id_emb.weight)
    m.set_side_info(space.text, space.has_text, space.item_category)
    return m.eval()


def test_registry_resolves_the_plugged_in_model_and_names_unknown_ones():
    assert model_class("mean") is MeanModel
    assert model_class("sasrec").name == "sasrec"
    assert isinstance(_trained(extend_space(np.zeros(0, np.int64), [], _items([1, 2]), 4)), SequenceModel)
    # Stored with the weights: an import path every worker process resolves to the same class.
    assert model_class(model_name(MeanModel(MeanParams(2, 1, 4)))) is MeanModel
    with pytest.raises(ValueError, match="unknown model 'nope'.*sasrec"):
        model_class("nope")


def test_checkpoint_round_trip_keeps_the_class_weights_and_space(tmp_path):
    space = extend_space(np.zeros(0, np.int64), [], _items([10, 11, 12]), 4)
    m = _trained(space)
    loaded, lspace, meta = load_checkpoint(save_checkpoint(tmp_path / "ck", m, space, {"version": 2}))
    assert type(loaded) is MeanModel and meta["version"] == 2
    assert torch.equal(loaded.item_vectors(), m.item_vectors())
    np.testing.assert_array_equal(lspace.item_ids, [10, 11, 12])
    np.testing.assert_array_equal(lspace.text, space.text)
    again = load_model(model_name(m), m.p.to_dict(), model_to_bytes(m))
    assert torch.equal(again.item_vectors(), m.item_vectors())


def test_training_start_plan_grows_the_plugged_in_model(tmp_path):
    """plan_start (the training job's core) warm-starts a MeanModel: trained rows kept, new items text-only."""
    from jobs.train import Current, plan_start

    old_space = extend_space(np.zeros(0, np.int64), [], _items([10, 11, 12]), 4)
    old = _trained(old_space)
    conf = make_conf(tmp_path, 'training.model="mean"', "training.d_model=8", "training.max_seq_len=6")
    side = _items([10, 11, 12, 13], seed=0)
    side["embedding"] = [*side["embedding"][:3], np.arange(4, dtype=np.float32)]
    start = plan_start(Current({"version": 4}, old, old_space), side, dt.date(2026, 1, 31), conf)
    assert start.parent == 4 and start.prior_items == 3 and type(start.model) is MeanModel
    np.testing.assert_array_equal(start.space.item_ids, [10, 11, 12, 13])
    with torch.no_grad():
        v = start.model.item_vectors()
        assert torch.allclose(v[:4], old.item_vectors())
        assert torch.allclose(v[4], old.text_proj(torch.arange(4, dtype=torch.float32)))
    # A different configured model class means a cold start, with the reason.
    cold = plan_start(Current({"version": 4}, old, old_space), side, dt.date(2026, 1, 31), make_conf(tmp_path))
    assert cold.model is None and cold.parent is None and "cold start" in cold.reason_cold
    fresh = new_model("mean", start.space, conf.training)
    assert type(fresh) is MeanModel and fresh.p.n_items == 4


def test_topk_scorer_uses_the_plugged_in_model_unchanged():
    from spark_udfs.topk import ScoringAssets, build_model, score_batch

    space = extend_space(np.zeros(0, np.int64), [], _items(list(range(100, 108))), 4)
    m = _trained(space)
    n = space.n_items
    assets = ScoringAssets(
        token="mean-test", item_ids=space.item_ids, model_state=model_to_bytes(m), model_params=m.p.to_dict(),
        model_categories=list(space.categories), markov_categories=["a", "b"], pic=np.full((2, n), 1.0 / n),
        succ_indptr=np.zeros(n + 1, np.int64), succ_indices=np.zeros(0, np.int64), succ_probs=np.zeros(0),
        k=3, blend=0.0, item_term_weight=0.5, recent_items=3, rising_margin=0.05, model_name=model_name(m),
    )
    assert type(build_model(assets)) is MeanModel
    users = pd.DataFrame({
        "user_id": [1, 2], "item_ids": [[100, 103], [105]], "consumed": [[100, 103], [105]],
        "interest_categories": [["a"], ["b"]], "interest_p": [[1.0], [1.0]],
        "q": [[0.5, 0.5], [0.5, 0.5]], "rise": [[0.0, 0.0], [0.0, 0.0]],
    })
    got = score_batch(assets, users, candidates=False)
    with torch.no_grad():
        v = m.item_vectors().numpy().astype(np.float64)
    for uid, hist in [(1, [100, 103]), (2, [105])]:
        u = v[[i - 100 + 1 for i in hist]].mean(0)
        logits = v[1:] @ u
        p = np.exp(logits - logits.max())
        p /= p.sum()  # the model's softmax is over the whole catalogue; consumed items are excluded afterwards
        p[[i - 100 for i in hist]] = -np.inf
        best = np.argsort(-p, kind="stable")[:3]
        rows = got[got["user_id"] == uid].sort_values("rank")
        np.testing.assert_array_equal(rows["item_id"].to_numpy(), space.item_ids[best])
        np.testing.assert_allclose(rows["model_score"].to_numpy(), p[best], rtol=1e-6)

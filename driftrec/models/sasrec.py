"""SASRec-style sequential recommender whose items start from frozen pretrained text vectors.

Item vector = learned id embedding + learned projection of the item's frozen text embedding (when it has text)
+ learned category embedding (when it has a category). An item never seen in training still gets a meaningful
vector from its text and category, which is what lets a nightly warm start add new items without retraining from
scratch (:meth:`SASRec.grow`). The user's interest distribution over categories (from the migration engine) is
projected and added to every position, so the model can condition on where the user is drifting.

Index 0 is padding everywhere (items and categories); real items are 1..n in the order of ``item_ids``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from driftrec.models.batches import pad_left
from driftrec.models.losses import full_softmax_loss, sampled_softmax_loss

if TYPE_CHECKING:
    from driftrec.config import TrainingConfig
    from driftrec.models.batches import ItemSpace

__all__ = ["SASRec", "SASRecParams", "pad_left"]


def _encoder_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, allowed: torch.Tensor, heads: int,
                   last_only: bool) -> torch.Tensor:
    """One pre-norm ``TransformerEncoderLayer`` in eval mode from its own weights, with a (B, 1, Lq, L) "may attend"
    mask; ``last_only``: queries (and the returned rows) are the last position only, keys and values all of them."""
    if not layer.norm_first:
        raise ValueError("encode_last mirrors a pre-norm layer (norm_first=True)")
    B, L, d = x.shape
    hd = d // heads
    attn = layer.self_attn
    y = layer.norm1(x)
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q_in = y[:, -1:] if last_only else y
    q = F.linear(q_in, w[:d], None if b is None else b[:d])
    k = F.linear(y, w[d : 2 * d], None if b is None else b[d : 2 * d])
    v = F.linear(y, w[2 * d :], None if b is None else b[2 * d :])
    lq = q.shape[1]
    q, k, v = (t.reshape(B, t.shape[1], heads, hd).transpose(1, 2) for t in (q, k, v))
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    a = attn.out_proj(a.transpose(1, 2).reshape(B, lq, d))
    x = (x[:, -1:] if last_only else x) + a
    return x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))


@dataclass(frozen=True)
class SASRecParams:
    n_items: int
    n_categories: int
    text_dim: int
    max_seq_len: int = 50
    d_model: int = 64
    heads: int = 2
    layers: int = 2
    dropout: float = 0.2
    use_text: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class SASRec(nn.Module):
    """Implements :class:`driftrec.models.protocol.SequenceModel`."""

    name = "sasrec"
    # Configuration a warm start must share with the current model (dropout may change between nights).
    ARCHITECTURE = ("max_seq_len", "d_model", "heads", "layers", "use_text")

    def __init__(self, p: SASRecParams):
        super().__init__()
        self.p = p
        n, d = p.n_items + 1, p.d_model
        self.id_emb = nn.Embedding(n, d, padding_idx=0)
        nn.init.normal_(self.id_emb.weight, std=0.02)
        with torch.no_grad():
            self.id_emb.weight[0].zero_()
        # Absent in the ablation (random item initialisation): DDP rejects parameters that get no gradient.
        self.text_proj = nn.Linear(p.text_dim, d, bias=False) if p.use_text else None
        self.cat_emb = nn.Embedding(p.n_categories + 1, d, padding_idx=0)
        nn.init.normal_(self.cat_emb.weight, std=0.02)
        self.interest_proj = nn.Linear(p.n_categories + 1, d, bias=False)
        self.pos_emb = nn.Embedding(p.max_seq_len, d)
        layer = nn.TransformerEncoderLayer(d, p.heads, dim_feedforward=2 * d, dropout=p.dropout,
                                           batch_first=True, norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, p.layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(p.dropout)
        # Frozen side information: saved with the model (a checkpoint is self-contained) but never trained.
        self.register_buffer("text", torch.zeros(n, p.text_dim))
        self.register_buffer("has_text", torch.zeros(n))
        self.register_buffer("item_category", torch.zeros(n, dtype=torch.long))

    @classmethod
    def from_params(cls, params: dict) -> SASRec:
        return cls(SASRecParams(**params))

    @classmethod
    def params_for(cls, space: ItemSpace, tcfg: TrainingConfig) -> SASRecParams:
        return SASRecParams(n_items=space.n_items, n_categories=len(space.categories), text_dim=space.text_dim,
                            max_seq_len=tcfg.max_seq_len, d_model=tcfg.d_model, heads=tcfg.heads, layers=tcfg.layers,
                            dropout=tcfg.dropout, use_text=tcfg.use_text)

    def warm_startable(self, tcfg: TrainingConfig, text_dim: int) -> bool:
        return all(getattr(self.p, k) == getattr(tcfg, k) for k in self.ARCHITECTURE) and self.p.text_dim == text_dim

    # -- side information --------------------------------------------------------------------------------------
    def set_side_info(self, text: np.ndarray, has_text: np.ndarray, item_category: np.ndarray) -> None:
        """Rows are items 1..n (no padding row); text rows of items without text are ignored."""
        with torch.no_grad():
            self.text[1:] = torch.from_numpy(np.array(text, dtype=np.float32))
            self.has_text[1:] = torch.from_numpy(np.array(has_text, dtype=np.float32))
            self.item_category[1:] = torch.from_numpy(np.array(item_category, dtype=np.int64))

    def side_info(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.text[1:].numpy().copy(), self.has_text[1:].numpy().copy(), self.item_category[1:].numpy().copy()

    def item_vectors(self) -> torch.Tensor:
        """(n_items + 1, d): the representation every item has, also used as the output layer (tied)."""
        v = self.id_emb.weight + self.cat_emb(self.item_category)
        if self.text_proj is not None:
            v = v + self.has_text.unsqueeze(1) * self.text_proj(self.text)
        return v

    # -- forward -----------------------------------------------------------------------------------------------
    def hidden(self, seq: torch.Tensor, interest: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """seq (B, L) item indices, left-padded with 0; interest (B, n_categories + 1) -> (B, L, d)."""
        B, L = seq.shape
        items = self.item_vectors() if items is None else items
        x = items[seq] * (self.p.d_model**0.5)
        x = x + self.pos_emb(torch.arange(L, device=seq.device)).unsqueeze(0)
        x = x + self.interest_proj(interest).unsqueeze(1)
        x = self.drop(x)
        # Causal, and padded keys hidden; every position may still see itself, so no softmax row is all -inf
        # (a NaN there would spread through the masked zeros of later layers).
        ar = torch.arange(L, device=seq.device)
        future = ar.unsqueeze(0) > ar.unsqueeze(1)  # (L, L): key after query
        blocked = future.unsqueeze(0) | (seq == 0).unsqueeze(1)  # (B, L, L)
        blocked = blocked & ~torch.eye(L, dtype=torch.bool, device=seq.device).unsqueeze(0)
        h = self.encoder(x, mask=blocked.repeat_interleave(self.p.heads, dim=0))
        return self.out_norm(h)

    def encode(self, seq: torch.Tensor, interest: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d): the hidden state at the last position, the user's vector.

        In eval mode this is :meth:`encode_last` (the same vector to float rounding, a fraction of the work);
        in training mode (dropout active) the full :meth:`hidden`."""
        if self.training:
            return self.hidden(seq, interest, items)[:, -1]
        return self.encode_last(seq, interest, items)

    @torch.no_grad()
    def encode_last(self, seq: torch.Tensor, interest: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d): :meth:`hidden`'s last position in eval mode, computing only what that position depends on.

        Two exact savings (the top-k scorer's cost is this forward): the leading columns that are padding for every
        user are dropped (padded keys are masked for real queries, and positions keep their absolute indices), and
        the last layer runs attention for the last query and the feed-forward on the last position alone (its
        other outputs feed nothing). Dropout is ignored: call it on a model in eval mode.
        """
        B, L = seq.shape
        d, heads = self.p.d_model, self.p.heads
        items = self.item_vectors() if items is None else items
        real = (seq != 0).any(0).nonzero()
        start = int(real[0]) if len(real) else L - 1
        seq = seq[:, start:]
        n = L - start
        x = items[seq] * (d**0.5)
        x = x + self.pos_emb(torch.arange(start, L, device=seq.device)).unsqueeze(0)
        x = x + self.interest_proj(interest).unsqueeze(1)
        ar = torch.arange(n, device=seq.device)
        # True = may attend: keys at or before the query and not padding; every query sees itself (as hidden()).
        allowed = ((ar.unsqueeze(0) <= ar.unsqueeze(1)).unsqueeze(0) & (seq != 0).unsqueeze(1)) | torch.eye(
            n, dtype=torch.bool, device=seq.device).unsqueeze(0)
        allowed = allowed.unsqueeze(1)  # (B, 1, n, n): the same mask for every head
        layers = list(self.encoder.layers)
        for i, layer in enumerate(layers):
            last = i == len(layers) - 1
            x = _encoder_layer(layer, x, allowed[:, :, -1:] if last else allowed, heads, last)
        h = x[:, -1]
        if self.encoder.norm is not None:
            h = self.encoder.norm(h)
        return self.out_norm(h)

    def forward(self, seq: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, interest: torch.Tensor,
                sampled: int = 0) -> torch.Tensor:
        """The training loss (DDP syncs gradients through forward): next-item cross-entropy where weight > 0.

        ``sampled == 0``: full softmax over the whole catalogue. Otherwise softmax over the target plus ``sampled``
        uniformly drawn negatives shared by the batch (accidental hits masked), for catalogues too large for it.
        """
        items = self.item_vectors()
        h = self.hidden(seq, interest, items)
        sel = weight > 0
        h, target, weight = h[sel], target[sel], weight[sel]
        if sampled <= 0:
            return full_softmax_loss(h, items[1:], target - 1, weight)  # class k = item index k + 1
        return sampled_softmax_loss(h, items, target, weight, sampled)

    @torch.no_grad()
    def score(self, seq: torch.Tensor, interest: torch.Tensor) -> torch.Tensor:
        """(B, n_items) scores of every item as the next one after the last position; column k is item k + 1."""
        items = self.item_vectors()
        return self.encode(seq, interest, items) @ items[1:].T

    # -- warm start --------------------------------------------------------------------------------------------
    def grow(self, n_items: int, n_categories: int) -> SASRec:
        """A copy with room for more items/categories; new ids start at zero so new items begin from text+category."""
        if n_items < self.p.n_items or n_categories < self.p.n_categories:
            raise ValueError("grow() only adds items and categories")
        new = SASRec(SASRecParams(**{**self.p.to_dict(), "n_items": n_items, "n_categories": n_categories}))
        old = self.state_dict()
        state = new.state_dict()
        for k, v in old.items():
            if k in ("id_emb.weight", "text", "has_text", "item_category"):
                state[k][: v.shape[0]] = v
                if k == "id_emb.weight":
                    state[k][v.shape[0] :] = 0.0
            elif k == "cat_emb.weight":
                state[k][: v.shape[0]] = v
            elif k == "interest_proj.weight":
                state[k].zero_()
                state[k][:, : v.shape[1]] = v
            else:
                state[k] = v
        new.load_state_dict(state)
        return new


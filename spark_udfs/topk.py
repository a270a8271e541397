"""Top-k scoring of users against the whole catalogue inside Spark (``mapInPandas``), model blended with migration.

Per batch of users (one pandas frame of a partition) the scorer computes, as dense matrix products over the
catalogue:

* the model's next-item distribution ``softmax(model scores)`` from the user's recent items and interest state;
* the migration engine's ``p(u, i, t+1) = w * item_term + (1 - w) * category_term``, computed by
  :mod:`driftrec.migration.kernels` (the formula's one home): ``item_term`` is the mean successor probability
  from the last ``recent_items`` items (a sparse row gather), ``category_term = q_u @ P(i|c)`` (one product);
* the blend (:func:`blend_scores`): ``(1 - w) * model + w * migration``, or the log-linear
  ``model^(1 - w) * migration^w``, with ``w`` the migrating users' own weight when the gate is on; consumed items
  are excluded; the top k are kept with ties broken by item id, so a rerun over the same inputs writes the same rows.
  A user without history (cold start) gets migration only: popularity inside the categories their ``q`` names
  (declared, or everyone's).

Nothing per user passes through the driver: the catalogue-sized assets are broadcast once, and each Python worker
builds the model from them once and keeps it for every later batch and task.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from driftrec.migration import kernels

OUTPUT_SCHEMA = (
    "user_id bigint, rank int, item_id bigint, score double, model_score double, migration_score double, "
    "via_item bigint, via_category string, reason_kind string"
)

# Reason kinds, turned into text by the job (which knows the titles).
SUCCESSOR, RISING, CATEGORY, POPULAR_IN, POPULAR = (kernels.SUCCESSOR, kernels.RISING, kernels.CATEGORY,
                                                    kernels.POPULAR_IN, kernels.POPULAR)


@dataclass
class ScoringAssets:
    """Everything a worker needs, aligned to the model's item index (item ``j`` = ``item_ids[j]``)."""

    token: str  # identifies the assets; a worker rebuilds its model only when this changes
    item_ids: np.ndarray  # (n,) int64
    model_state: bytes  # driftrec.models.protocol.model_to_bytes: tensors only, loaded with weights_only=True
    model_params: dict
    model_categories: list[str]  # the model's interest-feature categories
    markov_categories: list[str]  # sorted; the order of ``pic`` rows and of each user's q / rise arrays
    pic: np.ndarray  # (C, n) float64: P(i | c)
    succ_indptr: np.ndarray  # CSR over item indices: successors of item j are indices[indptr[j]:indptr[j+1]]
    succ_indices: np.ndarray
    succ_probs: np.ndarray
    k: int
    blend: float  # weight of the migration score; 0 = model only, 1 = migration only
    item_term_weight: float
    recent_items: int
    rising_margin: float
    recent_decay: float = 1.0  # weight decay**r of the r-th most recent item in the item term
    blend_migrating: float | None = None  # the gate: migrating users' weight (None: ``blend``)
    blend_mode: str = "linear"  # "linear" | "log"
    torch_threads: int = 1
    candidates: object = None  # spark_udfs.candidates.Candidates above topk.candidate_threshold, else None
    meta: dict = field(default_factory=dict)
    model_name: str = "sasrec"  # driftrec.models.protocol.model_class key of the model_state

    @property
    def needs_model(self) -> bool:
        """Whether any user's score reads the model (a migration weight below 1)."""
        return self.blend < 1.0 or (self.blend_migrating is not None and self.blend_migrating < 1.0)

    @cached_property
    def pic32(self) -> np.ndarray:
        """``pic`` in float32, C-contiguous: the full-catalogue scorer's copy, made once per worker."""
        return np.ascontiguousarray(self.pic, dtype=np.float32)

    @cached_property
    def index(self) -> pd.Index:
        """item id -> catalogue index, hashed once per worker instead of once per user."""
        return pd.Index(self.item_ids)


_MODEL_CACHE: dict[str, object] = {}


def build_model(assets: ScoringAssets):
    """The assets' model (any :class:`driftrec.models.protocol.SequenceModel`), built once per Python worker."""
    cached = _MODEL_CACHE.get(assets.token)
    if cached is not None:
        return cached
    import torch

    from driftrec.models.protocol import load_model

    torch.set_num_threads(max(1, assets.torch_threads))
    model = load_model(assets.model_name, assets.model_params, assets.model_state)
    _MODEL_CACHE.clear()
    _MODEL_CACHE[assets.token] = model
    return model


def model_inputs(assets: ScoringAssets, pdf: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(seq, interest)``: the model's (B, max_seq_len) left-padded item indices and (B, n_categories + 1)
    interest features of each user."""
    from driftrec.models.batches import interest_matrix

    max_len = int(assets.model_params["max_seq_len"])
    flat, owner, _ = history_indices(assets, pdf)
    # Each user's known items (index + 1), the last max_len of them right-aligned: pad_left of the kept items.
    keep = flat >= 0
    kept, kept_owner = flat[keep] + 1, owner[keep]
    from_end = np.cumsum(np.bincount(kept_owner, minlength=len(pdf)))[kept_owner] - np.arange(len(kept)) - 1
    sel = from_end < max_len
    seq = np.zeros((len(pdf), max_len), np.int64)
    seq[kept_owner[sel], max_len - 1 - from_end[sel]] = kept[sel]
    cindex = {c: i + 1 for i, c in enumerate(assets.model_categories)}
    interest = interest_matrix(pdf["interest_categories"], pdf["interest_p"], cindex,
                               int(assets.model_params["n_categories"]))
    return seq, interest


def model_hidden(model, assets: ScoringAssets, pdf: pd.DataFrame):
    """``(h, items)``: the model's (B, d) user vectors after each user's history and its (n + 1, d) item vectors
    (row 0 = padding), both float64 torch tensors. The user vectors come from ``model.encode``, which SASRec in eval
    mode computes for the last position only (:meth:`driftrec.models.sasrec.SASRec.encode_last`)."""
    # Logits in float64 from the float32 hidden state and item vectors: the full product and the candidate gather
    # then agree to ~1e-16, so near-ties rank the same way in both (float32 kernels differ by ~1e-7).
    h, items = model_hidden32(model, assets, pdf)
    return h.double(), items.double()


def model_hidden32(model, assets: ScoringAssets, pdf: pd.DataFrame):
    """:func:`model_hidden` in the model's own float32."""
    import torch

    seq, interest = model_inputs(assets, pdf)
    with torch.no_grad():
        items = model.item_vectors()
        return model.encode(torch.as_tensor(seq), torch.as_tensor(interest), items), items


def model_probabilities(model, assets: ScoringAssets, pdf: pd.DataFrame, cols: np.ndarray | None = None,
                        hidden=None) -> np.ndarray:
    """(B, n) float64: softmax of the model's scores after each user's history.

    With ``cols`` (B, M candidate indices, padded with n) only those items are scored: (B, M). Their normaliser is
    exact over the candidates plus, with item clusters, the cluster estimate of the mass outside them
    (:func:`spark_udfs.candidates.rest_log_mass`); without clusters it is the candidates' alone.
    ``hidden``: ``model_hidden``'s result when the caller has it already.
    """
    import torch

    h, items = hidden if hidden is not None else model_hidden(model, assets, pdf)
    n = len(assets.item_ids)
    with torch.no_grad():
        if cols is None:
            return torch.softmax(h @ items[1:].T, dim=1).numpy()
        valid = torch.as_tensor(cols < n)
        rows = items[torch.as_tensor(np.where(cols < n, cols, 0)) + 1]
        logits = torch.einsum("bd,bmd->bm", h, rows).masked_fill(~valid, float("-inf"))
        clusters = getattr(assets.candidates, "clusters", None)
        if clusters is None:
            return torch.softmax(logits, dim=1).numpy()
        from spark_udfs.candidates import rest_log_mass

        rest = torch.as_tensor(rest_log_mass(clusters, h.numpy(), cols, n))
        log_z = torch.logaddexp(torch.logsumexp(logits, dim=1), rest)
        return torch.exp(logits - log_z[:, None]).numpy()


def history_indices(assets: ScoringAssets, pdf: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(flat, owner, lengths)``: every user's history (``item_ids``, oldest first) as catalogue indices (-1 =
    unknown) in one array, the row each entry belongs to, and each row's length; one hash lookup per batch instead
    of one per user."""
    lists = [np.zeros(0, np.int64) if x is None else np.asarray(x, dtype=np.int64) for x in pdf["item_ids"]]
    lengths = np.fromiter((len(x) for x in lists), np.int64, len(lists))
    flat = np.concatenate(lists) if lengths.sum() else np.zeros(0, np.int64)
    return assets.index.get_indexer(flat), np.repeat(np.arange(len(lists)), lengths), lengths


def _positions(row: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where ``items`` sit in the ascending ``row``: ``(positions, found)``."""
    pos = np.searchsorted(row, items)
    found = pos < len(row)
    found[found] = row[pos[found]] == items[found]
    return pos, found


def recent_matrix(assets: ScoringAssets, pdf: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(recent, n_recent)``: (B, L) catalogue indices of each user's last items, most recent first (-1: none or
    unknown), and (B,) the item term's divisor ``min(len(history), recent_items)``."""
    recent = np.full((len(pdf), assets.recent_items), -1, np.int64)
    flat, owner, lengths = history_indices(assets, pdf)
    from_end = np.cumsum(lengths)[owner] - np.arange(len(flat)) - 1  # 0 = the most recent item
    sel = from_end < assets.recent_items
    recent[owner[sel], from_end[sel]] = flat[sel]
    return recent, np.minimum(lengths, assets.recent_items).astype(np.float64)


def migration_terms(assets: ScoringAssets, pdf: pd.DataFrame,
                    cols: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(item_term, category_term, w)``: (B, n), (B, n), (B,); (B, M), (B, M), (B,) over candidates ``cols``.

    The arithmetic is :mod:`driftrec.migration.kernels`'; this only lays the batch out as arrays."""
    q = np.stack([np.asarray(x, dtype=np.float64) for x in pdf["q"]])
    recent, n_recent = recent_matrix(assets, pdf)
    n = len(assets.item_ids)
    item = kernels.item_term(recent, n_recent, assets.succ_indptr, assets.succ_indices, assets.succ_probs, n, cols,
                             assets.recent_decay)
    return item, kernels.category_term(q, assets.pic, cols), kernels.item_weight(n_recent > 0, assets.item_term_weight)


LOG_FLOOR = 1e-300  # log-linear blend: a probability of exactly 0 (an excluded or unknown item) stays the lowest


def blend_scores(model_p: np.ndarray, migration: np.ndarray, weight: np.ndarray, mode: str) -> np.ndarray:
    """The final score from the two distributions with per-user migration weight ``weight`` (B,).

    ``linear``: ``(1 - w) * model + w * migration``. ``log``: ``model^(1 - w) * migration^w``, a product of experts:
    an item ranks high only where neither distribution rules it out (w = 0 or 1 give the ranking of one alone).
    """
    w = np.asarray(weight, dtype=np.float64)[:, None]
    if mode == "linear":
        return (1.0 - w) * model_p + w * migration
    if mode == "log":
        return np.exp((1.0 - w) * np.log(np.maximum(model_p, LOG_FLOOR)) + w * np.log(np.maximum(migration, LOG_FLOOR)))
    raise ValueError(f"unknown blend mode {mode!r}: expected 'linear' or 'log'")


def migrating_flags(pdf: pd.DataFrame) -> np.ndarray:
    """(B,) bool: the ``migrating`` column, a missing flag (no drift row, or no column) read as not migrating."""
    if "migrating" not in pdf.columns:
        return np.zeros(len(pdf), dtype=bool)
    return np.asarray(pdf["migrating"].eq(True).fillna(False), dtype=bool)


def user_weights(assets: ScoringAssets, pdf: pd.DataFrame, known: np.ndarray) -> np.ndarray:
    """(B,) migration weight per user: the gate's for migrating users, the blend's otherwise, 1 without history."""
    w = np.full(len(pdf), float(assets.blend))
    if assets.blend_migrating is not None and "migrating" in pdf.columns:
        migrating = migrating_flags(pdf)
        w = np.where(migrating, float(assets.blend_migrating), w)
    return np.where(known, w, 1.0)


def top_k(scores: np.ndarray, item_ids: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k best scores per row, best first, ties by ascending item id (-inf never chosen).

    ``item_ids`` is (n,) for the whole catalogue or (B, M) per row (candidate columns); -1 pads short rows.
    """
    n = scores.shape[1]
    kk = min(k, n)
    out = np.full((scores.shape[0], kk), -1, dtype=np.int64)
    for u, row in enumerate(scores):
        ids = item_ids if item_ids.ndim == 1 else item_ids[u]
        kth = np.partition(row, n - kk)[n - kk]
        cand = np.flatnonzero(row >= kth)
        cand = cand[np.isfinite(row[cand])]
        order = cand[np.lexsort((ids[cand], -row[cand]))][:kk]
        out[u, : len(order)] = order
    return out


def top_k_rows(score, item_ids: np.ndarray, k: int) -> np.ndarray:
    """:func:`top_k` of a (B, n) torch ``score`` over the whole catalogue: ``torch.topk`` of k + 1, then ties put in
    item-id order. A row whose k-th and (k+1)-th values are equal (a tie across the cut) is redone by :func:`top_k`,
    so the chosen set and order are exactly :func:`top_k`'s, whatever order ``torch.topk`` returns ties in."""
    import torch

    b, n = score.shape
    kk = min(k, n)
    if kk == 0 or b == 0:
        return np.full((b, kk), -1, dtype=np.int64)
    vals, idx = torch.topk(score, min(kk + 1, n), dim=1)
    vals, idx = vals.numpy(), idx.numpy()
    order = np.lexsort((item_ids[idx[:, :kk]], -vals[:, :kk]), axis=-1)
    out = np.take_along_axis(idx[:, :kk], order, axis=1)
    out = np.where(np.isfinite(np.take_along_axis(vals[:, :kk], order, axis=1)), out, -1)
    cut = vals[:, kk - 1]
    redo = np.isfinite(cut) & (vals[:, kk] == cut) if n > kk else np.zeros(b, dtype=bool)
    if redo.any():
        rows = np.flatnonzero(redo)
        out[rows] = top_k(score[torch.as_tensor(rows)].numpy(), item_ids, kk)
    return out


def use_candidates(assets: ScoringAssets, candidates: bool | None) -> bool:
    if candidates and assets.candidates is None:
        raise ValueError("candidate scoring asked for, but the assets carry no candidate lists")
    return assets.candidates is not None if candidates is None else candidates


def candidate_columns(assets: ScoringAssets, pdf: pd.DataFrame,
                      probed: list[np.ndarray] | None = None) -> np.ndarray:
    """(B, M) candidate item indices per user (padded with n), from :mod:`spark_udfs.candidates`."""
    from spark_udfs.candidates import candidate_sets

    recent = [r[r >= 0] for r in recent_matrix(assets, pdf)[0]]
    q = np.stack([np.asarray(x, dtype=np.float64) for x in pdf["q"]])
    rise = np.stack([np.zeros(q.shape[1]) if x is None else np.asarray(x, dtype=np.float64) for x in pdf["rise"]])
    return candidate_sets(assets.candidates, q, rise, recent, assets.succ_indptr, assets.succ_indices,
                          assets.rising_margin, len(assets.item_ids), probed)


def _has_history(pdf: pd.DataFrame) -> np.ndarray:
    return np.array([x is not None and len(x) > 0 for x in pdf["item_ids"]], dtype=bool)


def candidate_plan(assets: ScoringAssets, pdf: pd.DataFrame, model=None, with_model: bool | None = None):
    """``(cols, hidden)``: each user's candidates and, when the model scores, the hidden states of the users with
    history (computed once: they choose the probed clusters and then score the candidates)."""
    from spark_udfs.candidates import probe

    known = _has_history(pdf)
    use_model = (assets.needs_model if with_model is None else with_model) and known.any()
    hidden, probed = None, None
    if use_model:
        model = model if model is not None else build_model(assets)
        hidden = model_hidden(model, assets, pdf[known].reset_index(drop=True))
        clusters = assets.candidates.clusters
        if clusters is not None and assets.candidates.probes > 0:
            chosen = iter(probe(clusters, hidden[0].numpy(), assets.candidates.probes))
            probed = [next(chosen) if k else np.zeros(0, np.int64) for k in known]
    return candidate_columns(assets, pdf, probed), hidden


def score_parts(assets: ScoringAssets, pdf: pd.DataFrame, model=None, cols: np.ndarray | None = None,
                with_model: bool | None = None, hidden=None):
    """``(item_term, category_term, w, migration, model_p, known)`` over the catalogue (or candidates ``cols``).

    A user without history (cold start) has nothing for the model to read: ``model_p`` stays 0 and ``known`` False,
    so the blend gives them migration only, i.e. popularity inside their declared categories (or everyone's).
    ``hidden``: the known users' ``model_hidden``, when :func:`candidate_plan` computed it already.
    """
    item_term, cat_term, w = migration_terms(assets, pdf, cols)
    migration = kernels.migration_score(item_term, cat_term, w)
    known = _has_history(pdf)
    model_p = np.zeros_like(migration)
    if (assets.needs_model if with_model is None else with_model) and known.any():
        model = model if model is not None else build_model(assets)
        model_p[known] = model_probabilities(model, assets, pdf[known].reset_index(drop=True),
                                             None if cols is None else cols[known], hidden)
    return item_term, cat_term, w, migration, model_p, known


def full_scores(assets: ScoringAssets, pdf: pd.DataFrame, model=None):
    """``(score, parts)``: the blended score of every user against the whole catalogue, (B, n) float32 torch.

    The same formula as :func:`score_parts` + :func:`blend_scores`, arranged so a batch makes one catalogue-sized
    matrix and passes over it a few times: the softmax is exponentiated in place and scaled by ``(1 - w) / sum``,
    the category term is added by one ``addmm`` with the per-user weights folded into ``q``, and the item term's few
    successor entries are scatter-added (:func:`kernels.item_term_entries`). ``log`` mode builds the migration
    matrix, takes its log in place (floored at the smallest float32 normal) and adds the model's log-softmax: the
    score is the log of :func:`blend_scores`'s. float32 ranks matched float64's on the benchmark's seed (README,
    top-k throughput; ``tests/test_topk_float32.py``); ``parts`` carries what the chosen items' float64 values need.
    """
    import torch

    if assets.blend_mode not in ("linear", "log"):
        raise ValueError(f"unknown blend mode {assets.blend_mode!r}: expected 'linear' or 'log'")
    b, n = len(pdf), len(assets.item_ids)
    known = _has_history(pdf)
    w = user_weights(assets, pdf, known)
    recent, n_recent = recent_matrix(assets, pdf)
    wi = kernels.item_weight(n_recent > 0, assets.item_term_weight)
    q = np.stack([np.asarray(x, dtype=np.float64) for x in pdf["q"]])
    rows, cols, vals = kernels.item_term_entries(recent, n_recent, assets.succ_indptr, assets.succ_indices,
                                                 assets.succ_probs, assets.recent_decay)
    keys = torch.from_numpy(rows * n + cols)
    pic = torch.from_numpy(assets.pic32)
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    log = assets.blend_mode == "log"
    parts = {"known": known, "w": w, "wi": wi, "recent": recent, "n_recent": n_recent, "q": q, "h": None}
    with torch.no_grad():
        logits = None
        if assets.needs_model and known.any():
            model = model if model is not None else build_model(assets)
            h, items = model_hidden32(model, assets, pdf[known].reset_index(drop=True))
            logits = h @ items[1:].T
            top = logits.amax(dim=1, keepdim=True)
            logits.sub_(top)
            if log:
                log_z = torch.exp(logits).sum(dim=1, keepdim=True).log_()
                logits.sub_(log_z).mul_(f32(1.0 - w[known])[:, None])  # (1 - w) * log softmax
            else:
                z = logits.exp_().sum(dim=1, keepdim=True)
                log_z = torch.log(z)
                logits.mul_(f32(1.0 - w[known])[:, None] / z)  # (1 - w) * softmax
            parts.update(h=h, items=items, lse=top + log_z)
        if log:
            score = torch.mm(f32(q * (1.0 - wi)[:, None]), pic)
            score.view(-1).index_add_(0, keys, f32(vals * wi[rows]))
            score.clamp_(min=float(np.finfo(np.float32).tiny)).log_().mul_(f32(w)[:, None])
        else:
            score = torch.mm(f32(q * (w * (1.0 - wi))[:, None]), pic)
            score.view(-1).index_add_(0, keys, f32(vals * (w * wi)[rows]))
        if logits is not None:
            if known.all():
                score.add_(logits)
            else:
                score[torch.from_numpy(np.flatnonzero(known))] += logits
    return score, parts


def _chosen_parts(assets: ScoringAssets, parts: dict, chosen: np.ndarray):
    """``(item_term, category_term, model_p)`` at the chosen items (B, k; -1 = none), in float64."""
    import torch

    n = len(assets.item_ids)
    targets = np.where(chosen >= 0, chosen, n)
    item = kernels.item_term(parts["recent"], parts["n_recent"], assets.succ_indptr, assets.succ_indices,
                             assets.succ_probs, n, targets, assets.recent_decay)
    cat = kernels.category_term(parts["q"], assets.pic, targets)
    model_p = np.zeros(chosen.shape)
    known = parts["known"]
    if parts["h"] is not None:
        rows = parts["items"][torch.from_numpy(np.where(chosen[known] >= 0, chosen[known], 0) + 1)]
        with torch.no_grad():
            logit = torch.einsum("bd,bkd->bk", parts["h"].double(), rows.double()) - parts["lse"].double()
        model_p[known] = np.where(chosen[known] >= 0, torch.exp(logit).numpy(), 0.0)
    return item, cat, model_p


def _exclude_consumed(assets: ScoringAssets, pdf: pd.DataFrame, score, cols: np.ndarray | None) -> None:
    """Sets each user's consumed items to -inf in ``score`` (numpy, or torch over the whole catalogue)."""
    consumed = [np.zeros(0, np.int64) if x is None else np.asarray(x, dtype=np.int64) for x in pdf["consumed"]]
    lengths = np.fromiter((len(x) for x in consumed), np.int64, len(consumed))
    if not lengths.sum():
        return
    pos = assets.index.get_indexer(np.concatenate(consumed))  # one lookup for the batch
    owner = np.repeat(np.arange(len(consumed)), lengths)
    if cols is None:
        import torch

        n = score.shape[1]
        flat = owner[pos >= 0] * n + pos[pos >= 0]
        if isinstance(score, torch.Tensor):
            score.view(-1)[torch.from_numpy(flat)] = float("-inf")
        else:
            score.reshape(-1)[flat] = -np.inf
        return
    bounds = np.cumsum(lengths)
    for u in np.flatnonzero(lengths):
        p = pos[bounds[u] - lengths[u] : bounds[u]]
        at, found = _positions(cols[u], np.sort(p[p >= 0]))
        score[u, at[found]] = -np.inf


def score_batch(assets: ScoringAssets, pdf: pd.DataFrame, model=None, candidates: bool | None = None) -> pd.DataFrame:
    """One batch of users -> their top-k rows (``OUTPUT_SCHEMA``).

    ``candidates``: rank only each user's candidate set (None: whenever the assets carry candidate lists, i.e. the
    catalogue is above ``topk.candidate_threshold``); False forces the whole catalogue (:func:`full_scores`, float32).
    """
    columns = [c.split()[0] for c in OUTPUT_SCHEMA.split(", ")]
    if len(pdf) == 0:
        return pd.DataFrame(columns=columns)
    n = len(assets.item_ids)
    if not use_candidates(assets, candidates):
        score, parts = full_scores(assets, pdf, model)
        _exclude_consumed(assets, pdf, score, None)
        chosen = top_k_rows(score, assets.item_ids, assets.k)
        valid = chosen >= 0
        import torch

        picked = torch.gather(score, 1, torch.from_numpy(np.maximum(chosen, 0))).double().numpy()
        item_t, cat_t, model_t = _chosen_parts(assets, parts, chosen)
        w, known, recent, q = parts["wi"], parts["known"], parts["recent"], parts["q"]
        score_t = np.exp(picked) if assets.blend_mode == "log" else picked
    else:
        cols, hidden = candidate_plan(assets, pdf, model)
        item_term, cat_term, w, migration, model_p, known = score_parts(assets, pdf, model, cols, hidden=hidden)
        score = blend_scores(model_p, migration, user_weights(assets, pdf, known), assets.blend_mode)
        score[cols >= n] = -np.inf
        _exclude_consumed(assets, pdf, score, cols)
        best = top_k(score, np.append(assets.item_ids, -1)[cols], assets.k)
        valid = best >= 0
        at = np.where(valid, best, 0)
        chosen = np.where(valid, np.take_along_axis(cols, at, axis=1), -1)
        pick = lambda m: np.take_along_axis(m, at, axis=1)  # noqa: E731
        item_t, cat_t, model_t, score_t = pick(item_term), pick(cat_term), pick(model_p), pick(score)
        recent, _ = recent_matrix(assets, pdf)
        q = np.stack([np.asarray(x, dtype=np.float64) for x in pdf["q"]])
    if not valid.any():
        return pd.DataFrame(columns=columns)
    rise = np.stack([np.zeros(q.shape[1]) if x is None else np.asarray(x, dtype=np.float64) for x in pdf["rise"]])
    via_r, via_c, kinds = kernels.reasons(
        item_t, cat_t, w, recent, chosen, q, rise, assets.pic, known, assets.rising_margin,
        assets.succ_indptr, assets.succ_indices, assets.succ_probs,
    )
    migration_t = kernels.migration_score(item_t, cat_t, w)
    # Valid picks are a prefix of each row (top_k fills from the left), so the row-major mask keeps users in batch
    # order and each user's ranks ascending: the rows are built column-wise for the whole batch at once.
    rank = np.broadcast_to(np.arange(1, valid.shape[1] + 1, dtype=np.int32), valid.shape)[valid]
    vr, vc = via_r[valid], via_c[valid]
    via_item = pd.arrays.IntegerArray(np.where(vr >= 0, assets.item_ids[np.maximum(vr, 0)], 0).astype(np.int64),
                                      vr < 0)
    category_names = np.array([*assets.markov_categories, None], dtype=object)  # -1 -> None
    return pd.DataFrame({
        "user_id": np.repeat(pdf["user_id"].to_numpy(dtype=np.int64), valid.sum(axis=1)), "rank": rank,
        "item_id": assets.item_ids[chosen[valid]], "score": score_t[valid],
        "model_score": model_t[valid], "migration_score": migration_t[valid],
        "via_item": via_item, "via_category": category_names[vc], "reason_kind": kinds[valid].astype(object),
    })


def candidate_recall(assets: ScoringAssets, pdf: pd.DataFrame, model=None) -> tuple[float, float]:
    """``(recall, mean candidates per user)``: the share of full-catalogue top-k rows the candidate step keeps."""
    full = score_batch(assets, pdf, model, candidates=False)
    cand = score_batch(assets, pdf, model, candidates=True)
    hits = full.merge(cand, on=["user_id", "item_id"]).shape[0]
    width = float(np.mean(np.sum(candidate_plan(assets, pdf, model)[0] < len(assets.item_ids), axis=1)))
    return (hits / len(full) if len(full) else 1.0), width


def topk_udf(assets_broadcast, users_per_batch: int):
    """The ``mapInPandas`` function: reads the broadcast assets once per worker, scores users in batches."""

    def score_partition(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        assets: ScoringAssets = assets_broadcast.value
        model = build_model(assets) if assets.needs_model else None
        for pdf in frames:
            for start in range(0, len(pdf), users_per_batch):
                out = score_batch(assets, pdf.iloc[start : start + users_per_batch].reset_index(drop=True), model)
                if len(out):
                    yield out

    return score_partition

"""The candidate step for large catalogues: a few hundred to a few thousand items per user instead of all of them.

Above ``topk.candidate_threshold`` items, scoring the whole catalogue per user costs ``O(users x items)``; the scorer
then ranks only the union of

* the successors of the user's recent items (``item_transitions``: what people went on to next),
* the top items of the user's strongest and rising categories (``P(i | c)``, the migration engine's category term),
* the nearest neighbours of the user's recent items in the model's item space (cosine of the item vectors, which
  start from the text embeddings, so a new item without events can be a neighbour),
* the globally most popular items (so every user, cold ones too, has a floor of candidates),
* the model's own best items, found the way an inverted-file index finds them: the model's item vectors are
  clustered (k-means) once on the driver, and each user's hidden state probes the ``probes`` clusters with the
  largest inner product with their centroid (``O(clusters x d)`` per user instead of ``O(items x d)``).

The first two are exactly where the migration score is non-zero beyond the popularity floor; the clusters bring
what the model would rank high elsewhere. The model's softmax needs a normaliser over the whole catalogue: the
candidates give their part exactly, and every cluster contributes ``(members not among the candidates) x
exp(h . centroid)`` for the rest (exact when the candidates cover the catalogue). ``candidate_recall`` measures
what the step still loses against full scoring.

The neighbour lists and the k-means are exact, computed on the driver in blocks (``O(items^2 x d)`` for the
neighbours); past a few hundred thousand items an approximate nearest-neighbour library (e.g. faiss) belongs here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Candidates:
    """Catalogue-sized lists the workers draw candidates from; all entries are item indices, ``-1`` = none."""

    category_top: np.ndarray  # (C, T): items by P(i | c), best first
    neighbours: np.ndarray  # (n, N): nearest items by cosine of the model's item vectors, nearest first
    popular: np.ndarray  # (P,): most popular items
    categories_per_user: int  # strongest categories of q taken per user (rising ones are added to these)
    clusters: ItemClusters | None = None  # k-means of the model's item vectors (None: no model source)
    probes: int = 0  # clusters probed per user


@dataclass
class ItemClusters:
    """k-means of the model's item vectors: an inverted file for the model's best items."""

    centroids: np.ndarray  # (K, d) float64
    assign: np.ndarray  # (n,) cluster of each item
    indptr: np.ndarray  # (K + 1,) CSR: members of cluster c are members[indptr[c]:indptr[c+1]], ascending
    members: np.ndarray

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr)


def item_clusters(vectors: np.ndarray, n_clusters: int, iterations: int = 10, seed: int = 7,
                  sample_per_cluster: int = 256, block: int = 65536) -> ItemClusters:
    """Lloyd's k-means of ``vectors`` (deterministic for a seed), fitted on at most ``sample_per_cluster`` points
    per centroid (as inverted-file indexes do) and then applied to every item."""
    import torch

    x = torch.as_tensor(np.asarray(vectors, dtype=np.float64))
    n = x.shape[0]
    k = max(1, min(n_clusters, n))
    gen = torch.Generator().manual_seed(seed)
    fit = x[torch.randperm(n, generator=gen)[: min(n, k * sample_per_cluster)]]
    centroids = fit[torch.randperm(fit.shape[0], generator=gen)[:k]].clone()

    def nearest(points: torch.Tensor) -> torch.Tensor:
        out = torch.empty(points.shape[0], dtype=torch.int64)
        for lo in range(0, points.shape[0], block):
            p = points[lo : lo + block]
            d = (p * p).sum(1, keepdim=True) - 2 * p @ centroids.T + (centroids * centroids).sum(1)
            out[lo : lo + block] = d.argmin(dim=1)
        return out

    with torch.no_grad():
        for _ in range(iterations):
            a = nearest(fit)
            sums = torch.zeros_like(centroids).index_add_(0, a, fit)
            counts = torch.bincount(a, minlength=k).to(fit.dtype)
            keep = counts > 0  # an empty cluster keeps its centroid
            centroids[keep] = sums[keep] / counts[keep, None]
        assign = nearest(x).numpy()
    order = np.argsort(assign, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=k))])
    return ItemClusters(centroids=centroids.numpy(), assign=assign, indptr=indptr, members=order)


def probe(clusters: ItemClusters, hidden: np.ndarray, probes: int) -> np.ndarray:
    """(B, P) the clusters each hidden state probes: largest ``h . centroid`` first, ties by cluster index."""
    scores = np.asarray(hidden, dtype=np.float64) @ clusters.centroids.T
    p = min(probes, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :p]


def rest_log_mass(clusters: ItemClusters, hidden: np.ndarray, cols: np.ndarray, n: int) -> np.ndarray:
    """(B,) log of the softmax mass outside each user's candidates, estimated per cluster as
    ``(members not among the candidates) x exp(h . centroid)``; ``-inf`` when the candidates cover the catalogue."""
    scores = np.asarray(hidden, dtype=np.float64) @ clusters.centroids.T
    k = len(clusters.centroids)
    out = np.full(len(cols), -np.inf)
    for u, row in enumerate(cols):
        outside = clusters.sizes - np.bincount(clusters.assign[row[row < n]], minlength=k)
        m = outside > 0
        if m.any():
            out[u] = np.logaddexp.reduce(np.log(outside[m]) + scores[u, m])
    return out


def category_top(pic: np.ndarray, per_category: int) -> np.ndarray:
    """(C, T) indices of each category's best items by ``P(i | c)`` (ties by index), ``-1`` past the category."""
    t = min(per_category, pic.shape[1])
    order = np.argsort(-pic, axis=1, kind="stable")[:, :t]
    return np.where(np.take_along_axis(pic, order, axis=1) > 0, order, -1)


def nearest_neighbours(vectors: np.ndarray, per_item: int, block: int = 2048) -> np.ndarray:
    """(n, N) indices of each row's nearest other rows by cosine similarity, computed exactly in row blocks."""
    import torch

    v = torch.nn.functional.normalize(torch.as_tensor(np.asarray(vectors, dtype=np.float32)), dim=1)
    n = v.shape[0]
    k = min(per_item, n - 1)
    out = np.full((n, max(k, 0)), -1, dtype=np.int64)
    if k <= 0:
        return out
    with torch.no_grad():
        for lo in range(0, n, block):
            sims = v[lo : lo + block] @ v.T
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + lo] = -float("inf")  # not its own neighbour
            out[lo : lo + block] = sims.topk(k, dim=1).indices.numpy()
    return out


def candidate_sets(cand: Candidates, q: np.ndarray, rise: np.ndarray, recent: list[np.ndarray],
                   succ_indptr: np.ndarray, succ_indices: np.ndarray, rising_margin: float, n: int,
                   probed: list[np.ndarray] | None = None) -> np.ndarray:
    """(B, M) each user's candidate item indices, ascending, padded with ``n`` (sorts last, never a real item).

    ``q``/``rise`` are (B, C) in the category order of ``cand.category_top``; ``recent[u]`` the user's recent item
    indices (known items only); ``probed[u]`` the clusters of ``cand.clusters`` whose members join the set.
    """
    sets = []
    for u in range(len(recent)):
        cats = np.argsort(-q[u], kind="stable")[: cand.categories_per_user]
        cats = np.union1d(cats[q[u][cats] > 0], np.flatnonzero(rise[u] > rising_margin))
        parts = [cand.popular, cand.category_top[cats].ravel()]
        for r in recent[u]:
            parts.append(succ_indices[succ_indptr[r] : succ_indptr[r + 1]])
            parts.append(cand.neighbours[r])
        if probed is not None and cand.clusters is not None:
            c = cand.clusters
            parts.extend(c.members[c.indptr[p] : c.indptr[p + 1]] for p in probed[u])
        s = np.unique(np.concatenate(parts).astype(np.int64))
        sets.append(s[s >= 0])
    width = max((len(s) for s in sets), default=0)
    out = np.full((len(sets), max(width, 1)), n, dtype=np.int64)
    for u, s in enumerate(sets):
        out[u, : len(s)] = s
    return out

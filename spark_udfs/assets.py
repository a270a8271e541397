"""The scorer's broadcast inputs from the serving model and the migration state: ``build_assets(served, state, conf)``.

Everything catalogue-sized the top-k workers need, aligned to the model's item index: the serialised model (through
:mod:`driftrec.models.protocol`, so any model class), ``P(i | c)``, the item-successor CSR arrays and, above
``topk.candidate_threshold``, the candidate lists. Built once on the driver; the top-k job only reads, calls, writes.
"""

from __future__ import annotations

import logging
import uuid

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from driftrec.config import Config
from driftrec.migration import transitions as tr
from driftrec.migration.scoring import MarkovState, category_item_probs
from driftrec.models.protocol import model_name, model_to_bytes
from driftrec.serving import ServingModel
from spark_udfs.topk import ScoringAssets

log = logging.getLogger("driftrec.topk")


def successor_csr(succ: pd.DataFrame, index: dict, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indptr, indices, probs)`` over catalogue indices from ``from_item, to_item, prob`` rows (others dropped)."""
    succ = succ.assign(r=succ["from_item"].map(index), j=succ["to_item"].map(index))
    succ = succ.dropna(subset=["r", "j"]).sort_values(["r", "j"])
    indptr = np.zeros(n + 1, np.int64)
    np.add.at(indptr, succ["r"].to_numpy(np.int64) + 1, 1)
    return np.cumsum(indptr), succ["j"].to_numpy(np.int64), succ["prob"].to_numpy(np.float64)


def category_matrix(pic_rows, categories: list[str], index: dict, n: int) -> np.ndarray:
    """(C, n) ``P(i | c)`` from ``(item_id, category, pic)`` rows; unknown items and categories are dropped."""
    cindex = {c: i for i, c in enumerate(categories)}
    pic = np.zeros((len(categories), n))
    for r in pic_rows:
        j, c = index.get(int(r["item_id"])), cindex.get(r["category"])
        if j is not None and c is not None:
            pic[c, j] = float(r["pic"])
    return pic


def build_assets(served: ServingModel, state: MarkovState, conf: Config) -> ScoringAssets:
    """The catalogue-sized inputs every worker needs (broadcast once), aligned to the model's item index."""
    t, m = conf.topk, conf.migration
    item_ids = served.space.item_ids
    n = len(item_ids)
    index = {int(v): i for i, v in enumerate(item_ids)}
    categories = sorted({r["category"] for r in tr.category_popularity(state.global_matrix, m.category_smoothing)
                         .select("category").collect()})
    pic = category_matrix(category_item_probs(state, m).collect(), categories, index, n)
    succ = state.item_successors.select("from_item", "to_item", "prob").toPandas()
    indptr, indices, probs = successor_csr(succ, index, n)
    candidates = candidate_lists(served, state, pic, index, conf) if n > t.candidate_threshold else None
    return ScoringAssets(
        token=uuid.uuid4().hex,
        item_ids=item_ids.astype(np.int64),
        model_state=model_to_bytes(served.model),
        model_params=served.model.p.to_dict(),
        model_categories=list(served.space.categories),
        markov_categories=categories,
        pic=pic,
        succ_indptr=indptr,
        succ_indices=indices,
        succ_probs=probs,
        k=t.k,
        blend=t.blend_weight,
        item_term_weight=m.item_term_weight,
        recent_items=m.recent_items,
        recent_decay=m.recent_decay,
        blend_migrating=t.blend_weight_migrating,
        blend_mode=t.blend_mode,
        rising_margin=t.rising_margin,
        torch_threads=t.torch_threads,
        candidates=candidates,
        model_name=model_name(served.model),
    )


def candidate_lists(served: ServingModel, state: MarkovState, pic: np.ndarray, index: dict, conf: Config):
    """The lists the candidate step draws from (``spark_udfs.candidates``), built once on the driver."""
    import torch

    from spark_udfs.candidates import Candidates, category_top, item_clusters, nearest_neighbours

    t = conf.topk
    popular = [
        index[int(r["item_id"])]
        for r in state.item_popularity.orderBy(F.desc("count"), "item_id").limit(t.candidate_popular).collect()
        if int(r["item_id"]) in index
    ]
    with torch.no_grad():
        vectors = served.model.item_vectors()[1:].float().numpy()
    n = pic.shape[1]
    log.info("candidate step on: %d items > topk.candidate_threshold %d", n, t.candidate_threshold)
    clusters = None
    if min(t.blend_weight, 1.0 if t.blend_weight_migrating is None else t.blend_weight_migrating) < 1.0 \
            and t.candidate_probes > 0:
        clusters = item_clusters(vectors, t.candidate_clusters or max(1, round(2 * np.sqrt(n))),
                                 seed=conf.training.seed)
    return Candidates(
        category_top=category_top(pic, t.candidate_category_items),
        neighbours=nearest_neighbours(vectors, t.candidate_neighbours),
        popular=np.asarray(popular, dtype=np.int64),
        categories_per_user=t.candidate_categories,
        clusters=clusters,
        probes=t.candidate_probes,
    )

"""Settings chosen on the validation split: the search's arithmetic, its choice, and the ``tuned_settings`` table.

The nightly serves whatever the latest ``driftrec tune`` chose (:func:`latest`, applied by :func:`with_settings`);
the search itself runs in Spark tasks (:mod:`spark_udfs.tuning`) over the users of a validation split, and every
task returns only sums per combination (:func:`gains` -> ``(segment, stage, combo, gain, users)``), so nothing
collected to the driver grows with users.

Two stages, each a grid scored in one pass:

1. ``engine``: the migration engine alone, over ``tuning.item_term_weights x recent_items x recent_decays``; the
   best NDCG@k over all validation users wins.
2. ``blend``: the model blended with the chosen engine, over ``tuning.blend_modes x blend_weights``; per mode the best
   weight over all users, and with ``tuning.gate_by_drift`` the best weight of the migrating users on their own
   (when at least ``min_segment_users`` of them are judged). The mode with the higher total wins.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from itertools import product

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.config import Config
from driftrec.tables import TUNED_SETTINGS

ENGINE, BLEND, DEFAULT = "engine", "blend", "default"
MIGRATING, STABLE = "migrating", "stable"


@dataclass(frozen=True)
class EngineCombo:
    item_term_weight: float
    recent_items: int
    recent_decay: float

    def settings(self) -> dict:
        return {"migration": {"item_term_weight": self.item_term_weight, "recent_items": self.recent_items,
                              "recent_decay": self.recent_decay}}


@dataclass(frozen=True)
class BlendCombo:
    mode: str
    weight: float


def engine_grid(conf: Config) -> list[EngineCombo]:
    """Every engine combination; a decay is meaningless with one recent item, so that row is tried once."""
    t = conf.tuning
    out = []
    for w, n, d in product(t.item_term_weights, sorted(set(t.recent_items)), t.recent_decays):
        combo = EngineCombo(float(w), int(n), 1.0 if n == 1 else float(d))
        if combo not in out:
            out.append(combo)
    return out


def blend_grid(conf: Config) -> list[BlendCombo]:
    t = conf.tuning
    return [BlendCombo(m, float(w)) for m in dict.fromkeys(t.blend_modes) for w in t.blend_weights]


def default_engine(conf: Config) -> EngineCombo:
    m = conf.migration
    return EngineCombo(m.item_term_weight, m.recent_items, m.recent_decay)


def truth_gains(scores: np.ndarray, truth: np.ndarray, item_ids: np.ndarray, k: int) -> np.ndarray:
    """(B,) NDCG@k of one held-out item per user: ``1 / log2(rank + 2)`` if it ranks in the top k, else 0.

    ``scores`` (B, n) with excluded items at -inf, ``truth`` (B,) catalogue index (-1: not in the catalogue, a
    miss). The rank counts better scores and equal scores of smaller item ids: the tie-break of the top-k job.
    """
    known = truth >= 0
    at = np.where(known, truth, 0)
    s_t = scores[np.arange(len(truth)), at]
    ahead = (scores > s_t[:, None]).sum(axis=1) + ((scores == s_t[:, None]) & (item_ids[None, :] < item_ids[at][:, None])).sum(axis=1)
    hit = known & np.isfinite(s_t) & (ahead < k)
    return np.where(hit, 1.0 / np.log2(ahead + 2.0), 0.0)


@dataclass
class TunedSettings:
    run_id: str
    tuned_at: dt.datetime
    data_through: dt.date
    settings: dict  # section -> {key: value}
    validation_ndcg: float
    default_ndcg: float
    users: int
    search: list[dict] = field(default_factory=list)

    def flat(self) -> dict:
        """``{"section.key": value}``, e.g. for a printed table or an evaluation's ``config_json``."""
        return {f"{s}.{k}": v for s, values in self.settings.items() for k, v in values.items()}


def choose(sums: pd.DataFrame, conf: Config, blends: list[BlendCombo]) -> tuple[dict, float, list[dict]]:
    """From the blend stage's sums ``(segment, combo, gain, users)`` (combo indexes ``blends``): the topk settings,
    their validation NDCG@k over all users, and the search table. The engine is chosen before (:func:`best_engine`)."""
    t = conf.tuning
    by = sums.groupby(["segment", "combo"], as_index=False)[["gain", "users"]].sum()
    total = by.groupby("combo")[["gain", "users"]].sum()
    n_all = int(total["users"].max())
    seg_users = by.groupby("segment")["users"].max().to_dict()
    gate = t.gate_by_drift and seg_users.get(MIGRATING, 0) >= t.min_segment_users and seg_users.get(STABLE, 0) > 0
    best = None
    for mode in dict.fromkeys(c.mode for c in blends):
        ids = [i for i, c in enumerate(blends) if c.mode == mode]
        overall = max(ids, key=lambda i: (total.loc[i, "gain"], -i))
        choice = {"blend_mode": mode, "blend_weight": blends[overall].weight, "blend_weight_migrating": None}
        score = total.loc[overall, "gain"]
        if gate:
            seg = {s: by[by["segment"] == s].set_index("combo")["gain"] for s in (MIGRATING, STABLE)}
            pick = {s: max(ids, key=lambda i, g=seg[s]: (g.get(i, 0.0), -i)) for s in seg}
            gated = sum(seg[s].get(pick[s], 0.0) for s in seg)
            if gated > score:
                choice = {"blend_mode": mode, "blend_weight": blends[pick[STABLE]].weight,
                          "blend_weight_migrating": blends[pick[MIGRATING]].weight}
                score = gated
        if best is None or score > best[1]:
            best = (choice, score)
    search = [{"stage": BLEND, "mode": c.mode, "blend_weight": c.weight,
               "ndcg": float(total.loc[i, "gain"] / max(n_all, 1)),
               **{f"ndcg_{s}": float(by[(by["segment"] == s) & (by["combo"] == i)]["gain"].sum()
                                     / max(seg_users.get(s, 0), 1)) for s in (MIGRATING, STABLE)},
               **{f"users_{s}": int(seg_users.get(s, 0)) for s in (MIGRATING, STABLE)}}
              for i, c in enumerate(blends)]
    return best[0], float(best[1] / max(n_all, 1)), search


def best_engine(sums: pd.DataFrame, engines: list[EngineCombo]) -> tuple[EngineCombo, list[dict]]:
    """The engine stage's winner by NDCG@k over all users (ties: the earlier combination), and its search table."""
    total = sums.groupby("combo")[["gain", "users"]].sum()
    n = max(int(total["users"].max()), 1)
    winner = max(total.index, key=lambda i: (total.loc[i, "gain"], -i))
    search = [{"stage": ENGINE, **vars(e), "ndcg": float(total.loc[i, "gain"] / n) if i in total.index else 0.0}
              for i, e in enumerate(engines)]
    return engines[int(winner)], search


def with_settings(conf: Config, settings: dict) -> Config:
    """``conf`` with tuned values applied section by section (validated like any configuration)."""
    data = conf.model_dump()
    for section, values in settings.items():
        data[section] = {**data[section], **values}
    return Config.model_validate(data)


def latest(spark: SparkSession, conf: Config, through: dt.date | None = None) -> TunedSettings | None:
    """The ``tuned_settings`` row of the latest data (then the latest search), only among searches whose data ended
    on or before ``through`` when given; None when there is none."""
    if not lakehouse.table_exists(spark, conf, TUNED_SETTINGS):
        return None
    rows = lakehouse.read_table(spark, conf, TUNED_SETTINGS)
    if through is not None:
        rows = rows.where(F.col("data_through") <= F.lit(through))
    row = rows.orderBy(F.desc("data_through"), F.desc("tuned_at"), F.desc("run_id")).first()
    if row is None:
        return None
    return TunedSettings(row["run_id"], row["tuned_at"], row["data_through"], json.loads(row["settings_json"]),
                         row["validation_ndcg"], row["default_ndcg"], row["users"], json.loads(row["search_json"]))


def record(spark: SparkSession, conf: Config, tuned: TunedSettings) -> None:
    """Store a search's outcome (a rerun of the same run id replaces its row)."""
    df = spark.createDataFrame(
        [(tuned.tuned_at, tuned.run_id, tuned.data_through, json.dumps(tuned.settings, sort_keys=True),
          float(tuned.validation_ndcg), float(tuned.default_ndcg), int(tuned.users), json.dumps(tuned.search))],
        "tuned_at timestamp, run_id string, data_through date, settings_json string, validation_ndcg double, "
        "default_ndcg double, users long, search_json string",
    )
    lakehouse.merge_upsert(spark, conf, TUNED_SETTINGS, df, update_when="true", metrics=False)

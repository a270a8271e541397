"""A self-contained HTML report of one evaluation run: tables and plots embedded as PNG data URIs (matplotlib).

Next to every system's metrics it shows the best peer (:data:`PEERS`: what users run today) per protocol, segment,
metric and K, and each driftrec system's ratio to it (:func:`versus_best_peer`), the comparison the product answers to.

Plots: NDCG@K and HR@K per system and protocol; the category transition matrix ``P(to | from)`` as a heatmap; the
distribution of drift scores (JS divergence) with the migrating threshold; and, per system, the share of a user's
top K that lies in the user's rising category, for migrating and stable users next to what they actually consumed.
"""

from __future__ import annotations

import base64
import html
import io

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from driftrec.categories import item_categories
from driftrec.evaluation.metrics import METRICS
from driftrec.evaluation.views import category_matrix, latest_drift

# The systems driftrec is measured against; every other system in a run is a driftrec system.
PEERS = ("popular_all_time", "popular_recent", "als", "markov_item", "sasrec_random")


def versus_best_peer(table: pd.DataFrame, peers: tuple[str, ...] = PEERS) -> pd.DataFrame:
    """``(protocol, segment, k, metric, best_peer, best_value, system, value, ratio)``: per ranking metric, the
    peer with the highest value (ties by name) and each non-peer system's ``value / best_value`` (NaN when 0).

    ``table``: the run's rows ``(protocol, system, segment, k, metric, value, ...)``; coverage is not a quality
    metric and is left out. Pure pandas, so the printed table and the HTML report compute it the same way."""
    keys = ["protocol", "segment", "k", "metric"]
    ranked = table[table["metric"].isin(METRICS)]
    peer_rows = ranked[ranked["system"].isin(peers)].sort_values(keys + ["value", "system"],
                                                                 ascending=[True] * 4 + [False, True])
    best = peer_rows.groupby(keys, sort=False).head(1)[keys + ["system", "value"]]
    best = best.rename(columns={"system": "best_peer", "value": "best_value"})
    ours = ranked[~ranked["system"].isin(peers)][keys + ["system", "value"]]
    out = best.merge(ours, on=keys, how="left")
    denom = out["best_value"].where(out["best_value"] > 0)
    out["ratio"] = out["value"] / denom
    cols = keys + ["best_peer", "best_value", "system", "value", "ratio"]
    return out[cols].sort_values(keys + ["system"], na_position="first").reset_index(drop=True)


def peer_table(versus: pd.DataFrame) -> pd.DataFrame:
    """:func:`versus_best_peer`'s rows side by side: one row per (protocol, segment, k, metric), the best peer, its
    value and one ``<system> / best`` column per driftrec system."""
    keys = ["protocol", "segment", "k", "metric"]
    best = versus.drop_duplicates(keys).set_index(keys)[["best_peer", "best_value"]]
    ratios = versus.dropna(subset=["system"])
    if ratios.empty:
        return best
    wide = ratios.pivot_table(index=keys, columns="system", values="ratio", dropna=False)
    wide.columns = [f"{c} / best" for c in wide.columns]
    return best.join(wide)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def rising_share(recs: DataFrame, drift: DataFrame, cats: DataFrame, k: int) -> pd.DataFrame:
    """``(segment, share, users)``: mean share of a user's top ``k`` inside the user's rising category.

    ``cats``: ``(item_id, category, share)``, read once by the caller for every system."""
    inside = (
        recs.where(F.col("rank") <= k).join(drift, "user_id")
        .join(cats, "item_id", "left")
        .groupBy("user_id", "segment")
        .agg((F.sum(F.when(F.col("category") == F.col("rising_category"), F.col("share")).otherwise(0.0))
              / F.countDistinct("item_id")).alias("share"))
    )
    return inside.groupBy("segment").agg(F.avg("share").alias("share"), F.count("user_id").alias("users")).toPandas()


def _bars(table: pd.DataFrame, metric: str, k: int):
    import matplotlib.pyplot as plt

    sel = table[(table["segment"] == "all") & (table["k"] == k) & (table["metric"] == metric)]
    wide = sel.pivot_table(index="system", columns="protocol", values="value")
    fig, ax = plt.subplots(figsize=(7, 3.2))
    wide.plot.bar(ax=ax, rot=30)
    ax.set_ylabel(f"{metric.upper()}@{k}")
    ax.set_title(f"{metric.upper()}@{k} per system (full-catalogue ranking)")
    return _png(fig)


def _heatmap(matrix: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(matrix.to_numpy(), cmap="viridis")
    ax.set_xticks(range(len(matrix.columns)), matrix.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(len(matrix.index)), matrix.index, fontsize=7)
    ax.set_xlabel("to category")
    ax.set_ylabel("from category")
    ax.set_title("Category transition matrix P(to | from)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _png(fig)


def _histogram(scores: pd.Series, threshold: float):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(scores, bins=40)
    ax.axvline(threshold, color="red", linestyle="--", label=f"migrating threshold {threshold}")
    ax.set_xlabel("JS divergence, recent vs long-term profile (bits)")
    ax.set_ylabel("users")
    ax.legend()
    ax.set_title(f"Drift scores ({len(scores)} users)")
    return _png(fig)


def _follow(shares: pd.DataFrame, k: int):
    import matplotlib.pyplot as plt

    wide = shares.pivot_table(index="system", columns="segment", values="share")
    fig, ax = plt.subplots(figsize=(7, 3.2))
    wide.plot.bar(ax=ax, rot=30)
    ax.set_ylabel(f"share of top {k} in rising category")
    ax.set_title("Do recommendations follow the users' rising categories?")
    return _png(fig)


def render_report(spark: SparkSession, run_id: str, dataset: str, table: pd.DataFrame, results: list) -> str:
    import matplotlib

    matplotlib.use("Agg")

    ks = sorted(table["k"].unique())
    k = int(ks[0])
    parts = [f"<h1>driftrec evaluation: {html.escape(dataset)}</h1>",
             f"<p>run <code>{html.escape(run_id)}</code>; every system ranks the full catalogue, consumed items "
             "excluded.</p>"]
    for r in results:
        parts.append(f"<p>{r.protocol}: built through {r.cutoff}, {r.truth_users} users with truth; "
                     f"seconds per step {html.escape(str(r.timings))}</p>")
    for kk in ks:
        overall = table[(table["segment"] == "all") & (table["k"] == kk)]
        wide = overall.pivot_table(index="system", columns=["protocol", "metric"], values="value")
        parts.append(f"<h2>All users, K = {kk}</h2>" + wide.round(4).to_html())
    versus = peer_table(versus_best_peer(table))
    if not versus.empty:
        parts.append("<h2>Against the best peer</h2><p>best peer: the highest of "
                     f"{html.escape(', '.join(PEERS))} for each protocol, segment, K and metric; each driftrec "
                     "system's value divided by it (above 1: driftrec wins).</p>" + versus.round(4).to_html())
    seg = table[(table["segment"] != "all") & (table["k"] == k) & (table["metric"].isin(["ndcg", "hr"]))]
    if not seg.empty:
        parts.append(f"<h2>Migrating vs stable users, K = {k}</h2>"
                     + seg.pivot_table(index="system", columns=["protocol", "segment", "metric"], values="value")
                     .round(4).to_html())
    parts += ["<h2>Metrics per system</h2>", _bars(table, "ndcg", k), _bars(table, "hr", k)]

    first = results[0]
    conf = first.conf
    parts += ["<h2>Category transitions</h2>", _heatmap(category_matrix(spark, conf))]
    drift = latest_drift(spark, conf).cache()
    scores = drift.select("js_divergence").toPandas()["js_divergence"]
    parts += ["<h2>Drift</h2>", _histogram(scores, conf.migration.drift_threshold)]
    cats = item_categories(spark, conf).select("item_id", "category", "share").cache()
    shares = []
    for system, recs in first.recs.items():
        s = rising_share(recs, drift, cats, k)
        s["system"] = system
        shares.append(s)
    truth = getattr(first, "truth", None)
    if truth is not None:  # what the users actually consumed next, as the reference
        s = rising_share(truth.select("user_id", "item_id", F.lit(1).alias("rank")), drift, cats, k)
        s["system"] = "(actual next items)"
        shares.append(s)
    share_table = pd.concat(shares, ignore_index=True)
    parts += [f"<h2>Recommendations and rising categories ({first.protocol})</h2>", _follow(share_table, k),
              share_table.pivot_table(index="system", columns="segment", values="share").round(4).to_html()]
    drift.unpersist()
    cats.unpersist()
    style = "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}" \
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style>"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>driftrec evaluation</title>{style}</head>" \
           f"<body>{''.join(parts)}</body></html>"

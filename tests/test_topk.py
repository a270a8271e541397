"""Nightly top-k: the Spark job against a plain torch + Spark-SQL reference, reruns, new items, bad model versions.

One module scenario runs the real pipeline on generated data: ingest (canonical tables), one migration night, text
embeddings, a small Ray Train model, then the top-k job for the same night.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import functions as F

from driftrec import lakehouse, registry
from driftrec.config import Config, SyntheticConfig
from driftrec.migration.scoring import load_markov_state
from driftrec.models.batches import interest_matrix
from driftrec.models.checkpoint import load_checkpoint
from driftrec.models.sasrec import pad_left
from driftrec.serving import ModelVersionError
from driftrec.synthetic import generate
from driftrec.tables import EVENTS, RECOMMENDATIONS, USER_DRIFT, USER_INTEREST
from tests.conftest import make_conf
from tests.reference_migration import markov_scores
from tests.transfer_helpers import load

pytestmark = pytest.mark.slow  # a real migration night, a Ray Train run and Spark scoring

START = dt.date(2026, 1, 1)
DAY = START + dt.timedelta(days=7)
YESTERDAY = DAY - dt.timedelta(days=1)
K = 10


@dataclass
class Scenario:
    conf: Config
    report: object
    first_rows: pd.DataFrame
    items: pd.DataFrame


def _rows(spark, conf, ds=DAY) -> pd.DataFrame:
    return (
        lakehouse.read_table(spark, conf, RECOMMENDATIONS).where(F.col("ds") == F.lit(ds))
        .orderBy("user_id", "rank").toPandas()
    )


@pytest.fixture(scope="module")
def scenario(spark, tmp_path_factory) -> Scenario:
    import ray

    from jobs.embed_items import EmbedItemsJob
    from jobs.migrate import MigrationJob
    from jobs.topk import TopKJob
    from jobs.train import TrainJob

    root = tmp_path_factory.mktemp("topk") / "lakehouse"
    conf = make_conf(
        root,
        "training.d_model=32", "training.layers=1", "training.max_seq_len=12", "training.epochs=6",
        "training.batch_size=64", "training.lr=0.005",
        f"topk.k={K}", "topk.lookback_days=3", "topk.users_per_batch=16", "topk.partitions=3",
        "migration.drift_threshold=0.0005",
    )
    data = generate(SyntheticConfig(users=120, items=80, categories=4, days=8, seed=5, start_date=START.isoformat()))
    load(spark, conf, data.events, data.items)
    # The nightly order for two nights; the model trained through yesterday serves tonight.
    MigrationJob(spark, conf).run(YESTERDAY)
    EmbedItemsJob(spark, conf).run()
    from ray_trainers.session import ensure_ray

    ensure_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)  # retried local start
    try:
        TrainJob(spark, conf).run(YESTERDAY)
    finally:
        ray.shutdown()
    TopKJob(spark, conf).run(YESTERDAY)
    MigrationJob(spark, conf).run(DAY)
    report = TopKJob(spark, conf).run(DAY)
    return Scenario(conf, report, _rows(spark, conf), data.items)


def _reference(spark, conf: Config, checkpoint: str) -> pd.DataFrame:
    """Plain torch for the model, the Spark reference ``markov_scores`` (tests/reference_migration) for migration,
    numpy for the rest."""
    t = conf.topk
    model, space, _ = load_checkpoint(checkpoint)
    ev = lakehouse.read_table(spark, conf, EVENTS)
    ev = ev.where(F.col("event_date") <= F.lit(DAY))
    since = DAY - dt.timedelta(days=t.lookback_days - 1)
    users = sorted(r[0] for r in ev.where(F.col("event_date") >= F.lit(since)).select("user_id").distinct().collect())
    hist = ev.select("user_id", "item_id", "event_ts", "event_id").toPandas().sort_values(["event_ts", "event_id"])
    by_user = {u: g["item_id"].to_numpy() for u, g in hist.groupby("user_id")}

    index = space.index()
    seqs = [index.get_indexer(by_user[u]) + 1 for u in users]
    seq = pad_left([s[s > 0][-model.p.max_seq_len:] for s in seqs], model.p.max_seq_len)
    inter = lakehouse.read_table(spark, conf, USER_INTEREST).toPandas()
    cats = [list(inter.loc[inter["user_id"] == u, "category"]) for u in users]
    ps = [list(inter.loc[inter["user_id"] == u, "p"]) for u in users]
    interest = interest_matrix(cats, ps, space.category_index(), len(space.categories))
    with torch.no_grad():  # float64 logits, as the scorer computes them
        items = model.item_vectors()
        h = model.hidden(torch.as_tensor(seq), torch.as_tensor(interest), items)[:, -1].double()
        p_model = torch.softmax(h @ items[1:].double().T, 1).numpy()

    state = load_markov_state(spark, conf, DAY)
    cand = spark.createDataFrame([(u, int(i)) for u in users for i in space.item_ids], "user_id bigint, item_id bigint")
    mk = markov_scores(cand, ev.select("user_id", "item_id", "event_ts"), state, conf.migration,
                       conf.topk.rising_margin).toPandas()
    migration = mk.pivot(index="user_id", columns="item_id", values="score").reindex(index=users,
                                                                                       columns=space.item_ids)
    score = (1 - t.blend_weight) * p_model + t.blend_weight * migration.to_numpy()
    rows = []
    for u_i, u in enumerate(users):
        s = score[u_i].copy()
        s[index.get_indexer(np.unique(by_user[u]))] = -np.inf
        order = sorted(range(len(s)), key=lambda j: (-s[j], space.item_ids[j]))[:K]
        rows += [(u, r + 1, int(space.item_ids[j]), float(s[j])) for r, j in enumerate(order)]
    return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"])


def test_topk_equals_a_plain_torch_reference(spark, scenario):
    s = scenario
    got = s.first_rows
    assert s.report.users == got["user_id"].nunique() > 20
    assert len(got) == s.report.rows == s.report.users * K
    assert all(ranks == list(range(1, K + 1)) for ranks in got.groupby("user_id")["rank"].apply(list))
    assert s.report.new_items == 0
    ref = _reference(spark, s.conf, registry.current(spark, s.conf, s.conf.training.model_name)["checkpoint"])
    assert list(ref["user_id"]) == list(got["user_id"])
    # Users the migration state has not absorbed (their events predate the first migrated night) get an interest
    # inferred from their items' categories, which the reference markov_scores does not do: compared apart below.
    stateful = set(lakehouse.read_table(spark, s.conf, USER_INTEREST).select("user_id").distinct().toPandas()["user_id"])
    same, ref_s = got[got["user_id"].isin(stateful)], ref[ref["user_id"].isin(stateful)]
    assert ref_s["user_id"].nunique() > 20
    assert list(ref_s["item_id"]) == list(same["item_id"])  # same items, same order (ties by item id)
    np.testing.assert_allclose(same["score"], ref_s["score"], rtol=1e-5, atol=1e-9)
    assert (got["model_version"] == s.report.model_version).all()


def test_consumed_items_are_excluded_and_reasons_are_sentences(spark, scenario):
    s = scenario
    ev = lakehouse.read_table(spark, s.conf, EVENTS)
    seen = ev.where(F.col("event_date") <= F.lit(DAY)).select("user_id", "item_id").distinct().toPandas()
    clash = s.first_rows.merge(seen, on=["user_id", "item_id"])
    assert clash.empty
    kinds = s.first_rows["reason"]
    assert kinds.str.startswith(("people who watched ", "your interest in ", "you often watch ", "popular")).all()
    assert kinds.str.startswith("people who watched ").any()
    titles = set(s.items["title"])
    watched = kinds[kinds.str.startswith("people who watched ")].str.removeprefix("people who watched ")
    assert all(w.removesuffix(" next watched this") in titles for w in watched)


@pytest.mark.heavy  # a second top-k job of the night
def test_rerun_replaces_the_night_byte_for_byte(spark, scenario):
    from jobs.topk import TopKJob

    s = scenario
    TopKJob(spark, s.conf).run(DAY)
    again = _rows(spark, s.conf)
    pd.testing.assert_frame_equal(again, s.first_rows)
    tonight = lakehouse.read_table(spark, s.conf, RECOMMENDATIONS).where(F.col("ds") == F.lit(DAY))
    assert tonight.count() == tonight.select("user_id", "rank").distinct().count() == len(s.first_rows)
    assert _rows(spark, s.conf, YESTERDAY)["user_id"].nunique() > 0  # the other night is untouched


def test_bad_model_version_fails_before_anything_is_written(spark, scenario, tmp_path):
    from jobs.topk import TopKJob

    s = scenario
    version_before = lakehouse.table_version(spark, s.conf, RECOMMENDATIONS)
    missing = s.conf.model_copy(update={"topk": s.conf.topk.model_copy(update={"model_version": 999})})
    with pytest.raises(ModelVersionError, match="model version 999 .* is not in model_registry"):
        TopKJob(spark, missing).run(DAY)

    broken = Path(tmp_path / "broken")
    broken.mkdir()
    (broken / "meta.json").write_text("{}")
    (broken / "model.pt").write_bytes(b"not a checkpoint")
    registry.record(spark, s.conf, version=50, model_name=s.conf.training.model_name, trained_through=DAY,
                    parent_version=None, config={}, metrics={"ndcg_at_10": 0.0}, checkpoint=str(broken),
                    decision=registry.Decision(False, "test: a corrupt checkpoint"))
    corrupt = s.conf.model_copy(update={"topk": s.conf.topk.model_copy(update={"model_version": 50})})
    with pytest.raises(ModelVersionError, match="model v50: cannot load checkpoint"):
        TopKJob(spark, corrupt).run(DAY)
    assert lakehouse.table_version(spark, s.conf, RECOMMENDATIONS) == version_before
    pd.testing.assert_frame_equal(_rows(spark, s.conf), s.first_rows)


def test_new_item_is_scored_through_its_text(spark, scenario):
    from jobs.embed_items import EmbedItemsJob
    from jobs.topk import TopKJob

    s = scenario
    template = s.items.iloc[[0]].copy()
    template["item_id"] = 10_000
    template["title"] = template["title"].iloc[0] + " (new edition)"
    load(spark, s.conf, pd.DataFrame(columns=["user_id", "item_id", "event_type", "timestamp", "weight"]), template)
    EmbedItemsJob(spark, s.conf).run()
    job = TopKJob(spark, s.conf)
    rows, served, _ = job.recommendations(DAY)
    assert served.new_items == 1 and served.space.item_ids[-1] == 10_000
    assert served.space.has_text[-1] == 1.0
    vec = served.model.item_vectors()[-1].detach()
    twin = served.model.item_vectors()[1 + served.space.index().get_loc(int(s.items.iloc[0]["item_id"]))].detach()
    # Same text but for two words, same category: the new item's vector points the way its twin's does.
    assert torch.nn.functional.cosine_similarity(vec, twin, dim=0) > 0.3
    got = rows.toPandas()
    assert len(got) == s.report.rows and got["score"].notna().all()


def test_warehouse_queries_through_spark_sql_and_a_non_spark_reader(spark, scenario):
    import pyarrow as pa
    from deltalake import DeltaTable, QueryBuilder

    from driftrec.warehouse import QUERIES, TABLES, render, spark_tables

    s = scenario
    user = int(s.first_rows["user_id"].iloc[0])
    params = {"ds": DAY, "yesterday": YESTERDAY, "user_id": user}
    qb = QueryBuilder()
    for t in TABLES:
        qb.register(t, DeltaTable(s.conf.table_path(t)))
    results = {}
    for name in QUERIES:
        by_name = spark.sql(render(name, spark_tables(s.conf), **params)).toPandas()
        by_path = pa.table(qb.execute(render(name, {t: t for t in TABLES}, **params)).read_all()).to_pandas()
        assert len(by_name) > 0, name
        assert list(by_path.columns) == list(by_name.columns), name
        pd.testing.assert_frame_equal(by_path.reset_index(drop=True), by_name.reset_index(drop=True),
                                      check_dtype=False, check_exact=False, rtol=1e-9)
        results[name] = by_name

    mine = s.first_rows[s.first_rows["user_id"] == user]
    assert list(results["user_list"]["item_id"]) == list(mine["item_id"])
    assert list(results["user_list"]["rank"]) == list(range(1, K + 1))
    changes = results["list_changes"]
    both = set(_rows(spark, s.conf, YESTERDAY)["user_id"]) & set(s.first_rows["user_id"])
    per_user = changes[changes["user_id"].isin(both)].groupby(["user_id", "change"]).size().unstack(fill_value=0)
    assert ((per_user.get("stayed", 0) + per_user.get("entered", 0)) == K).all()
    assert ((per_user.get("stayed", 0) + per_user.get("left", 0)) == K).all()
    drift = lakehouse.read_table(spark, s.conf, USER_DRIFT)
    migrating = drift.where((F.col("ds") == F.lit(DAY)) & F.col("migrating")).count()
    assert results["migration_targets"]["users"].sum() == migrating > 0


def test_cold_start_users_get_popular_items_of_their_declared_categories(spark, scenario, tmp_path):
    from jobs.topk import TopKJob

    s = scenario
    cats = sorted({c for cs in s.items["categories"] for c in cs})
    chosen = cats[0]
    path = str(tmp_path / "signups")
    spark.createDataFrame([(99_999, [chosen]), (99_998, [])], "user_id bigint, categories array<string>") \
        .write.format("delta").save(path)
    conf = s.conf.model_copy(update={"topk": s.conf.topk.model_copy(update={"extra_users": path})})
    rows, _, n_users = TopKJob(spark, conf).recommendations(DAY)
    got = rows.where(F.col("user_id").isin(99_999, 99_998)).orderBy("user_id", "rank").toPandas()
    assert n_users == s.report.users + 2
    declared = got[got["user_id"] == 99_999]
    assert list(declared["rank"]) == list(range(1, K + 1))
    in_cat = set(s.items.loc[[chosen in cs for cs in s.items["categories"]], "item_id"])
    assert set(declared["item_id"]) <= in_cat  # only the declared category
    assert (declared["reason"] == f"popular in {chosen}").all()
    # Inside the category, the order is by popularity (plain event counts: migration.item_half_life_days is None).
    pop = (
        lakehouse.read_table(spark, s.conf, EVENTS).where(F.col("event_date") <= F.lit(DAY))
        .where(F.col("item_id").isin([int(i) for i in in_cat])).groupBy("item_id").count().toPandas()
    )
    assert int(declared["item_id"].iloc[0]) in set(pop.nlargest(3, "count")["item_id"])
    anyone = got[got["user_id"] == 99_998]
    assert len(anyone) == K and anyone["reason"].str.startswith("popular").all()
    # The declared user's rows do not depend on the model: migration only.
    assert declared["score"].is_monotonic_decreasing


def _topk_conf(conf: Config, **update) -> Config:
    return conf.model_copy(update={"topk": conf.topk.model_copy(update=update)})


@pytest.mark.heavy  # two more scoring runs
def test_candidate_step_covering_the_catalogue_equals_full_scoring(spark, scenario):
    """Candidates that hold every item must give the full-catalogue rows exactly, through the Spark job."""
    from jobs.topk import TopKJob

    from spark_udfs.topk import candidate_plan

    s = scenario
    conf = _topk_conf(s.conf, candidate_threshold=0, candidate_categories=10, candidate_category_items=1_000,
                      candidate_neighbours=1_000, candidate_popular=1_000)
    job = TopKJob(spark, conf)
    prep = job.prepare(DAY)
    users = prep.users.orderBy("user_id").toPandas()
    n = len(prep.assets.item_ids)
    # The model's softmax is taken over the candidates, so only a user whose set is the whole catalogue must match
    # full scoring exactly; with these sizes that is nearly everyone.
    full = set(users["user_id"][(candidate_plan(prep.assets, users)[0] < n).sum(axis=1) == n])
    assert len(full) >= 0.9 * len(users)
    rows, _, _ = job.recommendations(DAY)
    got = rows.orderBy("user_id", "rank").toPandas()
    # Full scoring of the lakehouse as it is now (earlier tests add items), not the scenario's first rows.
    fresh = TopKJob(spark, s.conf).recommendations(DAY)[0].orderBy("user_id", "rank").toPandas()
    got, want = got[got["user_id"].isin(full)], fresh[fresh["user_id"].isin(full)]
    assert list(got["user_id"]) == list(want["user_id"]) and list(got["rank"]) == list(want["rank"])
    # Rank by rank the scores agree to 1e-5 (the gathered and the full matrix product may round differently in the
    # last bits: a near-tie may swap two items). The ~6e-7 differences once seen here came from comparing with the
    # scenario's first rows after an earlier test had added an item, not from the candidate path.
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5)
    swapped = 0
    for (_, g), (_, w) in zip(got.groupby("user_id"), want.groupby("user_id"), strict=True):
        if list(g["item_id"]) != list(w["item_id"]):
            swapped += 1
            diff = g["item_id"].to_numpy() != w["item_id"].to_numpy()
            np.testing.assert_allclose(g["score"].to_numpy()[diff], w["score"].to_numpy()[diff], rtol=1e-5)
            assert set(g["item_id"]) == set(w["item_id"]) or np.isclose(g["score"].iloc[-1], w["score"].iloc[-1],
                                                                        rtol=1e-5)
    assert swapped <= 0.1 * len(full)
    same = got.merge(want, on=["user_id", "item_id"], suffixes=("", "_full"))
    assert (same["reason"] == same["reason_full"]).all()


@pytest.mark.heavy  # two more candidate preparations
def test_candidate_step_recall_against_full_scoring(spark, scenario):
    """Small candidate sets: every row comes from the user's set, and most full-catalogue rows survive."""
    from jobs.topk import TopKJob
    from spark_udfs.topk import candidate_plan, candidate_recall, score_batch

    s = scenario
    conf = _topk_conf(s.conf, candidate_threshold=0, candidate_categories=1, candidate_category_items=8,
                      candidate_neighbours=5, candidate_popular=5, candidate_probes=0)
    prep = TopKJob(spark, conf).prepare(DAY)
    assert prep.assets.candidates.clusters is None  # no probes: no model source
    assert prep.assets.candidates is not None
    users = prep.users.orderBy("user_id").toPandas()
    cols = candidate_plan(prep.assets, users)[0]
    n = len(prep.assets.item_ids)
    width = (cols < n).sum(axis=1)
    assert width.max() < n  # a real reduction: nobody is ranked over the whole catalogue
    got = score_batch(prep.assets, users, candidates=True)
    for u, g in got.groupby("user_id"):
        allowed = set(prep.assets.item_ids[cols[users.index[users["user_id"] == u][0]]
                                            [cols[users.index[users["user_id"] == u][0]] < n]])
        assert set(g["item_id"]) <= allowed
    recall, mean_width = candidate_recall(prep.assets, users)
    assert mean_width == pytest.approx(width.mean())
    # The sets hold the successors and the strongest category's top items, where the blend puts its weight.
    assert 0.6 <= recall < 1.0

    # The model's own source: the members of the 2 item clusters nearest each user's hidden state join the sets.
    probed = TopKJob(spark, _topk_conf(conf, candidate_probes=2, candidate_clusters=16)).prepare(DAY).assets
    assert len(probed.candidates.clusters.centroids) == 16
    wider = candidate_plan(probed, users)[0]
    for u in range(len(users)):  # every earlier candidate is still there
        assert set(cols[u][cols[u] < n]) <= set(wider[u][wider[u] < n])
    recall_probed, _ = candidate_recall(probed, users)
    assert recall_probed >= recall


def test_inferred_interest_follows_the_categories_of_a_new_users_items(spark):
    from jobs.topk import inferred_interest

    events = spark.createDataFrame([(1, 10), (1, 11), (1, 12), (2, 13)], "user_id bigint, item_id bigint")
    item_cats = spark.createDataFrame(
        [(10, "Drama", 1.0), (11, "Drama", 0.5), (11, "Comedy", 0.5), (12, "Horror", 1.0), (13, "Other", 1.0)],
        "item_id bigint, category string, share double",
    )
    got = {r["user_id"]: r["q_inferred"] for r in inferred_interest(events, item_cats, ["Comedy", "Drama"]).collect()}
    # User 1: Drama 1.5, Comedy 0.5 of the known categories (Horror is not one); user 2 has none, so no row.
    assert got == {1: pytest.approx([0.25, 0.75])}

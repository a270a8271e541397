"""Synthetic interaction data with a known ground truth, so tests can check that estimators recover it.

Generative model (everything drawn from ``SyntheticConfig.seed``):

* ``K`` categories with readable names and a vocabulary each; every item has exactly one category, and its title
  and text are built mostly from that category's words (text embeddings carry the category signal). Popularity
  within a category is Zipf-like.
* A true category transition matrix ``T``: diagonal uniform in ``[stickiness_min, stickiness_max]``, the rest of
  each row Dirichlet(1) scaled to ``1 - diagonal``.
* Every user has a home category. Each day a user is active with a fixed probability; an active day is one session
  of ``2 + Poisson`` events, a few minutes apart, entirely inside 08:00-20:00 UTC. Consecutive events on different
  days are therefore at least 12 h apart, while pairs inside a session are at most 5 minutes apart, so any
  session gap between those keeps exactly the within-session pairs, whose categories follow ``T`` exactly.
* The first category of a session is the user's focal category with probability ``home_affinity`` (else uniform);
  each next category is drawn from ``T[previous]``; the next item inside that category is, with probability
  ``successor_prob``, one of the previous item's planted successors in that category, else drawn by popularity.
* Migrating users' focal category moves from home to a target category: between ``start_day`` and ``end_day`` the
  probability of using the target grows linearly from 0 to 1. Stable users keep their home category.

Days are generated one at a time from their own random stream (seed, day), so :func:`write_dataset` streams in
bounded memory and produces exactly the events :func:`generate` returns. User and item ids are 0-based, so
``truth.item_category[item_id]`` is the item's category index.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from driftrec.config import DEFAULT_EVENT_TYPES, SyntheticConfig

SESSION_START_S = 8 * 3600  # sessions lie inside [08:00, 20:00) UTC
SESSION_WINDOW_S = 12 * 3600
GAP_MIN_S, GAP_MAX_S = 30, 300  # seconds between consecutive events of a session
MAX_SESSION_LENGTH = 100  # 99 gaps * 300 s < 12 h, so every session fits the window
EVENT_TYPES = ("view", "click", "purchase")
EVENT_TYPE_PROBS = (0.7, 0.2, 0.1)
EVENT_TYPE_WEIGHTS = (1.0, 2.0, 5.0)
assert set(EVENT_TYPES) <= set(DEFAULT_EVENT_TYPES)

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),
    ]
)
ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("categories", pa.list_(pa.string()), nullable=False),
        pa.field("text", pa.string(), nullable=False),
    ]
)

_VOCAB: dict[str, tuple[str, ...]] = {
    "sci-fi": ("starship", "galaxy", "android", "nebula", "warp", "alien", "orbit", "cyborg", "laser", "planet",
               "quantum", "colony"),
    "cooking": ("recipe", "oven", "garlic", "pasta", "simmer", "bake", "spice", "sauce", "kitchen", "flavor",
                "dough", "roast"),
    "jazz": ("saxophone", "swing", "bebop", "trumpet", "improvisation", "groove", "quartet", "blues", "trio",
             "standard", "bassline", "club"),
    "gardening": ("compost", "seedling", "soil", "prune", "greenhouse", "tulip", "mulch", "harvest", "shovel",
                  "orchard", "weeds", "bloom"),
    "football": ("goal", "striker", "penalty", "league", "midfield", "stadium", "keeper", "tackle", "offside",
                 "derby", "coach", "kickoff"),
    "history": ("empire", "medieval", "dynasty", "revolution", "archive", "treaty", "monarch", "ancient",
                "chronicle", "battle", "castle", "pharaoh"),
    "fitness": ("workout", "cardio", "squat", "protein", "stretch", "treadmill", "muscle", "yoga", "sprint",
                "endurance", "dumbbell", "plank"),
    "travel": ("passport", "itinerary", "beach", "hostel", "airport", "backpack", "island", "voyage", "museum",
               "border", "luggage", "souvenir"),
    "finance": ("stocks", "dividend", "budget", "portfolio", "interest", "mortgage", "savings", "inflation",
                "bond", "pension", "ledger", "invest"),
    "photography": ("lens", "aperture", "shutter", "portrait", "tripod", "exposure", "zoom", "darkroom", "flash",
                    "landscape", "focus", "camera"),
    "gaming": ("console", "quest", "boss", "pixel", "multiplayer", "speedrun", "loot", "controller", "respawn",
               "arcade", "level", "dungeon"),
    "poetry": ("sonnet", "verse", "stanza", "rhyme", "haiku", "meter", "ballad", "lyric", "elegy", "muse",
               "couplet", "ode"),
    "astronomy": ("telescope", "comet", "eclipse", "constellation", "meteor", "supernova", "crater", "observatory",
                  "solstice", "asteroid", "pulsar", "zenith"),
    "woodworking": ("chisel", "lathe", "timber", "joinery", "sawdust", "plank", "varnish", "dovetail", "workbench",
                    "oak", "sander", "carve"),
    "medicine": ("vaccine", "diagnosis", "surgery", "clinic", "symptom", "therapy", "nurse", "antibiotic",
                 "pulse", "dosage", "immune", "ward"),
    "fashion": ("runway", "fabric", "couture", "denim", "stitch", "boutique", "silhouette", "tailor", "vintage",
                "sneaker", "accessory", "pattern"),
}
_GENERIC = ("the", "a", "guide", "story", "best", "new", "complete", "introduction", "classic", "notes")
_TEXT_WORDS, _TEXT_CATEGORY_SHARE = 16, 0.8


@dataclass
class SyntheticTruth:
    """What the generator planted, for tests to compare estimates against."""

    categories: list[str]
    category_transition: np.ndarray  # (K, K) float64, rows sum to 1
    item_category: np.ndarray  # (n_items,) int64 category index, indexed by item id (ids are 0-based)
    migrating: list[dict]  # {user_id, from_category, to_category, start_day, end_day}; names and day offsets
    stable_users: list[int]
    item_successors: np.ndarray  # (n_items, K, S) int64: item i's planted successors within category k
    user_home: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (n_users,) category index
    successor_prob: float = 0.0
    start_date: str = ""

    @property
    def migrating_users(self) -> list[int]:
        return [m["user_id"] for m in self.migrating]

    def to_json(self) -> str:
        return json.dumps(
            {
                "categories": self.categories,
                "category_transition": self.category_transition.tolist(),
                "item_category": self.item_category.tolist(),
                "migrating": self.migrating,
                "stable_users": self.stable_users,
                "item_successors": self.item_successors.tolist(),
                "user_home": self.user_home.tolist(),
                "successor_prob": self.successor_prob,
                "start_date": self.start_date,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> SyntheticTruth:
        d = json.loads(text)
        k = len(d["categories"])
        return cls(
            categories=list(d["categories"]),
            category_transition=np.asarray(d["category_transition"], dtype=np.float64).reshape(k, k),
            item_category=np.asarray(d["item_category"], dtype=np.int64),
            migrating=list(d["migrating"]),
            stable_users=[int(u) for u in d["stable_users"]],
            item_successors=np.asarray(d["item_successors"], dtype=np.int64).reshape(len(d["item_category"]), k, -1),
            user_home=np.asarray(d.get("user_home", []), dtype=np.int64),
            successor_prob=float(d.get("successor_prob", 0.0)),
            start_date=d.get("start_date", ""),
        )


@dataclass
class SyntheticData:
    events: pd.DataFrame  # user_id, item_id, event_type, timestamp (epoch s, UTC), weight; sorted by user, time
    items: pd.DataFrame  # item_id, title, categories (one-element list), text
    truth: SyntheticTruth


@dataclass
class _World:
    """The static part of the model (everything except the per-day behaviour)."""

    cfg: SyntheticConfig
    truth: SyntheticTruth
    items: pd.DataFrame
    cum_transition: np.ndarray  # (K, K) row-wise cumulative T
    pop_cum: np.ndarray  # concatenated per-category cumulative popularity, block k shifted by +k
    pop_items: np.ndarray  # item id at each position of pop_cum
    block_start: np.ndarray  # (K,) first position of category k in pop_cum
    block_end: np.ndarray  # (K,) one past the last position
    target: np.ndarray  # (n_users,) target category index (== home for stable users)
    mig_start: np.ndarray  # (n_users,) float; +inf for stable users
    mig_end: np.ndarray
    p_active: float
    extra_length: float  # Poisson mean of session length - 2
    day0_epoch: int


def _category_names(k: int) -> list[str]:
    names = list(_VOCAB)[:k]
    return names + [f"topic-{i:02d}" for i in range(len(names), k)]


def _vocabulary(name: str) -> tuple[str, ...]:
    if name in _VOCAB:
        return _VOCAB[name]
    return tuple(f"{name.replace('-', '')}w{j:02d}" for j in range(12))


def _build_world(cfg: SyntheticConfig) -> _World:
    if cfg.items < cfg.categories:
        raise ValueError(f"need at least one item per category: items={cfg.items} < categories={cfg.categories}")
    if cfg.stickiness_min > cfg.stickiness_max:
        raise ValueError("stickiness_min must be <= stickiness_max")
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0]))
    k, n_items, n_users, s = cfg.categories, cfg.items, cfg.users, cfg.successors_per_category
    names = _category_names(k)

    # True category chain.
    diag = rng.uniform(cfg.stickiness_min, cfg.stickiness_max, size=k)
    off = rng.dirichlet(np.ones(k - 1), size=k)
    trans = np.empty((k, k))
    for c in range(k):
        trans[c, c] = diag[c]
        trans[c, np.arange(k) != c] = off[c] * (1.0 - diag[c])
    trans /= trans.sum(axis=1, keepdims=True)

    # Items: one per category first so none is empty, the rest at random; popularity rank random within category.
    item_category = np.concatenate([rng.permutation(k), rng.integers(0, k, size=n_items - k)])
    item_category = item_category[rng.permutation(n_items)].astype(np.int64)
    order = np.lexsort((rng.random(n_items), item_category))  # by category, random rank inside
    pop_items = order.astype(np.int64)
    counts = np.bincount(item_category, minlength=k)
    block_end = np.cumsum(counts)
    block_start = block_end - counts
    pop_cum = np.empty(n_items)
    for c in range(k):
        w = 1.0 / np.arange(1, counts[c] + 1) ** cfg.zipf_exponent
        cum = np.cumsum(w / w.sum())
        cum[-1] = 1.0
        pop_cum[block_start[c] : block_end[c]] = c + cum

    # Planted successors: for each item and category, S items of that category drawn uniformly (not itself).
    pos = np.floor(rng.random((n_items, k, s)) * counts[None, :, None]).astype(np.int64)
    succ = pop_items[block_start[None, :, None] + pos]
    self_hit = (succ == np.arange(n_items)[:, None, None]) & (counts[None, :, None] > 1)
    shifted = pop_items[block_start[None, :, None] + (pos + 1) % counts[None, :, None]]
    succ = np.where(self_hit, shifted, succ).astype(np.int64)

    # Item text.
    titles, texts = [], []
    vocab = [_vocabulary(names[c]) for c in range(k)]
    n_cat_words = rng.binomial(_TEXT_WORDS, _TEXT_CATEGORY_SHARE, size=n_items)
    word_draws = rng.integers(0, 12, size=(n_items, _TEXT_WORDS))
    generic_draws = rng.integers(0, len(_GENERIC), size=(n_items, _TEXT_WORDS))
    for i in range(n_items):  # once per item, not per event
        v = vocab[item_category[i]]
        words = [v[j] for j in word_draws[i, : n_cat_words[i]]] + [
            _GENERIC[j] for j in generic_draws[i, n_cat_words[i] :]
        ]
        titles.append(f"{v[word_draws[i, 0]].title()} {v[word_draws[i, 1]]} #{i}")
        texts.append(" ".join(words))
    items = pd.DataFrame(
        {
            "item_id": np.arange(n_items, dtype=np.int64),
            "title": titles,
            "categories": [[names[c]] for c in item_category],
            "text": texts,
        }
    )

    # Users: home category uniform; a fixed-size random subset migrates to another category over a day window.
    home = rng.integers(0, k, size=n_users).astype(np.int64)
    n_mig = int(round(cfg.migrating_fraction * n_users))
    migrating = np.sort(rng.permutation(n_users)[:n_mig])
    target = home.copy()
    target[migrating] = (home[migrating] + rng.integers(1, k, size=n_mig)) % k
    days = cfg.days
    start = np.floor(days * rng.uniform(0.25, 0.45, size=n_mig)).astype(np.int64)
    length = np.maximum(1, np.round(days * rng.uniform(0.2, 0.35, size=n_mig))).astype(np.int64)
    start = np.minimum(start, days - 1)
    end = np.minimum(start + length, days - 1)
    mig_start = np.full(n_users, np.inf)
    mig_end = np.full(n_users, np.inf)
    mig_start[migrating], mig_end[migrating] = start, end
    mig_set = set(migrating.tolist())

    truth = SyntheticTruth(
        categories=names,
        category_transition=trans,
        item_category=item_category,
        migrating=[
            {
                "user_id": int(u),
                "from_category": names[home[u]],
                "to_category": names[target[u]],
                "start_day": int(a),
                "end_day": int(b),
            }
            for u, a, b in zip(migrating, start, end)
        ],
        stable_users=[u for u in range(n_users) if u not in mig_set],
        item_successors=succ,
        user_home=home,
        successor_prob=cfg.successor_prob,
        start_date=cfg.start_date,
    )
    p_active = min(1.0, cfg.events_per_user_day / cfg.mean_session_length)
    day0 = dt.datetime.fromisoformat(cfg.start_date).replace(tzinfo=dt.UTC)
    return _World(
        cfg=cfg,
        truth=truth,
        items=items,
        cum_transition=np.cumsum(trans, axis=1),
        pop_cum=pop_cum,
        pop_items=pop_items,
        block_start=block_start,
        block_end=block_end,
        target=target,
        mig_start=mig_start,
        mig_end=mig_end,
        p_active=p_active,
        extra_length=cfg.events_per_user_day / p_active - 2.0,
        day0_epoch=int(day0.timestamp()),
    )


def _migration_weight(w: _World, day: int, users: np.ndarray) -> np.ndarray:
    """P(a session uses the target rather than the home category): 0 before start, linear, 1 from end on."""
    a, b = w.mig_start[users], w.mig_end[users]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(b > a, (day - a) / np.where(b > a, b - a, 1.0), (day >= a).astype(float))
    return np.clip(np.nan_to_num(frac, nan=0.0), 0.0, 1.0)


def _day_events(w: _World, day: int) -> pd.DataFrame:
    """All sessions of one day, sorted by (user_id, timestamp); vectorised over users, looping over positions."""
    cfg = w.cfg
    k = cfg.categories
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1, day]))
    users = np.flatnonzero(rng.random(cfg.users) < w.p_active).astype(np.int64)
    m = users.size
    lengths = np.minimum(2 + rng.poisson(w.extra_length, size=m), MAX_SESSION_LENGTH).astype(np.int64)
    n = int(lengths.sum())
    offs = np.cumsum(lengths) - lengths
    max_len = int(lengths.max()) if m else 0

    # Categories: first from the user's interest, then the chain T.
    focal = np.where(rng.random(m) < _migration_weight(w, day, users), w.target[users], w.truth.user_home[users])
    first = np.where(rng.random(m) < cfg.home_affinity, focal, rng.integers(0, k, size=m))
    cats = np.empty(n, dtype=np.int64)
    cats[offs] = first
    u_cat = rng.random(n)
    for p in range(1, max_len):
        ev = offs[lengths > p] + p
        nxt = (u_cat[ev, None] >= w.cum_transition[cats[ev - 1]]).sum(axis=1)
        cats[ev] = np.minimum(nxt, k - 1)

    # Items: by popularity inside the category, overridden left to right by planted successors.
    idx = np.searchsorted(w.pop_cum, cats + rng.random(n), side="right")
    idx = np.clip(idx, w.block_start[cats], w.block_end[cats] - 1)
    items = w.pop_items[idx]
    use_succ = rng.random(n) < cfg.successor_prob
    succ_pick = rng.integers(0, cfg.successors_per_category, size=n)
    for p in range(1, max_len):
        ev = offs[lengths > p] + p
        ev = ev[use_succ[ev]]
        items[ev] = w.truth.item_successors[items[ev - 1], cats[ev], succ_pick[ev]]

    # Timestamps: a few minutes apart, the whole session inside [08:00, 20:00).
    gaps = rng.integers(GAP_MIN_S, GAP_MAX_S + 1, size=n)
    gaps[offs] = 0
    csum = np.cumsum(gaps)
    within = csum - np.repeat(csum[offs], lengths)
    duration = within[offs + lengths - 1] if m else np.zeros(0, np.int64)
    start = np.floor(rng.random(m) * (SESSION_WINDOW_S - duration)).astype(np.int64)
    ts = w.day0_epoch + day * 86400 + SESSION_START_S + np.repeat(start, lengths) + within

    etype = np.searchsorted(np.cumsum(EVENT_TYPE_PROBS)[:-1], rng.random(n), side="right")
    return pd.DataFrame(
        {
            "user_id": np.repeat(users, lengths),
            "item_id": items.astype(np.int64),
            "event_type": np.asarray(EVENT_TYPES, dtype=object)[etype],
            "timestamp": ts.astype(np.int64),
            "weight": np.asarray(EVENT_TYPE_WEIGHTS, dtype=np.float64)[etype],
        }
    )


def _iter_days(w: _World) -> Iterator[tuple[dt.date, pd.DataFrame]]:
    first = dt.date.fromisoformat(w.cfg.start_date[:10])
    for d in range(w.cfg.days):
        yield first + dt.timedelta(days=d), _day_events(w, d)


def generate(cfg: SyntheticConfig) -> SyntheticData:
    """The whole dataset in memory (tests, small demos); identical to what :func:`write_dataset` writes."""
    w = _build_world(cfg)
    events = pd.concat([df for _, df in _iter_days(w)], ignore_index=True)  # days >= 1
    # Each day is already sorted by (user, time) and days are in time order, so a stable sort by user suffices.
    events = events.iloc[np.argsort(events["user_id"].to_numpy(), kind="stable")].reset_index(drop=True)
    return SyntheticData(events=events, items=w.items, truth=w.truth)


def _write_parquet(df: pd.DataFrame, schema: pa.Schema, path: Path) -> None:
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    pq.write_table(table, path, compression="zstd")


def write_dataset(cfg: SyntheticConfig, out_dir: str | Path) -> dict:
    """Write one Parquet file per day plus items and truth, holding only one day of events in memory."""
    out = Path(out_dir)
    events_dir = out / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    w = _build_world(cfg)
    files, n_events = [], 0
    for day, df in _iter_days(w):
        path = events_dir / f"events-{day.isoformat()}.parquet"
        _write_parquet(df, EVENTS_SCHEMA, path)
        files.append(str(path))
        n_events += len(df)
    items_path, truth_path = out / "items.parquet", out / "truth.json"
    _write_parquet(w.items, ITEMS_SCHEMA, items_path)
    truth_path.write_text(w.truth.to_json())
    return {
        "events_dir": str(events_dir),
        "event_files": files,
        "items": str(items_path),
        "truth": str(truth_path),
        "n_events": n_events,
        "n_items": len(w.items),
        "n_users": cfg.users,
        "n_days": cfg.days,
    }


def main(argv: list[str] | None = None) -> int:
    defaults = SyntheticConfig()
    ap = argparse.ArgumentParser(description="Write a synthetic driftrec dataset with known ground truth.")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--users", type=int, default=defaults.users)
    ap.add_argument("--items", type=int, default=defaults.items)
    ap.add_argument("--days", type=int, default=defaults.days)
    ap.add_argument("--events-per-user-day", type=float, default=defaults.events_per_user_day)
    ap.add_argument("--seed", type=int, default=defaults.seed)
    ap.add_argument("--migrating-fraction", type=float, default=defaults.migrating_fraction)
    ap.add_argument("--categories", type=int, default=defaults.categories)
    ap.add_argument("--start-date", default=defaults.start_date)
    args = ap.parse_args(argv)
    cfg = SyntheticConfig(
        users=args.users,
        items=args.items,
        days=args.days,
        events_per_user_day=args.events_per_user_day,
        seed=args.seed,
        migrating_fraction=args.migrating_fraction,
        categories=args.categories,
        start_date=args.start_date,
    )
    info = write_dataset(cfg, args.out)
    summary = {key: v for key, v in info.items() if key != "event_files"}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

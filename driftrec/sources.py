"""Readers that turn source files into *raw* frames: every field still a string, plus provenance.

Keeping fields as strings until validation is what lets a bad value land in quarantine with its original text
instead of vanishing into a null at read time. Each reader returns columns
``user_id, item_id, event_type, timestamp, weight`` (events) or ``item_id, title, categories, text`` (items), plus
``_source`` (file path) and ``_row`` (the original row as JSON).

Supported: MovieLens ml-latest(-small)/ml-20m/ml-25m CSV, ml-100k ``u.data``/``u.item``, ml-1m/ml-10m ``.dat``,
and generic CSV/Parquet event files with a :class:`~driftrec.config.ColumnMapping`.

A generic CSV directory is read file by file header: Spark would take the first file's header and apply it by
position to every other file, so a file with its columns in another order would land with user and item swapped.
Files sharing a header are read together; the groups are joined by column name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from driftrec.config import ColumnMapping

EVENT_FIELDS = ("user_id", "item_id", "event_type", "timestamp", "weight")
ITEM_FIELDS = ("item_id", "title", "categories", "text")


class MissingColumnError(ValueError):
    """A source file lacks a required column; raised before anything is written."""


class EmptySourceError(FileNotFoundError):
    """A source path holds no readable file; raised before anything is written."""


class SourceReadError(RuntimeError):
    """A source file cannot be read (corrupt, truncated, clashing schemas); raised before anything is written."""


def spark_error_line(e: Exception) -> str:
    """The line of a Spark/Py4J error that says what failed (Spark's names the file), not the JVM stack under it."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith("at ")]
    classed = [ln for ln in lines if re.search(r"\[[A-Z_]+(\.[A-Z_]+)*\]", ln)]  # [FAILED_READ_FILE.NO_HINT] ...
    telling = [ln for ln in lines if "file" in ln.lower()]
    return (classed or telling or lines or [type(e).__name__])[0][:600]


@dataclass(frozen=True)
class RawSource:
    """A raw frame and what it feeds (``events`` or ``items``) plus the timestamp convention of its column."""

    target: str
    frame: DataFrame
    path: str
    timestamp_format: str = "epoch_s"
    # Events: the name of the user id field in ``_row`` (the source's own column name), for pseudonymisation.
    user_field: str | None = None


def _require(df: DataFrame, required: list[str], path: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise MissingColumnError(
            f"{path}: required column(s) {missing} missing; found {df.columns}"
        )


def _with_provenance(df: DataFrame, original_cols: list[str]) -> DataFrame:
    return df.withColumn("_source", F.col("_metadata.file_path")).withColumn(
        "_row", F.to_json(F.struct(*[F.col(f"`{c}`") for c in original_cols]))
    )


def _read_delimited(
    spark: SparkSession,
    path: str | list[str],
    sep: str,
    names: list[str] | None,
    encoding: str = "UTF-8",
    *,
    header: bool | None = None,
    multiline: bool = False,
) -> DataFrame:
    """Every field a string. ``names`` are the columns: of a headerless file, or with ``header`` the header the files
    are known to share (their first line is skipped, nothing inferred)."""
    header = names is None if header is None else header
    reader = (
        spark.read.option("sep", sep)
        .option("encoding", encoding)
        .option("mode", "PERMISSIVE")
        .option("multiLine", multiline)
        .option("header", header)
    )
    if names is None:
        return reader.csv(path)
    schema = T.StructType([T.StructField(n, T.StringType()) for n in names])
    return reader.schema(schema).csv(path)


def _glob_escaped(path: str) -> str:
    """A listed file name taken literally when handed back to a reader (which would expand ``[``, ``*``, ...)."""
    return re.sub(r"([\\{}\[\]*?])", r"\\\1", path)


def list_files(spark: SparkSession, path: str) -> list[str]:
    """The data files Spark would read under ``path`` (a file, directory or glob; hidden files skipped), sorted.

    Lists through Spark's own file index (``binaryFile`` without its content column reads no bytes), so a local
    path and an object-store URI resolve alike."""
    rows = spark.read.format("binaryFile").load(path).select("path").collect()
    files = sorted(r["path"] for r in rows)
    if not files:
        raise EmptySourceError(f"{path}: no files to read")
    return files


def _csv_by_header(spark: SparkSession, path: str, sep: str, multiline: bool) -> list[tuple[str, DataFrame]]:
    """One frame per distinct header under ``path``, each read with its files' own header: ``(label, frame)``."""
    files = list_files(spark, path)
    groups: dict[tuple[str, ...], list[str]] = {}
    for f in files:
        cols = _read_delimited(spark, _glob_escaped(f), sep, None, multiline=multiline).columns
        groups.setdefault(tuple(cols), []).append(f)
    return [
        (
            fs[0] if len(fs) == 1 else f"{path} ({len(fs)} files with header {list(cols)})",
            _read_delimited(spark, [_glob_escaped(f) for f in fs], sep, list(cols), header=True, multiline=multiline),
        )
        for cols, fs in groups.items()
    ]


def _events_frame(
    df: DataFrame, user: str, item: str, ts: str, event_type: Column, weight: Column, path: str
) -> DataFrame:
    original = df.columns
    df = _with_provenance(df, original)
    return df.select(
        F.col(f"`{user}`").cast("string").alias("user_id"),
        F.col(f"`{item}`").cast("string").alias("item_id"),
        event_type.cast("string").alias("event_type"),
        F.col(f"`{ts}`").cast("string").alias("timestamp"),
        weight.cast("string").alias("weight"),
        "_source",
        "_row",
    )


def _items_frame(df: DataFrame, item: str, title: Column, categories: Column, text: Column) -> DataFrame:
    df = _with_provenance(df, df.columns)
    return df.select(
        F.col(f"`{item}`").cast("string").alias("item_id"),
        title.alias("title"),
        categories.alias("categories"),
        text.alias("text"),
        "_source",
        "_row",
    )


def _split_genres(col: Column, sep: str = "|") -> Column:
    """MovieLens genres: ``A|B``; ``(no genres listed)`` means none."""
    parts = F.split(F.coalesce(col, F.lit("")), "\\" + sep if sep == "|" else sep)
    return F.filter(parts, lambda g: (g != F.lit("")) & (g != F.lit("(no genres listed)")))


def _tags_text(tags: DataFrame, item_col: str, tag_col: str) -> DataFrame:
    """Distinct tags per item, sorted so the item text (and its content hash) is deterministic."""
    return tags.groupBy(F.col(item_col).alias("_tag_item")).agg(
        F.array_join(F.array_sort(F.collect_set(F.lower(F.trim(F.col(tag_col))))), ", ").alias("_tags")
    )


def detect_movielens_layout(directory: str | Path) -> str:
    d = Path(directory)
    if (d / "ratings.csv").is_file():
        return "csv"
    if (d / "u.data").is_file():
        return "100k"
    if (d / "ratings.dat").is_file():
        return "dat"
    raise FileNotFoundError(
        f"{d}: not a MovieLens directory (expected ratings.csv, u.data or ratings.dat)"
    )


def read_movielens(spark: SparkSession, directory: str | Path, multiline: bool = True) -> list[RawSource]:
    """Events (ratings, weight = rating) and the catalogue (title, genres, tags as text) of a MovieLens release."""
    d = Path(directory).resolve()
    layout = detect_movielens_layout(d)
    rating = F.lit("rating")
    if layout == "csv":
        r_path, m_path, t_path = str(d / "ratings.csv"), str(d / "movies.csv"), d / "tags.csv"
        ratings = _read_delimited(spark, r_path, ",", None, multiline=multiline)
        _require(ratings, ["userId", "movieId", "rating", "timestamp"], r_path)
        movies = _read_delimited(spark, m_path, ",", None, multiline=multiline)
        _require(movies, ["movieId", "title", "genres"], m_path)
        tags = _read_delimited(spark, str(t_path), ",", None, multiline=multiline) if t_path.is_file() else None
        if tags is not None:
            _require(tags, ["movieId", "tag"], str(t_path))
        user_field = "userId"
        events = _events_frame(ratings, user_field, "movieId", "timestamp", rating, F.col("rating"), r_path)
        items_raw, item_col, genres = movies, "movieId", _split_genres(F.col("genres"))
        tag_item, tag_col = "movieId", "tag"
    elif layout == "100k":
        r_path, m_path = str(d / "u.data"), str(d / "u.item")
        ratings = _read_delimited(spark, r_path, "\t", ["user", "item", "rating", "ts"])
        user_field = "user"
        events = _events_frame(ratings, user_field, "item", "ts", rating, F.col("rating"), r_path)
        genre_names = _ml100k_genres(d)
        cols = ["item", "title", "release", "video_release", "url", *[f"g{i}" for i in range(len(genre_names))]]
        items_raw = _read_delimited(spark, m_path, "|", cols, encoding="ISO-8859-1")
        flags = [F.when(F.col(f"g{i}") == "1", F.lit(g)) for i, g in enumerate(genre_names)]
        genres = F.filter(F.array(*flags), lambda g: g.isNotNull() & (g != F.lit("unknown")))
        item_col, tags = "item", None
        m_path = str(d / "u.item")
    else:
        r_path, m_path, t_path = str(d / "ratings.dat"), str(d / "movies.dat"), d / "tags.dat"
        ratings = _read_delimited(spark, r_path, "::", ["user", "item", "rating", "ts"])
        user_field = "user"
        events = _events_frame(ratings, user_field, "item", "ts", rating, F.col("rating"), r_path)
        items_raw = _read_delimited(spark, m_path, "::", ["item", "title", "genres"], encoding="ISO-8859-1")
        genres = _split_genres(F.col("genres"))
        item_col = "item"
        tags = (
            _read_delimited(spark, str(t_path), "::", ["user", "item", "tag", "ts"], encoding="ISO-8859-1")
            if t_path.is_file()
            else None
        )
        tag_item, tag_col = "item", "tag"
    text = F.lit(None).cast("string")
    if tags is not None:
        items_raw = items_raw.join(_tags_text(tags, tag_item, tag_col), F.col(item_col) == F.col("_tag_item"), "left")
        text = F.col("_tags")
        items_frame = _items_frame(items_raw.drop("_tag_item"), item_col, F.col("title"), genres, text)
    else:
        items_frame = _items_frame(items_raw, item_col, F.col("title"), genres, text)
    return [
        RawSource("events", events, r_path, "epoch_s", user_field=user_field),
        RawSource("items", items_frame, m_path),
    ]


def _ml100k_genres(d: Path) -> list[str]:
    genre_file = d / "u.genre"
    if genre_file.is_file():
        rows = [ln.split("|") for ln in genre_file.read_text(encoding="latin-1").splitlines() if ln.strip()]
        return [name for name, _ in sorted(rows, key=lambda r: int(r[1]))]
    return [
        "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
        "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
    ]  # fmt: skip


def _read_generic(
    spark: SparkSession, path: str, fmt: str, delimiter: str, multiline: bool
) -> list[tuple[str, DataFrame]]:
    """``(label, frame)`` per group of files read alike: Parquet resolves columns by name itself (with every file's
    footer merged, so a column the first file lacks is not dropped); CSV is grouped by header."""
    if fmt == "parquet":
        try:
            return [(path, spark.read.option("mergeSchema", True).parquet(path))]
        except Exception as e:  # a footer that cannot be read, schemas that cannot be merged; not a missing path
            if "PATH_NOT_FOUND" in str(e):
                raise
            raise SourceReadError(f"{path}: cannot read the Parquet files' schemas: {spark_error_line(e)}") from e
    if fmt == "csv":
        return _csv_by_header(spark, path, delimiter, multiline)
    raise ValueError(f"unsupported source format {fmt!r}; use csv or parquet")


def _union(frames: list[DataFrame]) -> DataFrame:
    return reduce(lambda a, b: a.unionByName(b), frames)


def read_generic_events(
    spark: SparkSession, path: str, fmt: str, mapping: ColumnMapping, delimiter: str = ",", multiline: bool = True
) -> RawSource:
    """Events from any CSV/Parquet file(s) whose columns the mapping names; every file must carry them all."""
    required = [mapping.user_id, mapping.item_id, mapping.timestamp]
    required += [c for c in (mapping.event_type, mapping.weight) if c is not None]
    etype = F.col(f"`{mapping.event_type}`") if mapping.event_type else F.lit(mapping.default_event_type)
    weight = F.col(f"`{mapping.weight}`") if mapping.weight else F.lit(mapping.default_weight)
    frames = []
    for label, df in _read_generic(spark, path, fmt, delimiter, multiline):
        _require(df, required, label)
        frames.append(_events_frame(df, mapping.user_id, mapping.item_id, mapping.timestamp, etype, weight, path))
    return RawSource("events", _union(frames), path, mapping.timestamp_format, user_field=mapping.user_id)


def read_generic_items(
    spark: SparkSession, path: str, fmt: str, delimiter: str = ",", multiline: bool = True
) -> RawSource:
    """A catalogue file with ``item_id`` and optional ``title``, ``categories`` (list or ``|``-separated), ``text``."""
    frames = []
    for label, df in _read_generic(spark, path, fmt, delimiter, multiline):
        _require(df, ["item_id"], label)
        frames.append(_items_frame(df, "item_id", *_item_fields(df)))
    return RawSource("items", _union(frames), path)


def _item_fields(df: DataFrame) -> tuple[Column, Column, Column]:
    """(title, categories, text) of a catalogue frame; an absent optional column is empty."""
    title = F.col("title").cast("string") if "title" in df.columns else F.lit(None).cast("string")
    text = F.col("text").cast("string") if "text" in df.columns else F.lit(None).cast("string")
    if "categories" not in df.columns:
        cats = F.array().cast("array<string>")
    elif isinstance(df.schema["categories"].dataType, T.ArrayType):
        cats = F.col("categories").cast("array<string>")
    else:
        cats = _split_genres(F.col("categories").cast("string"))
    return title, cats, text

"""Spark side of item text encoding: ``mapInPandas`` over item batches, one encoder per Python worker.

The per-batch work is :func:`driftrec.text_encoder.embed_items_frame` (plain pandas, unit-tested without Spark); this
module only caches the loaded model in the worker process, so each worker pays the load once, not once per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pandas as pd

EMBEDDING_SCHEMA = "item_id bigint, model string, content_hash string, embedding array<float>, dim int"

_ENCODERS: dict[tuple, object] = {}


def _encoder(model_path: str, batch_size: int, max_length: int):
    from driftrec.text_encoder import TextEncoder

    key = (model_path, batch_size, max_length)
    if key not in _ENCODERS:
        _ENCODERS[key] = TextEncoder(model_path or None, batch_size=batch_size, max_length=max_length)
    return _ENCODERS[key]


def encode_items_udf(model_name: str, model_path: str, batch_size: int,
                     max_length: int) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A ``mapInPandas`` function: items (item_id, title, categories, text, content_hash) -> embedding rows."""

    def encode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from driftrec.text_encoder import embed_items_frame

        encoder = None
        for pdf in batches:
            if len(pdf) == 0:
                continue
            encoder = encoder or _encoder(model_path, batch_size, max_length)
            yield embed_items_frame(pdf, encoder, model_name)

    return encode

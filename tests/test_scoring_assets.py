"""The pure parts of spark_udfs.assets: successor CSR arrays and P(i | c) aligned to the model's item index."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spark_udfs.assets import category_matrix, successor_csr


def test_successor_csr_is_sorted_by_source_then_target_and_drops_unknown_items():
    index = {30: 0, 10: 1, 20: 2}  # catalogue index order is the model's, not the ids'
    succ = pd.DataFrame({"from_item": [10, 30, 10, 99, 20], "to_item": [30, 20, 20, 10, 77],
                         "prob": [0.25, 0.5, 0.75, 0.9, 0.1]})
    indptr, indices, probs = successor_csr(succ, index, 3)
    np.testing.assert_array_equal(indptr, [0, 1, 3, 3])  # item 30: one successor, 10: two, 20: none (77 unknown)
    np.testing.assert_array_equal(indices, [2, 0, 2])
    np.testing.assert_allclose(probs, [0.5, 0.25, 0.75])


def test_category_matrix_places_rows_by_category_and_columns_by_item_index():
    rows = [{"item_id": 10, "category": "b", "pic": 0.4}, {"item_id": 30, "category": "a", "pic": 1.0},
            {"item_id": 99, "category": "a", "pic": 0.3}, {"item_id": 20, "category": "zzz", "pic": 0.2}]
    pic = category_matrix(rows, ["a", "b"], {30: 0, 10: 1, 20: 2}, 3)
    np.testing.assert_allclose(pic, [[1.0, 0.0, 0.0], [0.0, 0.4, 0.0]])

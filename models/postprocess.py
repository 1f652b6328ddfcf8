"""Logits to probabilities, as a Hugging Face image classifier's head means them."""

from __future__ import annotations

import numpy as np


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over classes; sigmoid when the model has one logit (then [1-p, p] as two classes)."""
    logits = logits.astype(np.float32, copy=False)
    if logits.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return np.stack([1.0 - p, p], axis=1)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)

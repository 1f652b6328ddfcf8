"""Poison isolation: a batch that raises is split until only the failing rows are marked failed."""

from __future__ import annotations

from typing import Any

import numpy as np

from processor.scorer import infer_isolating

POISON = -1.0
SHAPE = (3, 2, 2)


class FakeEngine:
    """Raises for any batch containing a poisoned row; scores others as [1 - m, m] from the row's marker m."""

    def __init__(self, nan_marker: float | None = None) -> None:
        self.calls: list[int] = []
        self.nan_marker = nan_marker

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        markers = batch[:, 0, 0, 0]
        if (markers == POISON).any():
            raise RuntimeError("poisoned input")
        p = markers / 100.0
        probs = np.stack([1 - p, p], axis=1).astype(np.float32)
        if self.nan_marker is not None:
            probs[markers == self.nan_marker] = np.nan
        return probs


def _batch(markers: list[float]) -> np.ndarray:
    tensor = np.zeros((len(markers), *SHAPE), dtype=np.float32)
    tensor[:, 0, 0, 0] = markers
    return tensor


def _infer(engine: Any, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return infer_isolating(engine, tensor)


def test_clean_batch_runs_once_and_every_row_is_ok() -> None:
    engine = FakeEngine()
    probs, ok = _infer(engine, _batch([10, 20, 30]))
    assert engine.calls == [3]
    assert ok.tolist() == [True, True, True]
    np.testing.assert_allclose(probs[:, 1], [0.1, 0.2, 0.3], rtol=1e-6)


def test_only_the_poisoned_row_is_marked_failed_and_the_rest_are_scored() -> None:
    markers = [10, 20, 30, POISON, 50, 60, 70]
    probs, ok = _infer(FakeEngine(), _batch(markers))
    assert ok.tolist() == [True, True, True, False, True, True, True]
    good = [i for i, m in enumerate(markers) if m != POISON]
    np.testing.assert_allclose(probs[good, 1], [markers[i] / 100 for i in good], rtol=1e-6)


def test_several_poisoned_rows_are_each_isolated() -> None:
    markers = [POISON, 20, 30, 40, 50, 60, 70, POISON]
    _, ok = _infer(FakeEngine(), _batch(markers))
    assert ok.tolist() == [m != POISON for m in markers]


def test_all_rows_poisoned_marks_all_failed() -> None:
    _, ok = _infer(FakeEngine(), _batch([POISON] * 4))
    assert not ok.any()


def test_non_finite_rows_are_marked_failed_without_failing_the_others() -> None:
    probs, ok = _infer(FakeEngine(nan_marker=30), _batch([10, 30, 50]))
    assert ok.tolist() == [True, False, True]
    assert np.isfinite(probs[[0, 2]]).all()


def test_result_has_one_row_per_input_row() -> None:
    probs, ok = _infer(FakeEngine(), _batch([10, POISON, 30, 40, POISON]))
    assert probs.shape == (5, 2) and ok.shape == (5,)

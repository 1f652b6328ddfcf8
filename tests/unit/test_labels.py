"""Logits → probabilities (softmax; sigmoid for one logit) and probabilities → the result's label fields."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import numpy as np
import pytest

from models.postprocess import probabilities
from processor.engine import Labels
from processor.outcomes import _utc_now

REAL_FAKE = Labels(names=("Real", "Fake"), fake_index=1, threshold=0.5)


def test_softmax_rows_sum_to_one() -> None:
    rng = np.random.default_rng(0)
    probs = probabilities(rng.normal(size=(16, 5)).astype(np.float32))
    assert probs.shape == (16, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (probs > 0).all()


def test_softmax_matches_the_textbook_formula() -> None:
    logits = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    expected = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(probabilities(logits), expected, rtol=1e-6)


def test_softmax_is_stable_for_huge_logits() -> None:
    probs = probabilities(np.array([[1000.0, 0.0], [-1000.0, 1000.0], [5e4, 5e4]], dtype=np.float32))
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs, [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], atol=1e-6)


def test_single_logit_uses_sigmoid_as_two_classes() -> None:
    probs = probabilities(np.array([[0.0], [2.0], [-3.0]], dtype=np.float32))
    p = 1.0 / (1.0 + np.exp(-np.array([0.0, 2.0, -3.0])))
    np.testing.assert_allclose(probs, np.stack([1 - p, p], axis=1), rtol=1e-6)


def test_fake_class_is_picked_by_index_not_position() -> None:
    labels = Labels(names=("Fake", "Real"), fake_index=0, threshold=0.5)
    label, is_fake, fake_score, scores = labels.fields(np.array([0.9, 0.1]))
    assert (label, is_fake, fake_score) == ("Fake", True, pytest.approx(0.9))
    assert scores == {"Fake": pytest.approx(0.9), "Real": pytest.approx(0.1)}


def test_score_equal_to_threshold_is_fake() -> None:
    label, is_fake, fake_score, _ = REAL_FAKE.fields(np.array([0.5, 0.5]))
    assert is_fake is True and label == "Fake" and fake_score == 0.5


def test_score_just_below_threshold_is_not_fake() -> None:
    labels = Labels(names=("Real", "Fake"), fake_index=1, threshold=0.75)
    label, is_fake, _, _ = labels.fields(np.array([0.26, 0.74]))
    assert (label, is_fake) == ("Real", False)


def test_not_fake_label_is_the_best_other_class() -> None:
    labels = Labels(names=("Real", "Fake", "Cartoon"), fake_index=1, threshold=0.5)
    label, is_fake, _, scores = labels.fields(np.array([0.2, 0.3, 0.5]))
    assert (label, is_fake) == ("Cartoon", False)
    assert set(scores) == {"Real", "Fake", "Cartoon"}


def test_high_threshold_can_label_the_most_likely_class_not_fake() -> None:
    labels = Labels(names=("Real", "Fake"), fake_index=1, threshold=0.95)
    label, is_fake, fake_score, _ = labels.fields(np.array([0.1, 0.9]))
    assert (label, is_fake, fake_score) == ("Real", False, pytest.approx(0.9))


def test_result_fields_are_the_same_from_python_floats_as_from_the_float32_row() -> None:
    row = np.array([0.2999999821186066, 0.7000000476837158], dtype=np.float32)
    assert REAL_FAKE.fields(row.tolist()) == REAL_FAKE.fields(row) == ("Fake", True, 0.7, {"Real": 0.3, "Fake": 0.7})


def test_processed_at_is_utc_iso_to_the_millisecond() -> None:
    stamp = _utc_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp), stamp
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 60


def test_an_events_score_is_its_most_fake_face() -> None:
    from types import SimpleNamespace

    from processor.inflight import InFlight
    from processor.outcomes import result_fields
    from schemas.events import FaceBox

    boxes = [FaceBox(x=i, y=0, width=10, height=10) for i in range(4)]
    probs = np.array([[0.8, 0.2], [0.1, 0.9], [0.3, 0.7], [0.1, 0.9]], dtype=np.float32)
    engine = SimpleNamespace(labels=REAL_FAKE, ref="vit@fp32")
    item = InFlight("in", 0, 0, None, b"", None, None, faces=boxes, probs=probs, scored_by=engine)  # type: ignore[arg-type]
    fields = result_fields(item)
    assert (fields["label"], fields["fake_score"]) == ("Fake", pytest.approx(0.9))
    assert [f.fake_score for f in fields["faces"]] == pytest.approx([0.2, 0.9, 0.7, 0.9])
    alone = InFlight("in", 0, 0, None, b"", None, None, probs=probs[:1], scored_by=engine)  # type: ignore[arg-type]
    assert (result_fields(alone)["label"], result_fields(alone)["faces"]) == ("Real", None)

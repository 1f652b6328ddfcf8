"""The consumer loop's poll timeout while events are in flight follows the model's pace."""

from __future__ import annotations

import pytest

from processor.consumer import BUSY_POLL_S, MAX_BUSY_POLL_S, busy_poll_s


@pytest.mark.parametrize(
    ("batch_seconds", "expected"),
    [
        (0.0, BUSY_POLL_S),  # nothing scored yet: poll as often as before
        (0.005, BUSY_POLL_S),  # a fast model (vit-tiny, a GPU): every 2 ms
        (0.2, 0.01),  # 5 % of a 200 ms batch
        (4.0, MAX_BUSY_POLL_S),  # ViT-B/16 on a CPU: at most 20 ms, whatever the batch takes
    ],
)
def test_poll_timeout_adds_at_most_a_twentieth_of_a_batch_and_stays_within_2_to_20_ms(
    batch_seconds: float, expected: float
) -> None:
    assert busy_poll_s(batch_seconds) == pytest.approx(expected)

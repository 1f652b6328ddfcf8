"""A real-Kafka test whose broker cannot run skips on a laptop but fails under CI=true (never a silent skip in CI)."""

from __future__ import annotations

import pytest

from tests.conftest import kafka_unavailable


def test_missing_kafka_fails_the_test_under_ci_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no java here"):
        kafka_unavailable("no java here")


def test_missing_kafka_skips_the_test_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no java here"):
        kafka_unavailable("no java here")

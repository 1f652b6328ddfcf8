"""A real-Kafka test whose broker cannot run skips on a laptop but fails under CI=true (never a silent skip in CI)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from devtools.apache_kafka import KafkaUnavailable, check_tools, kafka_cache_dir
from tests.conftest import kafka_unavailable


def test_missing_kafka_fails_the_test_under_ci_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no java here"):
        kafka_unavailable("no java here")


def test_missing_kafka_skips_the_test_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no java here"):
        kafka_unavailable("no java here")


def _path_with_only(tmp_path: Path, tool: str) -> str:
    """A PATH holding `tool` (the real one, linked) and nothing else."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = shutil.which(tool)
    assert real is not None, f"{tool} is needed on this machine for the test"
    (bin_dir / tool).symlink_to(real)
    return str(bin_dir)


def test_a_complete_jar_cache_runs_kafka_with_java_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("java") is None:
        kafka_unavailable("no java here")
    monkeypatch.setenv("PATH", _path_with_only(tmp_path, "java"))
    monkeypatch.setenv("DFP_TEST_KAFKA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(KafkaUnavailable, match="mvn"):  # nothing cached: Maven must fetch the jars
        check_tools()
    cache = kafka_cache_dir()
    cache.mkdir(parents=True)
    (cache / "libs.complete").write_text("copied from another machine\n")
    check_tools()  # a GPU host without network: copied jars and a Java runtime are enough

"""CLI exit codes (README: Commands): a bad setting exits 2 with a message naming it, before anything starts."""

from __future__ import annotations

import os

import pytest

from processor.cli import main


@pytest.fixture(autouse=True)
def _no_dfp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("DFP_"):
            monkeypatch.delenv(name)


def test_bad_flag_value_exits_2_naming_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--max-batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert "DFP_MAX_BATCH_SIZE" in err or "--max-batch-size" in err


def test_bad_env_value_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DFP_FAKE_THRESHOLD", "2")
    assert main(["run"]) == 2
    assert "DFP_FAKE_THRESHOLD" in capsys.readouterr().err


def test_output_topic_clashing_with_input_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--input-topic", "a,b", "--output-topic", "b"]) == 2
    assert "DFP_OUTPUT_TOPIC" in capsys.readouterr().err


def test_malformed_kafka_passthrough_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--kafka", "security.protocol"]) == 2
    assert "--kafka" in capsys.readouterr().err

"""Credentials stay out of logs, reprs and /health: settings mask them, the CLI warns about them on its command line."""

from __future__ import annotations

import argparse
import logging

import pytest
from confluent_kafka import KafkaError

from processor.cli import _warn_secret_flags
from processor.settings import load_settings, redact
from processor.telemetry.health import Health
from processor.telemetry.kafka_stats import KafkaStats
from processor.telemetry.metrics import Metrics

PASSWORD = "s3cr3t-Pa55"


def test_settings_repr_and_str_mask_passwords_secrets_and_keys() -> None:
    secrets = {"sasl.password": PASSWORD, "ssl.key.pem": PASSWORD, "sasl.oauthbearer.client.secret": PASSWORD}
    settings = load_settings({"kafka": {**secrets, "security.protocol": "SASL_SSL"}})
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)
    assert "SASL_SSL" in repr(settings)
    assert settings.kafka["sasl.password"] == PASSWORD  # masked when shown, not when used


def test_redact_masks_only_secret_looking_keys() -> None:
    shown = redact({"sasl.password": PASSWORD, "sasl.username": "dfp", "ssl.key.location": "/k.pem"})
    assert shown == {"sasl.password": "***", "sasl.username": "dfp", "ssl.key.location": "***"}


def test_cli_warns_when_a_kafka_flag_carries_a_password(caplog: pytest.LogCaptureFixture) -> None:
    args = argparse.Namespace(setting_kafka=[f"sasl.password={PASSWORD}", "security.protocol=SASL_SSL"])
    with caplog.at_level(logging.WARNING, logger="processor.cli"):
        _warn_secret_flags(args)
    assert "visible to anyone who can list processes" in caplog.text
    assert PASSWORD not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="processor.cli"):
        _warn_secret_flags(argparse.Namespace(setting_kafka=["security.protocol=SASL_SSL"]))
    assert caplog.text == ""


def test_health_keeps_the_reason_when_all_brokers_down_follows_it() -> None:
    health = Health()
    stats = KafkaStats(health, Metrics(), set())
    stats.on_error(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: invalid credentials"))
    stats.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    last = health.document()["kafka"]["last_error"]
    assert last.startswith("_AUTHENTICATION") and "invalid credentials" in last

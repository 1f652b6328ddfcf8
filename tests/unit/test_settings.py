"""Settings (README: Settings): defaults, DFP_* env vars, overrides, comma lists, and errors that name the setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from models.cpus import usable_cpus
from processor.errors import ConfigError
from processor.settings import Delivery, LogFormat, MiB, Providers, Variant, load_settings


@pytest.fixture(autouse=True)
def _no_dfp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from a clean environment: no DFP_* variable leaks in from the shell or CI."""
    for name in list(os.environ):
        if name.upper().startswith("DFP_"):
            monkeypatch.delenv(name)


def test_defaults_equal_the_spec_table() -> None:
    s = load_settings()
    assert s.bootstrap_servers == "localhost:9092"
    assert s.input_topic == ["images.uploaded"]
    assert s.output_topic == "images.deepfake-scores"
    assert s.dlq_topic == "images.deepfake-dlq"
    assert s.group_id == "deepfake-processor"
    assert s.model_dir is None  # the bundled demo model
    assert s.model_variant is Variant.AUTO
    assert s.providers is Providers.AUTO
    assert s.require_gpu is False
    assert s.max_batch_size == 32
    assert s.max_batch_wait_ms == 5
    assert s.max_in_flight == 1024
    assert s.decode_workers == usable_cpus()
    assert s.delivery is Delivery.AT_LEAST_ONCE
    assert s.fake_label is None  # from config.json
    assert s.fake_threshold == 0.5
    assert int(s.max_image_bytes) == 20 * MiB
    assert s.max_image_pixels == 50_000_000
    assert s.image_url_allowlist == []
    assert (s.http_host, s.http_port) == ("0.0.0.0", 8007)
    assert (s.log_level, s.log_format) == ("INFO", LogFormat.JSON)
    assert s.shutdown_timeout_s == 30
    assert s.kafka == {}


def test_dfp_env_vars_set_every_kind_of_field(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "DFP_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "DFP_OUTPUT_TOPIC": "out",
        "DFP_DLQ_TOPIC": "dlq",
        "DFP_GROUP_ID": "g1",
        "DFP_MODEL_DIR": str(tmp_path),
        "DFP_MODEL_VARIANT": "int8",
        "DFP_PROVIDERS": "cpu",
        "DFP_REQUIRE_GPU": "true",
        "DFP_MAX_BATCH_SIZE": "8",
        "DFP_MAX_BATCH_WAIT_MS": "2.5",
        "DFP_DELIVERY": "exactly-once",
        "DFP_FAKE_LABEL": "Deepfake",
        "DFP_FAKE_THRESHOLD": "0.8",
        "DFP_MAX_IMAGE_BYTES": "1048576",
        "DFP_MAX_IMAGE_PIXELS": "1000",
        "DFP_HTTP_PORT": "0",
        "DFP_LOG_LEVEL": "debug",
        "DFP_LOG_FORMAT": "text",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert s.bootstrap_servers == "k1:9092,k2:9092"
    assert (s.output_topic, s.dlq_topic, s.group_id) == ("out", "dlq", "g1")
    assert s.model_dir == tmp_path
    assert s.model_variant is Variant.INT8 and s.providers is Providers.CPU and s.require_gpu is True
    assert (s.max_batch_size, s.max_batch_wait_ms) == (8, 2.5)
    assert s.delivery is Delivery.EXACTLY_ONCE
    assert (s.fake_label, s.fake_threshold) == ("Deepfake", 0.8)
    assert (int(s.max_image_bytes), s.max_image_pixels) == (MiB, 1000)
    assert s.http_port == 0
    assert (s.log_level, s.log_format) == ("DEBUG", LogFormat.TEXT)


def test_overrides_win_over_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFP_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("DFP_GROUP_ID", "from-env")
    s = load_settings({"max_batch_size": "16"})
    assert s.max_batch_size == 16
    assert s.group_id == "from-env"


def test_input_topic_is_a_comma_list_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFP_INPUT_TOPIC", "a, b ,c")
    assert load_settings().input_topic == ["a", "b", "c"]


def test_image_url_allowlist_is_a_comma_list_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFP_IMAGE_URL_ALLOWLIST", "cdn.facesocial.example,*.facesocial.example")
    assert load_settings().image_url_allowlist == ["cdn.facesocial.example", "*.facesocial.example"]


def test_comma_list_override_is_split_too() -> None:
    assert load_settings({"input_topic": "x,y"}).input_topic == ["x", "y"]


def test_kafka_passthrough_maps_env_names_to_librdkafka_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFP_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("DFP_KAFKA_SESSION_TIMEOUT_MS", "6000")
    assert load_settings().kafka == {"security.protocol": "SASL_SSL", "session.timeout.ms": "6000"}


def test_kafka_override_adds_to_env_passthrough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFP_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    s = load_settings({"kafka": {"sasl.mechanism": "PLAIN"}})
    assert s.kafka == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}


@pytest.mark.parametrize(
    ("env_name", "value"),
    [
        ("DFP_MAX_BATCH_SIZE", "0"),
        ("DFP_MAX_BATCH_SIZE", "many"),
        ("DFP_MAX_BATCH_WAIT_MS", "-1"),
        ("DFP_MAX_IN_FLIGHT", "0"),
        ("DFP_DECODE_WORKERS", "0"),
        ("DFP_FAKE_THRESHOLD", "1.5"),
        ("DFP_MAX_IMAGE_BYTES", "lots"),
        ("DFP_MAX_IMAGE_PIXELS", "0"),
        ("DFP_MODEL_VARIANT", "fp8"),
        ("DFP_PROVIDERS", "tpu"),
        ("DFP_DELIVERY", "at-most-once"),
        ("DFP_REQUIRE_GPU", "perhaps"),
        ("DFP_HTTP_PORT", "70000"),
        ("DFP_LOG_LEVEL", "LOUD"),
        ("DFP_LOG_FORMAT", "xml"),
        ("DFP_INPUT_TOPIC", " , "),
        ("DFP_SHUTDOWN_TIMEOUT_S", "0"),
    ],
)
def test_invalid_env_value_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env_name: str, value: str
) -> None:
    monkeypatch.setenv(env_name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert env_name in str(info.value)


def test_invalid_override_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="DFP_MAX_BATCH_SIZE"):
        load_settings({"max_batch_size": "0"})


@pytest.mark.parametrize("clashing", ["DFP_OUTPUT_TOPIC", "DFP_DLQ_TOPIC"])
def test_output_topic_equal_to_an_input_topic_is_refused(monkeypatch: pytest.MonkeyPatch, clashing: str) -> None:
    monkeypatch.setenv("DFP_INPUT_TOPIC", "in-a,in-b")
    monkeypatch.setenv(clashing, "in-b")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert clashing in message and "DFP_INPUT_TOPIC" in message and "in-b" in message


def test_cuda_graphs_without_batch_buckets_is_refused_naming_both_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFP_CUDA_GRAPHS", "true")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "DFP_CUDA_GRAPHS" in str(info.value) and "DFP_BATCH_BUCKETS" in str(info.value)


def test_cuda_graphs_need_a_bucket_as_large_as_the_batch_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFP_CUDA_GRAPHS", "true")
    monkeypatch.setenv("DFP_BATCH_BUCKETS", "1,8,16")
    with pytest.raises(ConfigError, match="DFP_MAX_BATCH_SIZE"):
        load_settings()
    monkeypatch.setenv("DFP_MAX_BATCH_SIZE", "16")
    s = load_settings()
    assert s.cuda_graphs is True and s.batch_buckets == [1, 8, 16]


def test_cuda_graphs_are_off_by_default() -> None:
    assert load_settings().cuda_graphs is False


def test_decode_workers_default_to_the_cpus_this_process_may_run_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # A container limited by cpuset (or a pinned process) sees 3 CPUs where os.cpu_count() reports the host's 64.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert usable_cpus() == 3
    assert load_settings().decode_workers == 3

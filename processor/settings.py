"""Every setting of the processor in one pydantic-settings class (env `DFP_*`, flags `--name-with-dashes`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import ByteSize, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.cpus import usable_cpus
from processor.errors import ConfigError
from processor.policies import PolicyName

ENV_PREFIX = "DFP_"
KAFKA_PREFIX = ENV_PREFIX + "KAFKA_"
MiB = 1024 * 1024


class Delivery(StrEnum):
    """DELIVERY: at-least-once (idempotent producer) or exactly-once (transactions)."""

    AT_LEAST_ONCE = "at-least-once"
    EXACTLY_ONCE = "exactly-once"


class Providers(StrEnum):
    """PROVIDERS: which ONNX Runtime execution providers to try, best first."""

    AUTO = "auto"
    TENSORRT = "tensorrt"
    CUDA = "cuda"
    CPU = "cpu"


class Variant(StrEnum):
    """MODEL_VARIANT: which ONNX file of the model directory to load."""

    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    Q4 = "q4"
    BNB4 = "bnb4"


class LogFormat(StrEnum):
    """LOG_FORMAT: JSON lines for machines, key=value text for humans."""

    JSON = "json"
    TEXT = "text"


def default_trt_cache_dir() -> Path:
    """$XDG_CACHE_HOME/deepfake-processor/trt, else ~/.cache/deepfake-processor/trt."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepfake-processor" / "trt"


CommaList = Annotated[list[str], NoDecode]
CommaInts = Annotated[list[int], NoDecode]


class Settings(BaseSettings):
    """The settings, plus a few tuning knobs (each documented in the README settings table)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, case_sensitive=False, extra="ignore", frozen=True, validate_default=True
    )

    bootstrap_servers: str = Field("localhost:9092", min_length=1, description="Kafka bootstrap list")
    input_topic: CommaList = Field(["images.uploaded"], description="Input topic(s), a comma list")
    output_topic: str = Field("images.deepfake-scores", min_length=1, description="Result topic")
    dlq_topic: str = Field("images.deepfake-dlq", min_length=1, description="Dead-letter topic")
    group_id: str = Field("deepfake-processor", min_length=1, description="Consumer group id")
    model_dir: Path | None = Field(None, description="Model directory (see docs) or one .onnx file; unset = bundled")
    model_variant: Variant = Field(Variant.AUTO, description="fp32, fp16, int8, q4, bnb4 or auto")
    providers: Providers = Field(Providers.AUTO, description="auto (TensorRT→CUDA→CPU), tensorrt, cuda, cpu")
    require_gpu: bool = Field(False, description="Refuse to start when only the CPU provider is available")
    max_batch_size: int = Field(32, ge=1, le=1024, description="Images per inference call")
    max_batch_wait_ms: float = Field(5.0, ge=0, le=60_000, description="Longest a ready image waits for its batch")
    latency_target_ms: float | None = Field(
        None, gt=0, description="When set, adapt batch size and wait online to keep p99 end-to-end under it"
    )
    batch_policy: PolicyName | None = Field(
        None,
        description="Batching policy: fixed, triton, cork, aimd or slo (docs/BENCHMARKS.md); unset = slo when "
        "DFP_LATENCY_TARGET_MS is set, else fixed",
    )
    defer_lost_partitions: bool = Field(
        True,
        description="slo policy: under overload, decode and batch the partitions whose head can still make "
        "DFP_LATENCY_TARGET_MS first (results stay in offset order within a partition); false = consume order",
    )
    batch_buckets: CommaInts = Field(
        [], description="Static batch shapes: pad each batch to the next of these sizes (warmed); empty = dynamic"
    )
    cuda_graphs: bool = Field(
        False,
        description="Capture one CUDA graph per DFP_BATCH_BUCKETS size during warm-up and replay it (CUDA provider; "
        "needs buckets)",
    )
    trt_cache_dir: Path = Field(
        default_factory=default_trt_cache_dir,
        description="TensorRT engine cache, created at start when TensorRT may run; mount a volume in containers",
    )
    max_in_flight: int = Field(1024, ge=1, description="Events consumed but not committed; above it, pause")
    decode_workers: int = Field(
        default_factory=usable_cpus,
        ge=1,
        le=256,
        description="Decode/preprocess threads (cores: the CPUs this process may run on, its affinity)",
    )
    inference_threads: int = Field(
        0, ge=0, le=256, description="ONNX Runtime intra-op threads; 0 = cores (as DECODE_WORKERS)"
    )
    delivery: Delivery = Field(Delivery.AT_LEAST_ONCE, description="at-least-once or exactly-once")
    transactional_id: str | None = Field(
        None,
        description="exactly-once: transactional.id (default GROUP_ID-hostname-random, unique per instance; KIP-447)",
    )
    fake_label: str | None = Field(None, description="Which id2label entry means fake (default: fake/deepfake/spoof)")
    fake_threshold: float = Field(0.5, ge=0.0, le=1.0, description="is_fake = fake_score >= threshold")
    max_image_bytes: ByteSize = Field(
        ByteSize(20 * MiB), gt=0, description="Larger images go to the DLQ (accepts 20MiB-style sizes)"
    )
    max_image_pixels: int = Field(50_000_000, gt=0, description="Checked from the image header before decoding")
    max_faces: int = Field(64, ge=1, le=4096, description="More face boxes than this → invalid_schema")
    image_url_allowlist: CommaList = Field([], description="Hosts image_url may be fetched from; empty = off")
    fetch_timeout_s: float = Field(10.0, gt=0, description="image_url connect+read timeout")
    http_host: str = Field("0.0.0.0", description="Bind address of the HTTP server")
    http_port: int = Field(8007, ge=0, le=65535, description="Health/metrics port; 0 = pick a free one")
    http_api: bool = Field(True, description="Serve POST /detect and /detect/batch")
    detect_max_batch: int = Field(32, ge=1, le=1024, description="Most images in one POST /detect/batch")
    detect_timeout_s: float = Field(30.0, gt=0, description="Longest a /detect request waits for its result")
    detect_max_concurrent: int = Field(
        64, ge=1, le=10_000, description="/detect requests scored at once (slot taken once the body is in); 503 beyond"
    )
    detect_body_timeout_s: float = Field(60.0, gt=0, description="Longest a /detect body may take to arrive; 408 after")
    api_token: SecretStr | None = Field(
        None, description="Bearer token that /detect* and /admin/* require; probes and /metrics stay open"
    )
    api_token_file: Path | None = Field(None, description="File holding the API token (read at start), instead of it")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    log_format: LogFormat = Field(LogFormat.JSON, description="json or text")
    admin_api: bool = Field(False, description="Serve POST /admin/reload (hot model swap); SIGHUP always works")
    commit_interval_ms: int = Field(1000, ge=10, description="How often acknowledged offsets are committed")
    shutdown_timeout_s: float = Field(30.0, gt=0, description="SIGTERM drain budget before exit")
    kafka: dict[str, str] = Field(default_factory=dict, description="librdkafka passthrough (DFP_KAFKA_<KEY>)")

    def __repr_args__(self) -> Any:
        """Pydantic's repr fields, with secret-looking librdkafka passthrough values masked (see `redact`)."""
        for name, value in super().__repr_args__():
            yield name, (redact(value) if name == "kafka" else value)

    @field_validator("input_topic", "image_url_allowlist", "batch_buckets", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("input_topic")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one input topic is required")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @model_validator(mode="after")
    def _outputs_differ_from_inputs(self) -> Settings:
        clash = {self.output_topic, self.dlq_topic} & set(self.input_topic)
        if clash:
            raise ValueError(
                f"DFP_OUTPUT_TOPIC / DFP_DLQ_TOPIC must not also be an input topic (DFP_INPUT_TOPIC): {sorted(clash)}"
            )
        return self

    @model_validator(mode="after")
    def _policy_needs_its_target(self) -> Settings:
        if self.batch_policy in (PolicyName.AIMD, PolicyName.SLO) and not self.latency_target_ms:
            raise ValueError(
                f"DFP_BATCH_POLICY={self.batch_policy.value} needs DFP_LATENCY_TARGET_MS (the p99 target it adapts to)"
            )
        return self

    @model_validator(mode="after")
    def _cuda_graphs_need_buckets(self) -> Settings:
        # A CUDA graph replays one fixed input shape, so every batch must be padded to a bucket it was captured for.
        if not self.cuda_graphs:
            return self
        buckets = [b for b in self.batch_buckets if b > 0]
        if not buckets:
            raise ValueError("DFP_CUDA_GRAPHS=true needs DFP_BATCH_BUCKETS (one captured graph per static batch size)")
        if max(buckets) < self.max_batch_size:
            raise ValueError(
                f"DFP_CUDA_GRAPHS=true needs a DFP_BATCH_BUCKETS size >= DFP_MAX_BATCH_SIZE ({self.max_batch_size}) "
                f"so every batch fits a captured shape (largest bucket: {max(buckets)})"
            )
        return self


#: A librdkafka key naming one of these holds (or locates) a credential: never logged or shown.
SECRET_KEY_MARKERS = ("password", "secret", "key")
REDACTED = "***"


def is_secret_key(key: str) -> bool:
    """Whether a librdkafka property (e.g. `sasl.password`, `ssl.key.pem`) must be masked wherever it is shown."""
    lowered = key.lower()
    return any(marker in lowered for marker in SECRET_KEY_MARKERS)


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a librdkafka config that is safe to log: secret-looking keys (`is_secret_key`) are masked."""
    return {key: (REDACTED if is_secret_key(key) else value) for key, value in config.items()}


def kafka_passthrough(environ: dict[str, str]) -> dict[str, str]:
    """`DFP_KAFKA_SECURITY_PROTOCOL=SASL_SSL` → {"security.protocol": "SASL_SSL"}."""
    return {
        key[len(KAFKA_PREFIX) :].lower().replace("_", "."): value
        for key, value in environ.items()
        if key.upper().startswith(KAFKA_PREFIX) and len(key) > len(KAFKA_PREFIX)
    }


def env_name(field: str) -> str:
    """The environment variable of a settings field (`max_batch_size` → `DFP_MAX_BATCH_SIZE`)."""
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    """The command-line flag of a settings field (`max_batch_size` → `--max-batch-size`)."""
    return "--" + field.replace("_", "-")


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Build Settings from `DFP_*` env vars plus CLI overrides; any invalid value → ConfigError naming it."""
    values = dict(overrides or {})
    kafka = kafka_passthrough(dict(os.environ))
    kafka.update(values.pop("kafka", None) or {})
    try:
        return Settings(**values, kafka=kafka)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        where = f"{env_name(field)} / {flag_name(field)}" if field in Settings.model_fields else "settings"
        got = err.get("input")
        shown = f" (got {got!r})" if isinstance(got, str | int | float) else ""
        lines.append(f"invalid setting {where}: {err['msg']}{shown}")
    return "; ".join(lines)


def settings_table() -> str:
    """The README's settings table, generated from the class so the docs cannot drift (a test compares)."""
    rows = ["| env var | flag | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if name == "kafka":
            rows.append("| `DFP_KAFKA_<KEY>` | `--kafka KEY=VALUE` | | librdkafka passthrough: "
                        "`DFP_KAFKA_SECURITY_PROTOCOL=SASL_SSL` → `security.protocol` |")  # fmt: skip
            continue
        default = "cores" if name == "decode_workers" else _default_text(field.default)
        if name == "trt_cache_dir":
            default = "`$XDG_CACHE_HOME/deepfake-processor/trt` (`~/.cache/…` without it)"
        rows.append(f"| `{env_name(name)}` | `{flag_name(name)}` | {default} | {field.description} |")
    return "\n".join(rows) + "\n"


def _default_text(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, StrEnum):
        return f"`{value.value}`"
    if isinstance(value, list):
        return f"`{','.join(value)}`" if value else "empty"
    return f"`{value}`"

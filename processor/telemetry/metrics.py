"""Prometheus metric families (all `deepfake_*`), on a registry of their own so tests and the bench can make many."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from processor.errors import ERROR_CODES

STAGES: tuple[str, ...] = ("queue", "decode", "inference", "produce", "end_to_end")
_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# `*_created` series double the scrape size and no dashboard reads them.
disable_created_metrics()


@dataclass
class Metrics:
    """Every metric the processor exports. Names are part of the contract (docs/OPERATIONS.md, dashboards, alerts)."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        self.consumed = Counter("deepfake_events_consumed", "Input events consumed from Kafka", ["topic"], registry=r)
        self.scored = Counter("deepfake_events_scored", "Events scored, by result label", ["label"], registry=r)
        self.dead_lettered = Counter(
            "deepfake_events_dead_lettered",
            "Events sent to the dead-letter topic, by error code",
            ["code"],
            registry=r,
        )
        self.produce_errors = Counter(
            "deepfake_produce_errors", "Outputs whose delivery to Kafka failed", ["topic"], registry=r
        )
        self.commits = Counter("deepfake_offset_commits", "Offset commits sent to the group coordinator", registry=r)
        self.commit_failures = Counter(
            "deepfake_commit_failures",
            "Offset commits the group coordinator refused (those offsets are sent again with the next commit)",
            registry=r,
        )
        self.payload_truncated = Counter(
            "deepfake_payload_truncated",
            "Dead letters re-sent with the payload cut because the topic (label) refused the message for size",
            ["topic"],
            registry=r,
        )
        # /detect traffic is not Kafka events: counted apart so events_scored still matches the input topic.
        self.api_requests = Counter(
            "deepfake_api_requests", "Requests to the /detect API, by route and HTTP status", ["route", "status"],
            registry=r,
        )  # fmt: skip
        self.api_images = Counter(
            "deepfake_api_images",
            "Images the /detect API answered, by route and outcome (result label or error code)",
            ["route", "outcome"],
            registry=r,
        )
        self.decode_deferred = Counter(
            "deepfake_decode_deferred",
            "Events decoded ahead of an older partition head that had already lost its latency target (slo policy)",
            registry=r,
        )
        self.batch_deferred = Counter(
            "deepfake_batch_deferred",
            "Events batched ahead of an older partition head that had already lost its latency target (slo policy)",
            registry=r,
        )
        self.batch_size = Histogram(
            "deepfake_batch_size", "Images per inference call", buckets=_BATCH_BUCKETS, registry=r
        )
        self.stage_latency = Histogram(
            "deepfake_stage_latency_seconds",
            "Per-stage latency; end_to_end runs from the input's Kafka timestamp to the output's acknowledgement",
            ["stage"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_limit = Gauge(
            "deepfake_batch_limit",
            "Current batch size limit (SLO-adaptive when DFP_LATENCY_TARGET_MS is set)",
            registry=r,
        )
        self.batch_wait = Gauge(
            "deepfake_batch_wait_seconds", "Current longest wait for a batch to fill (SLO-adaptive)", registry=r
        )
        self.consumer_lag = Gauge(
            "deepfake_consumer_lag",
            "Consumer lag in messages per assigned partition",
            ["topic", "partition"],
            registry=r,
        )
        self.in_flight = Gauge("deepfake_in_flight_events", "Events consumed but not yet committed", registry=r)
        self.paused = Gauge("deepfake_consumer_paused", "1 while the consumer is paused for backpressure", registry=r)
        self.assigned = Gauge("deepfake_assigned_partitions", "Partitions assigned to this instance", registry=r)
        self.ready = Gauge("deepfake_ready", "1 when model is warm and the consumer has joined its group", registry=r)
        self.model_info = Gauge(
            "deepfake_model_info",
            "The model being served (value is always 1)",
            ["name", "variant", "provider", "sha256"],
            registry=r,
        )
        self.gpu_memory_used = Gauge("deepfake_gpu_memory_used_bytes", "GPU memory in use (device)", registry=r)
        self.gpu_memory_total = Gauge("deepfake_gpu_memory_total_bytes", "GPU memory total (device)", registry=r)
        self.gpu_utilization = Gauge("deepfake_gpu_utilization_ratio", "GPU utilisation 0..1", registry=r)
        for code in ERROR_CODES:
            self.dead_lettered.labels(code=code)
        for stage in STAGES:
            self.stage_latency.labels(stage=stage)

    def set_model(self, name: str, variant: str, provider: str, sha256: str) -> None:
        """Point the model-info series at the serving model (the old series is removed on a swap)."""
        self.model_info.clear()
        self.model_info.labels(name=name, variant=variant, provider=provider, sha256=sha256).set(1)

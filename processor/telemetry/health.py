"""Shared health state: written by the pipeline stages, read by /health, /readyz and the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from processor import SERVICE_NAME
from schemas.api import HealthResponse, KafkaHealth, MemoryUsage, ModelHealth


def unknown_memory() -> dict[str, float | None]:
    """GPU memory as /health reports it when nothing is known (no GPU, or NVML cannot see it): all null."""
    return {"gpu_memory_percent": None, "used_mb": None, "total_mb": None}


@dataclass
class Health:
    """What the processor knows about itself; written by the pipeline, read by HTTP handlers."""

    model_loaded: bool = False
    warmed_up: bool = False
    joined_group: bool = False
    kafka_connected: bool = False
    stopping: bool = False
    fatal: str | None = None
    gpu_available: bool = False
    provider: str | None = None
    variant: str | None = None
    model_name: str | None = None
    model_sha256: str | None = None
    assigned_partitions: int = 0
    lag: int | None = None
    kafka_last_error: str | None = None  # librdkafka's latest error (e.g. SASL or TLS refusals), never credentials
    memory: dict[str, float | None] = field(default_factory=unknown_memory)

    @property
    def ready(self) -> bool:
        """True once the model is loaded and warm and the group joined, until a stop or a fatal error."""
        return self.model_loaded and self.warmed_up and self.joined_group and not self.stopping and not self.fatal

    def status(self) -> Literal["healthy", "degraded", "unhealthy"]:
        """`healthy`, `degraded` (serving but not ready or not connected) or `unhealthy`."""
        if self.fatal or not self.model_loaded:
            return "unhealthy"
        return "healthy" if self.ready and self.kafka_connected else "degraded"

    def document(self) -> dict[str, Any]:
        """The /health JSON body, built from its wire schema (`schemas.HealthResponse`)."""
        return HealthResponse(
            status=self.status(),
            service=SERVICE_NAME,
            ready=self.ready,
            model_loaded=self.model_loaded,
            gpu_available=self.gpu_available,
            provider=self.provider,
            variant=self.variant,
            model=ModelHealth(name=self.model_name, sha256=self.model_sha256),
            memory_usage=MemoryUsage(**self.memory),
            kafka=KafkaHealth(
                connected=self.kafka_connected,
                assigned_partitions=self.assigned_partitions,
                lag=self.lag,
                last_error=self.kafka_last_error,
            ),
            error=self.fatal,
        ).model_dump(mode="json")

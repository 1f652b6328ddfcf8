"""Wires the stages together for `run`: HTTP first (so /readyz answers 503 while loading), model, threads, loop."""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import FrameType
from typing import Any

import cv2

from models.loader import ModelFiles, resolve_model
from processor.batcher import MicroBatcher
from processor.consumer import StreamLoop
from processor.decode import DecodeLimits, DecodePool, Decoder, Preprocessor
from processor.decode_order import DecodeOrder
from processor.engine import Engine
from processor.envelope import ENVELOPE_ALLOWANCE_BYTES
from processor.errors import ConfigError, ProcessorError, Unrecoverable
from processor.fetch import UrlFetcher
from processor.http.server import HttpServer
from processor.inflight import InFlight
from processor.outcomes import Decided, Outcomes
from processor.providers import gpu_provider_listed
from processor.publish import Publisher, producer_config
from processor.scorer import Scorer
from processor.settings import Delivery, MiB, Providers, Settings
from processor.slo import SloController
from processor.telemetry.gpu import GpuMonitor
from processor.telemetry.health import Health
from processor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)
SIGNAL_LOG_WAIT_S = 1.0  # the second signal's record gets this long to be written before the process exits


def load_engine(settings: Settings, model_dir: Path | None = None, variant: str | None = None) -> Engine:
    """Open the model (settings' directory and variant unless given) on the best provider; CPU variant on fallback."""
    model_dir = model_dir or settings.model_dir
    variant = variant or settings.model_variant.value

    def open_engine(gpu: bool, wanted: str, providers: Providers) -> Engine:
        model: ModelFiles = resolve_model(model_dir, wanted, gpu=gpu)
        return Engine(model, providers, require_gpu=settings.require_gpu,
                      threads=settings.inference_threads, fake_label=settings.fake_label,
                      threshold=settings.fake_threshold, cuda_graphs=settings.cuda_graphs,
                      batch_buckets=tuple(settings.batch_buckets),
                      trt_cache_dir=settings.trt_cache_dir, max_batch_size=settings.max_batch_size)  # fmt: skip

    engine = open_engine(gpu_provider_listed(settings.providers), variant, settings.providers)
    if not engine.gpu and engine.model.variant == "fp16" and variant == "auto":
        # A GPU was listed but the session fell back to CPU (already logged once): fp16 is the slow choice
        # there, so reload the CPU pick on the CPU provider without trying the GPU again.
        engine = open_engine(False, "auto", Providers.CPU)
    return engine


class Processor:
    """The running service. `engine` may be swapped between batches (the scorer reads it per batch)."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.health = Health()
        # /detect is routed from the start, so it answers 503 (not 404) while the model loads.
        self.http = HttpServer.from_settings(settings, self.health, self.metrics, self.submit_detect, self.reload)
        self.gpu: GpuMonitor | None = None
        self.engine: Engine | None = None
        self.loop: StreamLoop | None = None
        self.scorer: Scorer | None = None
        self.decode: DecodePool | None = None
        self._signals = 0
        self._stop_early = False
        self._reload_lock = threading.Lock()
        self.metrics.ready.set_function(lambda: 1.0 if self.health.ready else 0.0)

    def build(self) -> None:
        """Start HTTP, load and warm the model, then build the stages and connect them (see README's architecture)."""
        s = self.settings
        self.http.start()
        engine = load_engine(s)
        self.engine = engine
        self.health.model_loaded = True
        self._publish_model(engine)
        pre = Preprocessor(engine.model.preprocess)
        engine.warm_up(pre.shape, self._warm_sizes())
        self.health.warmed_up = True
        slo = None
        if s.latency_target_ms:
            slo = SloController(s.latency_target_ms / 1000.0, s.max_batch_size, s.max_batch_wait_ms / 1000.0)
        batcher = MicroBatcher(
            s.max_batch_size,
            s.max_batch_wait_ms / 1000.0,
            pre.shape,
            buckets=tuple(s.batch_buckets),
            slo=slo,
            policy=s.batch_policy,
            defer_lost=s.defer_lost_partitions,
            on_deferred=self.metrics.batch_deferred.inc,
        )
        fetcher = (
            UrlFetcher(s.image_url_allowlist, max_bytes=int(s.max_image_bytes), read_timeout_s=s.fetch_timeout_s)
            if s.image_url_allowlist
            else None
        )
        limits = DecodeLimits(int(s.max_image_bytes), s.max_image_pixels, s.max_faces)
        decided: Decided = queue.SimpleQueue()
        outcomes = Outcomes(s.output_topic, s.dlq_topic, self.metrics, decided)
        target_s = batcher.policy.triage_target_s if s.defer_lost_partitions else None
        order = DecodeOrder(target_s, self.metrics.decode_deferred.inc, batcher.policy.decode_remaining_s)
        self.decode = DecodePool(Decoder(pre, limits, fetcher), s.decode_workers, batcher.put, outcomes.decide, order)
        scorer = self.scorer = Scorer(batcher, lambda: self._engine(), outcomes.decide, self.metrics)
        max_message = max(64 * MiB, int(s.max_image_bytes) * 4 // 3 + ENVELOPE_ALLOWANCE_BYTES + MiB)
        txn_id = None
        if s.delivery is Delivery.EXACTLY_ONCE:
            # Unique per live instance: with KIP-447 (offsets sent with the group metadata) fencing follows the group
            # generation, so two pods with the same hostname (or a restart) must not fence each other's producer.
            txn_id = s.transactional_id or f"{s.group_id}-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        publisher = Publisher(
            producer_config(s.bootstrap_servers, s.kafka, max_message, txn_id),
            outcomes.delivered,
            self.metrics,
            dlq_topic=s.dlq_topic,
        )
        if txn_id:
            publisher.producer.init_transactions(30)
        self.loop = StreamLoop(
            s, self.decode, decided, publisher, self.metrics, self.health, batch_seconds=lambda: scorer.batch_seconds
        )
        self.scorer.start()

    def submit_detect(self, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> Future[InFlight]:
        """Score one image outside Kafka (the /detect API); the future resolves to the finished InFlight."""
        if self.decode is None or not self.health.warmed_up:
            raise RuntimeError("not ready")
        item = InFlight(
            topic="http",
            partition=-1,
            offset=-1,
            key=None,
            value=value,
            headers=headers,
            timestamp_ms=None,
            waiter=Future(),
        )
        self.decode.submit(item)
        assert item.waiter is not None
        return item.waiter

    def reload(self, model_dir: Path | None = None, variant: str | None = None) -> dict[str, Any]:
        """Hot swap: load, validate and warm a model beside the serving one, then swap between two batches.

        The scorer reads `self.engine` once per batch and stamps each event with the engine that scored it,
        so no event is lost or scored twice and results carry the new `model` from the first batch after.
        A model that fails to load or warm, or needs different preprocessing, is refused; the old one serves on.
        """
        with self._reload_lock:
            old = self._engine()
            try:
                new = load_engine(self.settings, model_dir, variant)
                if new.model.preprocess != old.model.preprocess:
                    raise ConfigError("new model needs different preprocessing; restart the processor to switch")
                new.warm_up(Preprocessor(new.model.preprocess).shape, self._warm_sizes())
            except Exception as exc:  # any failure (load, validation, warm-up) keeps the serving model
                log.error("model reload refused; old model keeps serving", extra={"error": str(exc)[:500]})
                return {"swapped": False, "error": str(exc)[:500], "model": old.ref.model_dump()}
            self.engine = new
            self._publish_model(new)
            log.info(
                "model swapped",
                extra={"model": new.model.name, "variant": new.model.variant, "sha256": new.model.sha256[:12]},
            )
            return {"swapped": True, "model": new.ref.model_dump(), "previous": old.ref.model_dump()}

    def _publish_model(self, engine: Engine) -> None:
        self.health.gpu_available, self.health.provider = engine.gpu, engine.provider
        self.health.variant, self.health.model_name = engine.model.variant, engine.model.name
        self.health.model_sha256 = engine.model.sha256
        self.metrics.set_model(engine.model.name, engine.model.variant, engine.provider, engine.model.sha256)
        self.gpu = GpuMonitor.follow(self.gpu, engine.gpu, self.metrics, self.health)

    def on_sighup(self, signum: int, frame: FrameType | None) -> None:
        """SIGHUP: reload the model from the same settings on a thread of its own."""
        threading.Thread(target=self.reload, name="reload", daemon=True).start()

    def _warm_sizes(self) -> tuple[int, ...]:
        """Every batch shape the engine will see when static buckets are set, else the extremes.

        With DFP_CUDA_GRAPHS each bucket's graph is captured on its first run, so warming every bucket here is
        what keeps the capture (seconds for a big model) before /readyz instead of on live traffic.
        """
        return tuple(sorted({1, self.settings.max_batch_size, *self.settings.batch_buckets}))

    def _engine(self) -> Engine:
        assert self.engine is not None
        return self.engine

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (exit 0 after draining) or a fatal error (exit 1)."""
        assert self.loop is not None and self.scorer is not None and self.decode is not None
        loop, scorer = self.loop, self.scorer
        if self._stop_early:
            loop.stop_requested.set()
        code = 0
        try:
            loop.run(lambda: scorer.fatal)
        except (Unrecoverable, ProcessorError) as exc:
            self.health.fatal = str(exc)
            self.metrics.ready.set(0)
            log.error("stopping on a fatal error", extra={"error": str(exc)})
            code = 1
        left = loop.shutdown(self.settings.shutdown_timeout_s)
        scorer.stop()
        self.decode.shutdown(wait=False)
        if self.gpu is not None:
            self.gpu.stop()
        self.http.stop()
        log.info("stopped", extra={"exit_code": code, "left_for_redelivery": left})
        return code

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: drain and stop; a second signal exits at once with 1."""
        self._signals += 1
        if self._signals > 1:
            _log_outside_handler(log.error, "second signal: exiting now without draining").join(SIGNAL_LOG_WAIT_S)
            os._exit(1)
        _log_outside_handler(log.info, "signal received: draining", extra={"signal": signal.Signals(signum).name})
        self._stop_early = True
        if self.loop is not None:
            self.loop.stop_requested.set()


def _log_outside_handler(emit: Callable[..., None], msg: str, **kwargs: Any) -> threading.Thread:
    """Write a log record from a thread of its own, for a signal handler.

    A Python signal handler runs on the main thread between two bytecodes, possibly in the middle of that
    thread's own log write (librdkafka's log callback inside `producer.poll`): logging from the handler
    re-enters the stream ("RuntimeError: reentrant call inside <_io.BufferedWriter>", a `--- Logging error
    ---` banner in place of a JSON line). This thread waits for the handler's lock like any other writer.
    """
    thread = threading.Thread(target=emit, args=(msg,), kwargs=kwargs, name="signal-log", daemon=True)
    thread.start()
    return thread


def run(settings: Settings) -> int:
    """The `run` command: install signal handlers, build, serve; returns the exit code."""
    cv2.setNumThreads(1)  # parallelism comes from the decode pool; cv2's own threads would oversubscribe cores
    processor = Processor(settings)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, processor.request_stop)
        signal.signal(signal.SIGINT, processor.request_stop)
        signal.signal(signal.SIGHUP, processor.on_sighup)
    processor.build()
    return processor.run()

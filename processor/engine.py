"""Inference engine: the one ONNX Runtime session, the provider it really runs on, warm-up, logits → probabilities."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.cpus import usable_cpus
from models.loader import ModelFiles, fake_class_index
from models.postprocess import probabilities
from processor.errors import ConfigError
from processor.logs import NativeLine, emit_native, native_output_captured
from processor.providers import (
    CPU,
    CUDA,
    GPU_PROVIDERS,
    GRAPHS_CUDA,
    GRAPHS_OFF,
    GRAPHS_TENSORRT,
    TRT,
    TrtProfile,
    ensure_trt_cache_dir,
    gpu_driver_present,
    plan_providers,
    preload_cuda_libraries,
    provider_options,
)
from processor.settings import Providers, default_trt_cache_dir
from processor.static_binding import StaticBindings, TensorSpec
from schemas import ModelRef

log = logging.getLogger(__name__)
_ort_log = logging.getLogger("onnxruntime")
ORT_WARNING = 2  # ORT severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal
INPUT_NAME = "pixel_values"  # docs/MODELS.md; `models validate` refuses a model whose one input is named otherwise
MAX_FACES_DEFAULT = 64


@dataclass(frozen=True, slots=True)
class Labels:
    """id2label plus which class means fake; turns a row of probabilities into the result's label fields."""

    names: tuple[str, ...]
    fake_index: int
    threshold: float

    def fields(self, probs: Sequence[float]) -> tuple[str, bool, float, dict[str, float]]:
        """(label, is_fake, fake_score, scores by label) of one row of probabilities."""
        fake_score = float(probs[self.fake_index])
        is_fake = fake_score >= self.threshold
        if is_fake:
            label = self.names[self.fake_index]
        else:
            others = [i for i in range(len(self.names)) if i != self.fake_index]
            label = self.names[max(others, key=lambda i: probs[i])] if others else self.names[self.fake_index]
        scores = {name: round(float(p), 6) for name, p in zip(self.names, probs, strict=True)}
        return label, is_fake, round(fake_score, 6), scores


class Engine:
    """Owns the session. `infer` is called from the scoring thread only."""

    def __init__(
        self,
        model: ModelFiles,
        providers: Providers,
        *,
        require_gpu: bool,
        threads: int = 0,
        fake_label: str | None = None,
        threshold: float = 0.5,
        cuda_graphs: bool = False,
        batch_buckets: tuple[int, ...] = (),
        trt_cache_dir: Path | None = None,
        max_batch_size: int = 32,
    ) -> None:
        self.model = model
        names = tuple(model.id2label[i] for i in sorted(model.id2label))
        self.labels = Labels(names, fake_class_index(model.id2label, fake_label), threshold)
        buckets = tuple(sorted({b for b in batch_buckets if b > 0}))
        if cuda_graphs and not buckets:
            raise ConfigError("DFP_CUDA_GRAPHS=true needs DFP_BATCH_BUCKETS (one captured graph per static batch size)")
        self.plan = plan_providers(providers, ort.get_available_providers(), driver=gpu_driver_present(),
                                   cuda_graphs=cuda_graphs, buckets=len(buckets))  # fmt: skip
        # TensorRT's profile covers every batch the engine can be handed: the batcher's bound and buckets, and one
        # event's crops (DFP_MAX_FACES, 64 by default) when it arrives alone.
        largest = max((max_batch_size, *buckets))
        sample = (3, model.preprocess.height, model.preprocess.width)
        profile = TrtProfile(INPUT_NAME, sample, max(largest, MAX_FACES_DEFAULT), largest)
        self.session, native = self._open(model.onnx_path, threads, trt_cache_dir, profile)
        self.provider = self.session.get_providers()[0]
        self.gpu = self.provider in GPU_PROVIDERS
        self._report_provider(providers, native, require_gpu)
        self.graphs = self._graph_mode(cuda_graphs)
        self.input_name, self.output_name = self._io_names()
        # A model exported with fp16 I/O takes half-size tensors: cast on the host (half the H2D bytes)
        # instead of letting a float32 input fail or adding a Cast node.
        self.input_dtype = np.float16 if self.session.get_inputs()[0].type == "tensor(float16)" else np.float32
        # On CUDA, bind inputs/outputs explicitly (one H2D copy, output straight to host memory).
        self._bind = self.provider == "CUDAExecutionProvider"
        self.static = self._static_bindings(buckets) if cuda_graphs else None
        self.cuda_dlls_preloaded = any(p in GPU_PROVIDERS for p in self.plan.providers) and preload_cuda_libraries()
        self.ref = ModelRef(name=model.name, variant=model.variant, provider=self.provider, sha256=model.sha256)
        log.info(
            "model loaded",
            extra={
                "model": model.name,
                "variant": model.variant,
                "provider": self.provider,
                "sha256": model.sha256[:12],
                "path": str(model.onnx_path),
                "cuda_graphs": self.graphs,
                "providers_tried": list(self.plan.providers),
                "cuda_dlls_preloaded": self.cuda_dlls_preloaded,
            },
        )

    def _report_provider(self, choice: Providers, native: list[NativeLine], require_gpu: bool) -> None:
        """One warning when a wanted GPU provider is not what runs (with ORT's own words); the rest as records."""
        if self.gpu or choice is Providers.CPU:
            emit_native(native, _ort_log)
            return
        errors = [line.text for line in native if line.level >= logging.WARNING]
        reason = self.plan.skipped_gpu or next(
            (t for t in errors if "cannot open shared object" in t or "Failed to" in t), errors[0] if errors else ""
        )
        if not any(p in GPU_PROVIDERS for p in self.plan.providers) and not reason:
            reason = (
                f"no GPU provider in this onnxruntime build (available: {', '.join(ort.get_available_providers())})"
            )
        if require_gpu:
            raise ConfigError(f"DFP_REQUIRE_GPU=true but the session runs on {self.provider}: {reason}")
        log.warning(
            "GPU provider not used; running on CPU",
            extra={"event": "provider_fallback", "requested": choice.value, "tried": list(self.plan.providers),
                   "provider": self.provider, "reason": reason, "ort_output": errors or None},
        )  # fmt: skip

    def _graph_mode(self, cuda_graphs: bool) -> str:
        """The CUDA-graph mode the session really got; one line says which and why (a warning when it is off)."""
        if not cuda_graphs:
            return GRAPHS_OFF
        lead = {GRAPHS_CUDA: CUDA, GRAPHS_TENSORRT: TRT}.get(self.plan.graphs)
        mode, reason = self.plan.graphs, self.plan.reason
        if lead != self.provider:
            mode = GRAPHS_OFF
            if self.provider == CPU:
                reason = f"CUDA graphs need the CUDA provider; the session runs on {self.provider}"
            else:
                reason = f"{reason}; but the session runs on {self.provider}, which was not asked to capture"
        level = logging.INFO if mode != GRAPHS_OFF else logging.WARNING
        suffix = "" if mode != GRAPHS_OFF else "; static per-bucket binding only"
        log.log(level, f"CUDA graphs {mode}: {reason}{suffix}", extra={"cuda_graphs": mode, "reason": reason,
                                                                     "provider": self.provider})  # fmt: skip
        return mode

    def _static_bindings(self, buckets: tuple[int, ...]) -> StaticBindings:
        return StaticBindings(
            self.session,
            (self.input_name, self.output_name),
            buckets,
            self._tensor_spec(),
            device="cuda" if self.gpu else "cpu",
            graph_ids=self.graphs == GRAPHS_CUDA,
        )

    def _tensor_spec(self) -> TensorSpec:
        """Fixed shapes for the per-bucket buffers, from the model's configs, not from the graph.

        Optimum / transformers.js exports declare every dim symbolic ([batch_size,num_channels,height,width] ->
        [batch_size,num_labels]): the image size exists only in preprocessor_config.json and the class count
        only in config.json. A dim the graph does fix must agree (a one-logit sigmoid head keeps its 1).
        """
        pre = self.model.preprocess
        sample = (3, pre.height, pre.width)
        declared = self.session.get_inputs()[0].shape[1:]
        for got, want, what in zip(declared, sample, ("channels", "height", "width"), strict=True):
            if isinstance(got, int) and got != want:
                raise ConfigError(
                    f"DFP_MODEL_DIR: the model's input declares {what} {got} but preprocessor_config.json gives "
                    f"{want} (input {self.session.get_inputs()[0].shape})"
                )
        output = next(o for o in self.session.get_outputs() if o.name == self.output_name)
        fixed = output.shape[1] if len(output.shape) == 2 and isinstance(output.shape[1], int) else None
        classes = fixed or len(self.model.id2label)
        out_dtype = np.float16 if output.type == "tensor(float16)" else np.float32
        return TensorSpec(sample, self.input_dtype, classes, out_dtype)

    def _open(
        self, path: Path, threads: int, trt_cache_dir: Path | None, profile: TrtProfile
    ) -> tuple[ort.InferenceSession, list[NativeLine]]:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or usable_cpus()
        # Warnings on: CUDA-graph capture fallbacks and provider load failures are warnings. What ORT prints while
        # providers load goes to fds 1/2, not to this logger, so it is captured and re-emitted as records.
        options.log_severity_level = ORT_WARNING
        ort.set_default_logger_severity(ORT_WARNING)
        # Idle intra-op threads spin by default, burning the cores the decode pool needs between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if TRT in self.plan.providers:
            trt_cache_dir = ensure_trt_cache_dir(trt_cache_dir or default_trt_cache_dir())
        gpu = any(p in GPU_PROVIDERS for p in self.plan.providers)
        with native_output_captured() as native:
            if gpu:
                preload_cuda_libraries()  # before the first CUDA/TensorRT session, once per process
            try:
                providers = provider_options(self.plan, trt_cache_dir, profile)
                session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
            except Exception as exc:  # ORT raises its own Fail/InvalidGraph types; all mean the model cannot serve
                failure: Exception | None = exc
            else:
                failure = None
        if failure is not None:
            emit_native(native, _ort_log)
            raise ConfigError(f"DFP_MODEL_DIR: cannot load {path}: {str(failure)[:500]}") from None
        return session, native

    def _io_names(self) -> tuple[str, str]:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            shapes = [(i.name, i.shape) for i in inputs]
            raise ConfigError(f"DFP_MODEL_DIR: model must take one NCHW input (pixel_values), has {shapes}")
        names = [o.name for o in outputs]
        return inputs[0].name, "logits" if "logits" in names else names[0]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """NCHW float32 batch → (N, C) probabilities. Raises whatever ORT raises; the scorer isolates it."""
        if batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        if self.static is not None:
            logits = self.static.run(batch)
        elif self._bind:
            logits = self._run_bound(batch)
        else:
            logits = self.session.run([self.output_name], {self.input_name: batch})[0]
        if logits.ndim != 2 or logits.shape[0] != batch.shape[0]:
            raise RuntimeError(f"model returned logits of shape {logits.shape} for a batch of {batch.shape[0]}")
        return probabilities(logits)

    def _run_bound(self, batch: np.ndarray) -> np.ndarray:
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, np.ascontiguousarray(batch))
        binding.bind_output(self.output_name, "cpu")
        self.session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0])

    def warm_up(self, sample_shape: tuple[int, ...], batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run once per batch size so the first real batch pays no allocation or kernel-selection cost.

        With CUDA graphs this is where each bucket's graph is captured; ORT's warnings about it (a capture that
        falls back) are printed natively, so they are captured and logged as records.

        Args:
            sample_shape: one image's CHW shape, from the preprocessor config.
            batch_sizes: every batch size to run once.

        Raises:
            ConfigError: non-finite scores on a blank image, or a class count that differs from id2label.
        """
        native: list[NativeLine] = []
        try:
            with native_output_captured() as native:
                self._warm_up(sample_shape, batch_sizes)
        finally:
            emit_native(native, _ort_log)

    def _warm_up(self, sample_shape: tuple[int, ...], batch_sizes: tuple[int, ...]) -> None:
        for n in batch_sizes:
            try:
                probs = self.infer(np.zeros((n, *sample_shape), dtype=np.float32))
            except Exception as exc:  # ORT's own types: a shape the configs promise but the graph cannot take
                raise ConfigError(
                    f"DFP_MODEL_DIR: warm-up failed for a batch of {n} at {sample_shape} (preprocessor_config.json "
                    f"size, config.json id2label: {len(self.labels.names)} classes): {str(exc)[:400]}"
                ) from None
            if not np.isfinite(probs).all():
                raise ConfigError("DFP_MODEL_DIR: the model returns non-finite scores on a blank image")
            if probs.shape[1] != len(self.labels.names):
                # A one-logit (sigmoid) model scores as two classes, so it needs two id2label entries.
                raise ConfigError(
                    f"DFP_MODEL_DIR: the model scores {probs.shape[1]} classes but config.json id2label has "
                    f"{len(self.labels.names)} ({', '.join(self.labels.names)})"
                )

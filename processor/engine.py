"""Inference engine: the one ONNX Runtime session (TensorRT → CUDA → CPU), its warm-up, and logits → probabilities."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.loader import ModelFiles, fake_class_index
from models.postprocess import probabilities
from processor.errors import ConfigError
from processor.settings import Providers
from processor.static_binding import StaticBindings, TensorSpec
from schemas import ModelRef

log = logging.getLogger(__name__)

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_WANTED: dict[Providers, tuple[str, ...]] = {
    Providers.AUTO: ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    Providers.TENSORRT: ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    Providers.CUDA: ("CUDAExecutionProvider", "CPUExecutionProvider"),
    Providers.CPU: ("CPUExecutionProvider",),
}


# TensorRT builds an engine per input shape on first use (minutes for ViT-B); caching them makes restarts cheap.
TRT_CACHE_DIR = Path.home() / ".cache" / "deepfake-processor" / "trt"


def provider_options(
    providers: list[str], *, cuda_graphs: bool = False, static_shapes: int = 0
) -> list[str | tuple[str, dict[str, str]]]:
    """The `providers` argument of InferenceSession: each provider with the options we set for it.

    CUDA graphs are asked of one provider only: ORT captures with a single EP, which must hold every compute node,
    so with TensorRT leading, CUDA (which then holds only the nodes TensorRT refused) gets no graph option.
    TensorRT keeps one graph per session (it ignores gpu_graph_id), so it captures only with one static shape.
    """
    out: list[str | tuple[str, dict[str, str]]] = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            options = {
                "trt_fp16_enable": "True",
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(TRT_CACHE_DIR),
            }
            if cuda_graphs and static_shapes == 1:
                options["trt_cuda_graph_enable"] = "True"
            out.append((name, options))
        elif name == "CUDAExecutionProvider" and cuda_graphs and "TensorrtExecutionProvider" not in providers:
            out.append((name, {"enable_cuda_graph": "1"}))
        else:
            out.append(name)
    return out


@functools.cache
def gpu_driver_present() -> bool:
    """Whether the NVIDIA driver library loads at all (no driver = no GPU, whatever ORT lists)."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def gpu_provider_listed(choice: Providers) -> bool:
    """Whether a GPU provider is listed and a driver is there (before a session proves it can really run)."""
    return gpu_driver_present() and any(
        p in ort.get_available_providers() for p in _WANTED[choice] if p in _GPU_PROVIDERS
    )


@dataclass(frozen=True, slots=True)
class Labels:
    """id2label plus which class means fake; turns a row of probabilities into the SPEC §5 fields."""

    names: tuple[str, ...]
    fake_index: int
    threshold: float

    def fields(self, probs: Sequence[float]) -> tuple[str, bool, float, dict[str, float]]:
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
    ) -> None:
        self.model = model
        names = tuple(model.id2label[i] for i in sorted(model.id2label))
        self.labels = Labels(names, fake_class_index(model.id2label, fake_label), threshold)
        buckets = tuple(sorted({b for b in batch_buckets if b > 0}))
        if cuda_graphs and not buckets:
            raise ConfigError("DFP_CUDA_GRAPHS=true needs DFP_BATCH_BUCKETS (one captured graph per static batch size)")
        self.session = self._open(model.onnx_path, providers, threads, cuda_graphs, len(buckets))
        self.provider = self.session.get_providers()[0]
        self.gpu = self.provider in _GPU_PROVIDERS
        if require_gpu and not self.gpu:
            raise ConfigError(
                "DFP_REQUIRE_GPU=true but the session runs on CPUExecutionProvider "
                f"(available: {', '.join(ort.get_available_providers())})"
            )
        self.input_name, self.output_name = self._io_names()
        # A model exported with fp16 I/O takes half-size tensors: cast on the host (half the H2D bytes)
        # instead of letting a float32 input fail or adding a Cast node.
        self.input_dtype = np.float16 if self.session.get_inputs()[0].type == "tensor(float16)" else np.float32
        # On CUDA, bind inputs/outputs explicitly (one H2D copy, output straight to host memory).
        self._bind = self.provider == "CUDAExecutionProvider"
        self.static = self._static_bindings(buckets) if cuda_graphs else None
        self.ref = ModelRef(name=model.name, variant=model.variant, provider=self.provider, sha256=model.sha256)
        log.info(
            "model loaded",
            extra={
                "model": model.name,
                "variant": model.variant,
                "provider": self.provider,
                "sha256": model.sha256[:12],
                "path": str(model.onnx_path),
                "cuda_graphs": cuda_graphs,
            },
        )

    def _static_bindings(self, buckets: tuple[int, ...]) -> StaticBindings:
        if self.provider == "TensorrtExecutionProvider" and len(buckets) > 1:
            log.warning(
                "TensorRT keeps one CUDA graph per session; with several DFP_BATCH_BUCKETS it captures none "
                "(DFP_PROVIDERS=cuda captures one per bucket); static per-bucket binding only",
                extra={"buckets": list(buckets)},
            )
        elif not self.gpu:
            log.warning(
                "CUDA graphs need the CUDA provider; static per-bucket binding only", extra={"provider": self.provider}
            )
        return StaticBindings(
            self.session,
            (self.input_name, self.output_name),
            buckets,
            self._tensor_spec(),
            device="cuda" if self.gpu else "cpu",
            graph_ids=self.provider == "CUDAExecutionProvider",
        )

    def _tensor_spec(self) -> TensorSpec:
        sample = self.session.get_inputs()[0].shape[1:]
        output = next(o for o in self.session.get_outputs() if o.name == self.output_name)
        classes = output.shape[1] if len(output.shape) == 2 else None
        if not all(isinstance(d, int) for d in sample) or not isinstance(classes, int):
            # Buffers are allocated up front, one per bucket, so every dimension but the batch must be fixed.
            raise ConfigError(
                "DFP_CUDA_GRAPHS=true needs a model with a fixed input size and class count "
                f"(input {self.session.get_inputs()[0].shape}, output {output.shape})"
            )
        out_dtype = np.float16 if output.type == "tensor(float16)" else np.float32
        return TensorSpec(tuple(sample), self.input_dtype, classes, out_dtype)

    def _open(
        self, path: Path, choice: Providers, threads: int, cuda_graphs: bool, static_shapes: int
    ) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.log_severity_level = 3  # ORT warns loudly when CUDA is listed but absent; our log says what runs
        # Idle intra-op threads spin by default, burning the cores the decode pool needs between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        wanted = [p for p in _WANTED[choice] if p in ort.get_available_providers()]
        if choice is Providers.AUTO and not gpu_driver_present():
            # onnxruntime-gpu lists CUDA/TensorRT even without a GPU and prints a page of EP errors trying them.
            wanted = ["CPUExecutionProvider"]
        if choice is not Providers.AUTO and choice is not Providers.CPU and wanted == ["CPUExecutionProvider"]:
            log.warning("requested provider is not available; falling back to CPU", extra={"requested": choice.value})
        try:
            providers = provider_options(wanted, cuda_graphs=cuda_graphs, static_shapes=static_shapes)
            return ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types; all mean the model cannot serve
            raise ConfigError(f"DFP_MODEL_DIR: cannot load {path}: {str(exc)[:500]}") from None

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
        """Run once per batch size so the first real batch pays no allocation or kernel-selection cost."""
        for n in batch_sizes:
            probs = self.infer(np.zeros((n, *sample_shape), dtype=np.float32))
            if not np.isfinite(probs).all():
                raise ConfigError("DFP_MODEL_DIR: the model returns non-finite scores on a blank image")
            if probs.shape[1] != len(self.labels.names):
                # A one-logit (sigmoid) model scores as two classes, so it needs two id2label entries.
                raise ConfigError(
                    f"DFP_MODEL_DIR: the model scores {probs.shape[1]} classes but config.json id2label has "
                    f"{len(self.labels.names)} ({', '.join(self.labels.names)})"
                )

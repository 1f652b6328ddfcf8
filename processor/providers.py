"""Which execution providers a session asks for, with which options, and what must exist before it is made.

`auto` is TensorRT → CUDA → CPU; DFP_CUDA_GRAPHS decides which one provider captures graphs (see
`plan_providers`). Before a CUDA/TensorRT session: pip's CUDA libraries preloaded, the TensorRT cache created.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from processor.errors import ConfigError
from processor.settings import Providers

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_WANTED: dict[Providers, tuple[str, ...]] = {
    Providers.AUTO: ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    Providers.TENSORRT: ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    Providers.CUDA: ("CUDAExecutionProvider", "CPUExecutionProvider"),
    Providers.CPU: ("CPUExecutionProvider",),
}


CPU = "CPUExecutionProvider"
TRT, CUDA = GPU_PROVIDERS
# Graph modes: one CUDA graph per bucket on the CUDA provider, TensorRT's one graph per session, or none.
GRAPHS_CUDA, GRAPHS_TENSORRT, GRAPHS_OFF = "cuda-per-bucket", "tensorrt-single", "off"
NO_DRIVER = "no NVIDIA driver (libcuda.so.1 does not load)"


@dataclass(frozen=True, slots=True)
class ProviderPlan:
    """The providers a session is asked for, in order, and which of them (if any) captures CUDA graphs."""

    providers: tuple[str, ...]
    graphs: str
    reason: str  # why these providers and this graph mode, for the start-up log line
    skipped_gpu: str = ""  # set when a GPU provider was wanted but not even tried (no driver)


def plan_providers(
    choice: Providers, available: Sequence[str], *, driver: bool, cuda_graphs: bool, buckets: int
) -> ProviderPlan:
    """Decide the provider list and the CUDA-graph mode before the session exists.

    ORT captures with one provider, which must hold every compute node, and TensorRT keeps one graph per
    session (it ignores gpu_graph_id). So under `auto` with several buckets TensorRT is dropped and the CUDA
    provider captures one graph per bucket; with one bucket TensorRT's own graph is used; an explicit
    `tensorrt` with several buckets cannot capture them and is refused.

    Args:
        choice: DFP_PROVIDERS.
        available: `onnxruntime.get_available_providers()`.
        driver: whether the NVIDIA driver library loads.
        cuda_graphs: DFP_CUDA_GRAPHS.
        buckets: how many static batch sizes (DFP_BATCH_BUCKETS) there are.

    Returns:
        The plan.

    Raises:
        ConfigError: DFP_CUDA_GRAPHS with DFP_PROVIDERS=tensorrt and more than one bucket.
    """
    wanted = [p for p in _WANTED[choice] if p in available]
    skipped = ""
    if choice is Providers.AUTO and not driver and any(p in GPU_PROVIDERS for p in wanted):
        # onnxruntime-gpu lists CUDA/TensorRT even without a GPU and prints a page of EP errors trying them.
        wanted, skipped = [CPU], NO_DRIVER
    if not cuda_graphs:
        return ProviderPlan(tuple(wanted), GRAPHS_OFF, "DFP_CUDA_GRAPHS=false", skipped)
    if TRT in wanted and buckets > 1:
        if choice is Providers.TENSORRT:
            raise ConfigError(
                f"DFP_CUDA_GRAPHS=true with DFP_PROVIDERS=tensorrt needs exactly one DFP_BATCH_BUCKETS size "
                f"(TensorRT keeps one CUDA graph per session; {buckets} given); use DFP_PROVIDERS=cuda or auto "
                "for one graph per bucket"
            )
        wanted.remove(TRT)
        reason = (
            f"TensorRT keeps one CUDA graph per session and DFP_BATCH_BUCKETS has {buckets} sizes: "
            "TensorRT dropped, the CUDA provider captures one graph per bucket"
        )
        return ProviderPlan(tuple(wanted), GRAPHS_CUDA, reason, skipped)
    if TRT in wanted:
        return ProviderPlan(tuple(wanted), GRAPHS_TENSORRT, "one bucket: TensorRT captures its one graph", skipped)
    if CUDA in wanted:
        return ProviderPlan(tuple(wanted), GRAPHS_CUDA, "the CUDA provider captures one graph per bucket", skipped)
    return ProviderPlan(tuple(wanted), GRAPHS_OFF, "no GPU provider: static per-bucket binding only", skipped)


@dataclass(frozen=True, slots=True)
class TrtProfile:
    """The one TensorRT optimisation profile: every batch size 1..max_batch, at the configured image size.

    Exports declare H, W (and C) symbolic, so without explicit shapes TensorRT would build an engine for each
    new input shape it meets, minutes each for ViT-B; with them it builds one engine, once, before serving.
    """

    input_name: str
    sample_shape: tuple[int, ...]  # (C, H, W) from preprocessor_config.json
    max_batch: int
    opt_batch: int

    def options(self) -> dict[str, str]:
        """The trt_profile_* provider options."""

        def shape(rows: int) -> str:
            return f"{self.input_name}:" + "x".join(str(d) for d in (rows, *self.sample_shape))

        return {"trt_profile_min_shapes": shape(1), "trt_profile_max_shapes": shape(self.max_batch),
                "trt_profile_opt_shapes": shape(self.opt_batch)}  # fmt: skip


def provider_options(
    plan: ProviderPlan, trt_cache_dir: Path | None = None, trt_profile: TrtProfile | None = None
) -> list[str | tuple[str, dict[str, str]]]:
    """The `providers` argument of InferenceSession: each planned provider with the options we set for it.

    Args:
        plan: from `plan_providers`; only the provider named by its graph mode gets a graph option.
        trt_cache_dir: where TensorRT caches the engines it builds (minutes for ViT-B; cheap restarts).
        trt_profile: the batch and image shapes TensorRT builds its engine for (None: it builds per shape).

    Returns:
        Names, or (name, options) pairs, in plan order.
    """
    out: list[str | tuple[str, dict[str, str]]] = []
    for name in plan.providers:
        if name == TRT:
            options = {"trt_fp16_enable": "True"}
            if trt_cache_dir is not None:
                options |= {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(trt_cache_dir)}
            if trt_profile is not None:
                options |= trt_profile.options()
            if plan.graphs == GRAPHS_TENSORRT:
                options["trt_cuda_graph_enable"] = "True"
            out.append((name, options))
        elif name == CUDA and plan.graphs == GRAPHS_CUDA:
            out.append((name, {"enable_cuda_graph": "1"}))
        else:
            out.append(name)
    return out


def ensure_trt_cache_dir(path: Path) -> Path:
    """Create the TensorRT engine cache directory with its parents; ConfigError naming the setting if not possible.

    Args:
        path: DFP_TRT_CACHE_DIR.

    Returns:
        `path`, which now exists and is writable.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is not writable")
    except OSError as exc:
        raise ConfigError(f"DFP_TRT_CACHE_DIR: cannot create the TensorRT engine cache {path}: {exc}") from None
    return path


@functools.cache
def preload_cuda_libraries() -> bool:
    """Load the CUDA/cuDNN libraries of pip's nvidia-* packages once (onnxruntime-gpu >= 1.21); False if too old.

    Without it a CUDA/TensorRT provider finds them only through LD_LIBRARY_PATH or an earlier `import torch`.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return False
    preload()
    return True


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
        p in ort.get_available_providers() for p in _WANTED[choice] if p in GPU_PROVIDERS
    )

"""Static-shape inference for DFP_CUDA_GRAPHS: one preallocated input/output pair per batch bucket, bound once.

A CUDA graph replays the kernels it captured against the device addresses it captured them with, so each bucket
keeps its own buffers for the life of the session and every batch is copied into them in place.
"""

from __future__ import annotations

import bisect
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

# ORT run option naming the CUDA graph a run captures or replays (CUDA EP; checked in onnxruntime-gpu 1.31);
# "-1" = neither. Ids start at 1: ORT's header asks callers not to use 0, its unannotated graph.
GRAPH_ID_KEY = "gpu_graph_id"
SKIP_GRAPH = -1
# Nothing may be allocated while a stream is being captured, and ORT notes that even a second plain run can
# still grow its memory arena: run each new shape this often uncaptured first, so the capture allocates nothing.
RUNS_BEFORE_CAPTURE = 2


def graph_run_options(graph_id: int | None) -> ort.RunOptions:
    """RunOptions that select one captured graph (None: no graph entry, as on CPU and TensorRT)."""
    options = ort.RunOptions()
    if graph_id is not None:
        options.add_run_config_entry(GRAPH_ID_KEY, str(graph_id))
    return options


@dataclass(slots=True)
class _Slot:
    rows: int
    binding: ort.IOBinding
    input: ort.OrtValue
    output: ort.OrtValue
    options: ort.RunOptions
    graph_id: int | None
    ran: bool = False


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """What the session is fed and returns: one sample's shape and dtype, and the output's classes and dtype."""

    sample_shape: tuple[int, ...]
    input_dtype: type[np.generic]
    classes: int
    output_dtype: type[np.generic]


class StaticBindings:
    """Runs batches through per-bucket bound buffers; a batch smaller than its bucket is zero-padded up to it."""

    def __init__(
        self,
        session: ort.InferenceSession,
        names: tuple[str, str],
        buckets: tuple[int, ...],
        spec: TensorSpec,
        *,
        device: str,
        graph_ids: bool,
    ) -> None:
        self.session = session
        self.buckets = tuple(sorted(set(buckets)))
        self.spec = spec
        self._slots = {
            rows: self._slot(names, rows, device, i + 1 if graph_ids else None) for i, rows in enumerate(self.buckets)
        }
        # The CUDA provider keeps its captured graphs per calling thread: a graph captured by warm-up on the main
        # or reload thread would be unknown to the scoring thread, which would capture again after /readyz. One
        # runner thread for every run makes warm-up capture exactly the graphs that serving replays.
        self._runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="static-inference")

    def _slot(self, names: tuple[str, str], rows: int, device: str, graph_id: int | None) -> _Slot:
        spec = self.spec
        source = ort.OrtValue.ortvalue_from_shape_and_type((rows, *spec.sample_shape), spec.input_dtype, device, 0)
        sink = ort.OrtValue.ortvalue_from_shape_and_type((rows, spec.classes), spec.output_dtype, device, 0)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(names[0], source)
        binding.bind_ortvalue_output(names[1], sink)
        return _Slot(rows, binding, source, sink, graph_run_options(graph_id), graph_id)

    def bucket_for(self, rows: int) -> int:
        """The smallest bucket that holds `rows`; RuntimeError when none does (no graph was captured for it)."""
        i = bisect.bisect_left(self.buckets, rows)
        if i == len(self.buckets):
            raise RuntimeError(
                f"a batch of {rows} rows is larger than the largest DFP_BATCH_BUCKETS size ({self.buckets[-1]}); "
                "no static shape (CUDA graph) was prepared for it"
            )
        return self.buckets[i]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, *sample_shape) batch in the input dtype → (N, classes) logits, a copy owned by the caller."""
        return self._runner.submit(self._run, batch).result()

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[1:] != self.spec.sample_shape or batch.dtype != self.spec.input_dtype:
            # update_inplace checks only the element count: another dtype or layout would be reinterpreted
            # (or read out of bounds), not rejected.
            raise RuntimeError(
                f"static binding expects rows of {self.spec.sample_shape} {np.dtype(self.spec.input_dtype)}, "
                f"got {batch.shape[1:]} {batch.dtype}"
            )
        rows = len(batch)
        slot = self._slots[self.bucket_for(rows)]
        if rows < slot.rows:  # only off the batcher's path: poison isolation halves, the health probe
            padded = np.zeros((slot.rows, *self.spec.sample_shape), dtype=self.spec.input_dtype)
            padded[:rows] = batch
            batch = padded
        slot.input.update_inplace(np.ascontiguousarray(batch))
        if not slot.ran and slot.graph_id is not None:
            self._before_capture(slot)
        # With a graph id, the first run of this bucket captures its graph (ORT runs it as often as it needs to
        # within this one call) and every later run replays it. Warm-up runs every bucket before /readyz.
        self.session.run_with_iobinding(slot.binding, slot.options)
        slot.ran = True
        # A copy: the bound output is overwritten by this bucket's next batch (on CPU, numpy() is a view of it).
        return np.array(slot.output.numpy()[:rows])

    def _before_capture(self, slot: _Slot) -> None:
        skip = graph_run_options(SKIP_GRAPH)
        for _ in range(RUNS_BEFORE_CAPTURE):
            self.session.run_with_iobinding(slot.binding, skip)

"""Every batching mode serves both export signatures and gives each event the same scores.

Signatures: `fixed` declares [batch_size,3,H,W] -> [batch_size,C]; `symbolic` declares every dim by name
([batch_size,num_channels,height,width] -> [batch_size,num_labels]), as Optimum / transformers.js export a
Hugging Face ViT, so H×W exist only in preprocessor_config.json and C only in config.json. Modes: dynamic
batches, static buckets (zero-padded up to a bucket), and buckets + DFP_CUDA_GRAPHS, which on this CPU-only
machine runs the same per-bucket preallocated IoBinding path a GPU runs, minus the capture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.builder import build_model_dir
from models.loader import resolve_model
from processor.batcher import MicroBatcher
from processor.decode import Preprocessor
from processor.engine import Engine
from processor.inflight import InFlight
from processor.scorer import Scorer
from processor.settings import Providers
from processor.telemetry.metrics import Metrics

IMAGE_SIZE = 64  # small images keep the matrix fast; the builder sizes the position embeddings for them
LABELS = ("Real", "Fake", "Spoof")  # three classes: a wrong class count could not pass for the default two
MAX_BATCH = 6
BUCKETS = (1, 4, 8)  # 6 rows pad to 8, 2-3 rows to 4: padding sits next to real rows in most batches
CROPS_PER_EVENT = (1, 2, 3, 1, 1, 2, 3, 3, 1, 2, 1, 1, 2)
# mode -> (DFP_BATCH_BUCKETS, DFP_CUDA_GRAPHS)
MODES: dict[str, tuple[tuple[int, ...], bool]] = {
    "dynamic": ((), False),
    "buckets": (BUCKETS, False),
    "buckets+cuda-graphs": (BUCKETS, True),
}


@pytest.fixture(scope="module", params=["fixed", "symbolic"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(request.param)
    return build_model_dir(
        "vit-tiny", out, seed=3, labels=LABELS, image_size=IMAGE_SIZE, fixed_shapes=request.param == "fixed"
    )


def _events(pre: Preprocessor) -> list[InFlight]:
    rng = np.random.default_rng(11)
    events = []
    for i, crops in enumerate(CROPS_PER_EVENT):
        tensor = np.empty((crops, *pre.shape), dtype=np.float32)
        for row in tensor:
            pre.to_tensor(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), row)
        item = InFlight(topic="in", partition=0, offset=i, key=None, value=b"", headers=None, timestamp_ms=None)
        item.event_id, item.crops = f"e{i}", tensor
        events.append(item)
    return events


def _serve(model_dir: Path, buckets: tuple[int, ...], cuda_graphs: bool) -> dict[str, np.ndarray]:
    """Score the events through the real batcher and scorer; event id -> (crops, C) probabilities."""
    model = resolve_model(model_dir, "fp32")
    engine = Engine(model, Providers.CPU, require_gpu=False, cuda_graphs=cuda_graphs, batch_buckets=buckets)
    pre = Preprocessor(model.preprocess)
    engine.warm_up(pre.shape, tuple(sorted({1, MAX_BATCH, *buckets})))
    batcher = MicroBatcher(MAX_BATCH, 0.0, (3, pre.shape[1], pre.shape[2]), buckets=buckets, capacity_rows=1000)
    scored: dict[str, np.ndarray] = {}

    def done(item: InFlight) -> None:
        assert item.probs is not None and item.error is None, item.error
        scored[item.event_id] = item.probs

    scorer = Scorer(batcher, lambda: engine, done, Metrics())
    for item in _events(pre):
        batcher.put(item)
    for batch in iter(lambda: batcher.next_batch(timeout_s=0.0), None):
        scorer.score(batch)
    assert len(scored) == len(CROPS_PER_EVENT)
    return scored


@pytest.fixture(scope="module")
def alone(model_dir: Path) -> dict[str, np.ndarray]:
    """The reference: each crop scored by itself through the plain session, no batch neighbours, no padding."""
    model = resolve_model(model_dir, "fp32")
    engine = Engine(model, Providers.CPU, require_gpu=False)
    return {
        item.event_id: np.concatenate([engine.infer(row[None]) for row in item.crops])  # type: ignore[union-attr]
        for item in _events(Preprocessor(model.preprocess))
    }


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_serves_the_signature_and_scores_each_event_as_if_alone(
    model_dir: Path, alone: dict[str, np.ndarray], mode: str
) -> None:
    scored = _serve(model_dir, *MODES[mode])
    assert scored.keys() == alone.keys()
    for event_id, probs in scored.items():
        assert probs.shape == (alone[event_id].shape[0], len(LABELS)), event_id
        # Padding rows are zeros run next to real rows: a leak would put another row's (or a zero image's)
        # scores here, far outside float rounding.
        np.testing.assert_allclose(probs, alone[event_id], rtol=0, atol=1e-6, err_msg=f"{mode} {event_id}")


def test_the_symbolic_export_declares_no_fixed_dim(tmp_path: Path) -> None:
    import onnx

    out = build_model_dir("vit-tiny", tmp_path, image_size=IMAGE_SIZE)
    graph = onnx.load(out / "onnx" / "model.onnx").graph
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*graph.input, *graph.output)]
    assert dims == [["batch_size", "num_channels", "height", "width"], ["batch_size", "num_labels"]]


def test_the_same_events_get_bit_identical_scores_in_every_mode(model_dir: Path) -> None:
    # On the CPU provider each row's arithmetic does not depend on its batch neighbours or on padding.
    dynamic, *others = (_serve(model_dir, *MODES[mode]) for mode in MODES)
    for scored in others:
        assert all(np.array_equal(scored[event_id], probs) for event_id, probs in dynamic.items())

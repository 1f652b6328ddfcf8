"""DFP_CUDA_GRAPHS: per-bucket bound buffers score like the plain session; provider options ask for graphs only then.

No GPU here: on CPU the same static path runs (preallocated OrtValues, update_inplace, run_with_iobinding),
only without graph capture.
"""

from __future__ import annotations

import gc
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnxconverter_common import float16

from models.loader import bundled_model_dir, resolve_model
from processor.engine import Engine
from processor.errors import ConfigError
from processor.providers import (
    GRAPHS_CUDA,
    GRAPHS_OFF,
    GRAPHS_TENSORRT,
    ProviderPlan,
    TrtProfile,
    plan_providers,
    provider_options,
)
from processor.settings import Providers
from processor.static_binding import GRAPH_ID_KEY, RUNS_BEFORE_CAPTURE, StaticBindings, graph_run_options

SHAPE = (3, 224, 224)
BUCKETS = (1, 4, 8)
TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.fixture(scope="module")
def plain() -> Engine:
    return Engine(resolve_model(None), Providers.CPU, require_gpu=False)


@pytest.fixture(scope="module")
def static() -> Engine:
    return Engine(resolve_model(None), Providers.CPU, require_gpu=False, cuda_graphs=True, batch_buckets=BUCKETS)


def _batch(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


@pytest.mark.parametrize("rows", BUCKETS)
def test_static_binding_scores_every_bucket_like_the_plain_session(plain: Engine, static: Engine, rows: int) -> None:
    batch = _batch(rows, seed=rows)
    np.testing.assert_allclose(static.infer(batch), plain.infer(batch), rtol=1e-5, atol=1e-6)


def test_reused_buffers_give_each_batch_its_own_scores_not_the_previous_ones(plain: Engine, static: Engine) -> None:
    first, second = _batch(4, seed=1), _batch(4, seed=2)
    got_first = static.infer(first)
    got_second = static.infer(second)
    np.testing.assert_allclose(got_first, plain.infer(first), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_second, plain.infer(second), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got_first, got_second)
    # The returned scores are the caller's: the next run through the same bucket does not overwrite them.
    static.infer(_batch(4, seed=3))
    np.testing.assert_allclose(got_first, plain.infer(first), rtol=1e-5, atol=1e-6)


def test_one_bound_buffer_per_bucket_is_made_once_and_reused(static: Engine) -> None:
    assert static.static is not None
    slots = dict(static.static._slots)
    assert sorted(slots) == list(BUCKETS)
    static.infer(_batch(8, seed=4))
    static.infer(_batch(8, seed=5))
    assert all(static.static._slots[rows] is slot for rows, slot in slots.items())
    assert slots[8].input.shape() == [8, *SHAPE] and slots[8].output.shape() == [8, 2]


def test_rows_between_buckets_are_padded_up_and_padding_is_not_returned(plain: Engine, static: Engine) -> None:
    # The batcher always pads to a bucket; poison isolation (halving) and the health probe (1 row) do not.
    batch = _batch(3, seed=6)
    got = static.infer(batch)
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, plain.infer(batch), rtol=1e-5, atol=1e-6)


def test_more_rows_than_the_largest_bucket_raise_instead_of_running_a_graph(static: Engine) -> None:
    with pytest.raises(RuntimeError, match="largest DFP_BATCH_BUCKETS size"):
        static.infer(_batch(9, seed=7))


def test_rows_of_another_shape_raise_instead_of_being_reinterpreted(static: Engine) -> None:
    with pytest.raises(RuntimeError, match="static binding expects"):
        static.infer(np.zeros((4, 3, 112, 112), dtype=np.float32))


def test_warm_up_runs_every_bucket_through_the_static_path(static: Engine) -> None:
    static.warm_up(SHAPE, BUCKETS)
    assert static.static is not None
    assert all(slot.ran for slot in static.static._slots.values())


def test_every_static_run_happens_on_one_named_runner_thread_whoever_calls(
    static: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CUDA provider keeps captured graphs per thread: warm-up (main or reload thread) must capture on the
    # thread the scorer's batches later replay on.
    ran_on: list[str] = []
    run = static.session.run_with_iobinding

    def recording(*args: object) -> None:
        ran_on.append(threading.current_thread().name)
        run(*args)

    monkeypatch.setattr(static.session, "run_with_iobinding", recording)
    static.warm_up(SHAPE, BUCKETS)
    scorer = threading.Thread(target=static.infer, args=(_batch(4, seed=8),), name="scorer")
    scorer.start()
    scorer.join()
    assert len(ran_on) == len(BUCKETS) + 1
    assert len(set(ran_on)) == 1 and ran_on[0].startswith("static-inference")


def test_with_graph_ids_each_bucket_runs_uncaptured_first_then_always_under_its_own_id(
    static: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CUDA capture protocol, run on CPU (where gpu_graph_id is ignored): the first batch of a bucket runs
    # RUNS_BEFORE_CAPTURE times with graph -1 (grow the arena outside capture), then with the bucket's id.
    assert static.static is not None
    bindings = StaticBindings(
        static.session,
        (static.input_name, static.output_name),
        (1, 4),
        static.static.spec,
        device="cpu",
        graph_ids=True,
    )
    graph_ids: list[str] = []
    run = static.session.run_with_iobinding

    def recording(binding: object, options: object) -> None:
        graph_ids.append(options.get_run_config_entry(GRAPH_ID_KEY))  # type: ignore[attr-defined]
        run(binding, options)

    monkeypatch.setattr(static.session, "run_with_iobinding", recording)
    batch = _batch(4, seed=10)
    first, again = bindings.run(batch), bindings.run(batch)
    bindings.run(_batch(1, seed=11))
    assert graph_ids == ["-1"] * RUNS_BEFORE_CAPTURE + ["2", "2"] + ["-1"] * RUNS_BEFORE_CAPTURE + ["1"]
    np.testing.assert_array_equal(first, again)


def test_fp16_io_model_is_bound_with_half_precision_buffers(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    shutil.copytree(bundled_model_dir(), model_dir)
    fp32 = onnx.load(model_dir / "onnx" / "model.onnx")
    onnx.save(float16.convert_float_to_float16(fp32, keep_io_types=False), model_dir / "onnx" / "model_fp16.onnx")
    model = resolve_model(model_dir, "fp16")
    plain = Engine(model, Providers.CPU, require_gpu=False)
    static = Engine(model, Providers.CPU, require_gpu=False, cuda_graphs=True, batch_buckets=(4,))
    assert static.static is not None and static.static.spec.input_dtype is np.float16
    assert static.static.spec.output_dtype is np.float16
    batch = _batch(4, seed=12)
    np.testing.assert_allclose(static.infer(batch), plain.infer(batch), rtol=1e-3, atol=1e-3)


def test_a_dropped_engine_lets_its_runner_thread_go() -> None:
    engine = Engine(resolve_model(None), Providers.CPU, require_gpu=False, cuda_graphs=True, batch_buckets=(2,))
    engine.infer(_batch(2, seed=9))
    assert engine.static is not None
    runner = set(engine.static._runner._threads).pop()
    del engine
    gc.collect()
    runner.join(timeout=10)
    assert not runner.is_alive()


def test_cuda_graphs_on_cpu_warn_that_only_static_binding_runs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="processor.engine"):
        Engine(resolve_model(None), Providers.CPU, require_gpu=False, cuda_graphs=True, batch_buckets=BUCKETS)
    assert any("CUDA graphs need the CUDA provider" in r.getMessage() for r in caplog.records)


def test_cuda_graphs_without_buckets_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="DFP_BATCH_BUCKETS"):
        Engine(resolve_model(None), Providers.CPU, require_gpu=False, cuda_graphs=True)


def test_flag_off_keeps_the_plain_session_path(plain: Engine) -> None:
    assert plain.static is None


# ---- provider options ----------------------------------------------------------------------------------------


def _options(entries: list[str | tuple[str, dict[str, str]]]) -> dict[str, dict[str, str]]:
    return dict(e if isinstance(e, tuple) else (e, {}) for e in entries)


def _plan(choice: Providers, *, graphs: bool = True, buckets: int = 3, driver: bool = True) -> ProviderPlan:
    return plan_providers(choice, [TRT, CUDA, CPU], driver=driver, cuda_graphs=graphs, buckets=buckets)


def test_cuda_gets_enable_cuda_graph_only_when_the_flag_is_on() -> None:
    assert _options(provider_options(_plan(Providers.CUDA)))[CUDA] == {"enable_cuda_graph": "1"}
    assert provider_options(_plan(Providers.CUDA, graphs=False)) == [CUDA, CPU]


def test_auto_with_several_buckets_drops_tensorrt_so_cuda_captures_one_graph_per_bucket() -> None:
    # The wheel always lists TensorRT: before, CUDA never got enable_cuda_graph under auto and graphs were off.
    plan = _plan(Providers.AUTO, buckets=3)
    assert plan.providers == (CUDA, CPU) and plan.graphs == GRAPHS_CUDA and "TensorRT dropped" in plan.reason
    assert _options(provider_options(plan))[CUDA] == {"enable_cuda_graph": "1"}


def test_auto_with_one_bucket_keeps_tensorrt_with_its_single_graph_and_cuda_gets_none() -> None:
    plan = _plan(Providers.AUTO, buckets=1)
    assert plan.providers == (TRT, CUDA, CPU) and plan.graphs == GRAPHS_TENSORRT
    on = _options(provider_options(plan))
    assert on[TRT]["trt_cuda_graph_enable"] == "True"
    assert on[CUDA] == {}  # one EP captures; with TensorRT leading, CUDA holds only the nodes TensorRT refused


def test_explicit_tensorrt_with_several_buckets_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="DFP_PROVIDERS=tensorrt needs exactly one DFP_BATCH_BUCKETS"):
        _plan(Providers.TENSORRT, buckets=3)


def test_tensorrt_options_carry_the_cache_dir_and_no_graph_without_the_flag(tmp_path: Path) -> None:
    assert _options(provider_options(_plan(Providers.AUTO, graphs=False), tmp_path / "trt")) == {
        TRT: {
            "trt_fp16_enable": "True",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(tmp_path / "trt"),
        },
        CUDA: {},
        CPU: {},
    }


def test_auto_without_a_driver_plans_cpu_only_and_says_why() -> None:
    plan = _plan(Providers.AUTO, driver=False)
    assert plan.providers == (CPU,) and plan.graphs == GRAPHS_OFF and "libcuda" in plan.skipped_gpu


def test_cpu_only_provider_list_never_carries_graph_options() -> None:
    assert provider_options(_plan(Providers.CPU)) == [CPU]


def test_under_auto_on_this_cpu_host_graphs_are_reported_off_in_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="processor.engine"):
        engine = Engine(resolve_model(None), Providers.AUTO, require_gpu=False, cuda_graphs=True, batch_buckets=BUCKETS)
    lines = [
        r
        for r in caplog.records
        if getattr(r, "cuda_graphs", None) is not None and r.getMessage().startswith("CUDA graphs")
    ]
    assert engine.graphs == GRAPHS_OFF
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and lines[0].cuda_graphs == GRAPHS_OFF  # type: ignore[attr-defined]


def test_graph_run_options_carry_the_graph_id_only_when_given() -> None:
    assert graph_run_options(2).get_run_config_entry(GRAPH_ID_KEY) == "2"
    with pytest.raises(RuntimeError):
        graph_run_options(None).get_run_config_entry(GRAPH_ID_KEY)


def test_tensorrt_gets_one_profile_from_the_configs_so_a_symbolic_export_builds_one_engine() -> None:
    profile = TrtProfile("pixel_values", (3, 384, 384), max_batch=64, opt_batch=32)
    assert _options(provider_options(_plan(Providers.AUTO, graphs=False), None, profile))[TRT] == {
        "trt_fp16_enable": "True",
        "trt_profile_min_shapes": "pixel_values:1x3x384x384",
        "trt_profile_max_shapes": "pixel_values:64x3x384x384",
        "trt_profile_opt_shapes": "pixel_values:32x3x384x384",
    }

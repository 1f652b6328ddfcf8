"""Engine: providers on a CPU-only machine, IoBinding path, fp16-I/O models, label/logit agreement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnxconverter_common import float16

from models.loader import bundled_model_dir, resolve_model
from processor.engine import Engine
from processor.errors import ConfigError
from processor.settings import Providers

SHAPE = (3, 224, 224)


def _batch(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, *SHAPE)).astype(np.float32)


def test_auto_providers_fall_back_to_cpu_and_report_what_really_runs() -> None:
    engine = Engine(resolve_model(None), Providers.AUTO, require_gpu=False)
    assert engine.provider == "CPUExecutionProvider" and engine.gpu is False


def test_require_gpu_on_a_cpu_only_machine_is_a_config_error_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="DFP_REQUIRE_GPU"):
        Engine(resolve_model(None), Providers.AUTO, require_gpu=True)


def test_io_binding_path_gives_the_same_probabilities_as_session_run() -> None:
    engine = Engine(resolve_model(None), Providers.CPU, require_gpu=False)
    plain = engine.infer(_batch())
    engine._bind = True
    assert np.array_equal(engine.infer(_batch()), plain)


def test_model_with_fp16_inputs_is_fed_half_precision(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    shutil.copytree(bundled_model_dir(), model_dir)
    path = model_dir / "onnx" / "model_fp16.onnx"
    onnx.save(float16.convert_float_to_float16(onnx.load(model_dir / "onnx" / "model.onnx"), keep_io_types=False), path)
    engine = Engine(resolve_model(model_dir, "fp16"), Providers.CPU, require_gpu=False)
    assert engine.input_dtype == np.float16
    probs = engine.infer(_batch())
    assert probs.shape == (3, 2) and np.isfinite(probs).all()


def test_warm_up_refuses_a_model_whose_class_count_differs_from_id2label(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    shutil.copytree(bundled_model_dir(), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["id2label"] = {"0": "Real", "1": "Fake", "2": "Other"}
    config["label2id"] = {"Real": 0, "Fake": 1, "Other": 2}
    (model_dir / "config.json").write_text(json.dumps(config))
    engine = Engine(resolve_model(model_dir), Providers.CPU, require_gpu=False)
    with pytest.raises(ConfigError, match="3"):
        engine.warm_up(SHAPE)


def test_a_symbolic_model_whose_graph_cannot_take_the_configured_size_fails_warm_up_with_a_config_error(
    tmp_path: Path,
) -> None:
    # A symbolic export says nothing about H×W; a preprocessor_config.json size the position embeddings do not
    # fit is found at warm-up, before /readyz, and named as a configuration problem.
    model_dir = tmp_path / "m"
    shutil.copytree(bundled_model_dir(), model_dir)
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    pre["size"] = {"height": 96, "width": 96}
    (model_dir / "preprocessor_config.json").write_text(json.dumps(pre))
    engine = Engine(resolve_model(model_dir), Providers.CPU, require_gpu=False, cuda_graphs=True, batch_buckets=(2,))
    with pytest.raises(ConfigError, match="warm-up failed for a batch of 2 at \\(3, 96, 96\\)"):
        engine.warm_up((3, 96, 96), (2,))

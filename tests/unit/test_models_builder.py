"""The ViT builder: a runnable, deterministic graph in the HF layout, and the bundled model is its output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models.builder import build_model, build_model_dir, count_parameters
from models.loader import bundled_model_dir


def _session(model_path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])


def _images(batch: int, size: int = 224, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (batch, 3, size, size)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir("vit-tiny", tmp_path_factory.mktemp("vit-tiny"))


@pytest.mark.parametrize("batch", [1, 5])
def test_tiny_graph_runs_in_onnxruntime_with_finite_logits_per_image(tiny_dir: Path, batch: int) -> None:
    (logits,) = _session(tiny_dir / "onnx" / "model.onnx").run(["logits"], {"pixel_values": _images(batch)})
    assert logits.shape == (batch, 2)
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()


def _declared(path: Path) -> list[tuple[str, list[int | str]]]:
    graph = onnx.load(path).graph
    return [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in (*graph.input, *graph.output)]  # fmt: skip


def test_default_export_declares_every_dim_symbolic_as_optimum_does(tiny_dir: Path) -> None:
    # The image size then lives only in preprocessor_config.json and the class count only in config.json.
    assert _declared(tiny_dir / "onnx" / "model.onnx") == [
        ("pixel_values", ["batch_size", "num_channels", "height", "width"]),
        ("logits", ["batch_size", "num_labels"]),
    ]


def test_fixed_shapes_declares_channels_size_and_classes_but_keeps_the_batch_dynamic(tmp_path: Path) -> None:
    out = build_model_dir("vit-tiny", tmp_path, labels=("a", "b", "c"), image_size=64, fixed_shapes=True)
    assert _declared(out / "onnx" / "model.onnx") == [
        ("pixel_values", ["batch_size", 3, 64, 64]),
        ("logits", ["batch_size", 3]),
    ]


def test_each_image_scores_the_same_alone_or_in_a_batch(tiny_dir: Path) -> None:
    session = _session(tiny_dir / "onnx" / "model.onnx")
    images = _images(5)
    (batched,) = session.run(["logits"], {"pixel_values": images})
    singles = np.concatenate([session.run(["logits"], {"pixel_values": images[i : i + 1]})[0] for i in range(5)])
    np.testing.assert_allclose(batched, singles, rtol=1e-4, atol=1e-5)


def test_different_images_get_different_logits(tiny_dir: Path) -> None:
    (logits,) = _session(tiny_dir / "onnx" / "model.onnx").run(["logits"], {"pixel_values": _images(2)})
    assert not np.allclose(logits[0], logits[1])


def test_same_seed_builds_byte_identical_model_files(tmp_path: Path) -> None:
    first = build_model_dir("vit-tiny", tmp_path / "a", seed=7)
    second = build_model_dir("vit-tiny", tmp_path / "b", seed=7)
    for name in ("onnx/model.onnx", "config.json", "preprocessor_config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_different_seeds_give_different_weights(tmp_path: Path) -> None:
    a = build_model_dir("vit-tiny", tmp_path / "a", seed=0) / "onnx" / "model.onnx"
    b = build_model_dir("vit-tiny", tmp_path / "b", seed=1) / "onnx" / "model.onnx"
    assert a.read_bytes() != b.read_bytes()


def test_bundled_model_is_exactly_what_the_builder_makes(tmp_path: Path) -> None:
    rebuilt = build_model_dir("vit-tiny", tmp_path / "vit-tiny", seed=0, labels=("Real", "Fake"))
    bundled = bundled_model_dir()
    for name in ("onnx/model.onnx", "config.json", "preprocessor_config.json"):
        assert (bundled / name).read_bytes() == (rebuilt / name).read_bytes(), (
            f"models/bundled/vit-tiny/{name} is stale; regenerate with "
            "`python -m models.builder --arch vit-tiny --out models/bundled/vit-tiny`"
        )


def test_bundled_model_stays_small() -> None:
    assert (bundled_model_dir() / "onnx" / "model.onnx").stat().st_size < 1_000_000


def test_config_json_is_hugging_face_vit_shaped(tiny_dir: Path) -> None:
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["architectures"] == ["ViTForImageClassification"]
    assert config["model_type"] == "vit"
    assert config["id2label"] == {"0": "Real", "1": "Fake"}
    assert config["label2id"] == {"Real": 0, "Fake": 1}
    assert (config["image_size"], config["patch_size"]) == (224, 16)
    assert config["_name_or_path"] == "deepfake-processor/vit-tiny-random"


def test_preprocessor_config_is_transformers_js_vit_shaped(tiny_dir: Path) -> None:
    assert json.loads((tiny_dir / "preprocessor_config.json").read_text()) == {
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "ViTImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "resample": 2,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": 224, "width": 224},
    }


def test_labels_and_image_size_shape_the_graph(tmp_path: Path) -> None:
    out = build_model_dir("vit-tiny", tmp_path, labels=("a", "b", "c"), image_size=64)
    (logits,) = _session(out / "onnx" / "model.onnx").run(["logits"], {"pixel_values": _images(3, size=64)})
    assert logits.shape == (3, 3)
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": 64, "width": 64}


def test_graph_uses_opset_17_and_the_vit_building_blocks() -> None:
    model = build_model("vit-tiny")
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "LayerNormalization", "Softmax", "Erf", "MatMul", "Expand", "Gather"} <= ops
    onnx.checker.check_model(model, full_check=True)


def test_unknown_architecture_and_bad_image_size_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model_dir("vit-huge", tmp_path)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_model("vit-tiny", image_size=100)


@pytest.mark.slow
def test_vit_b16_has_the_vit_base_parameter_count() -> None:
    model = build_model("vit-b16")
    assert count_parameters(model) == 85_800_194
    assert 340_000_000 < model.ByteSize() < 345_000_000


def test_vit_ti16_has_the_vit_tiny_16_parameter_count() -> None:
    # timm's vit_tiny_patch16_224 / DeiT-Ti: 5,717,416 parameters with a 1000-class head (192 x 1000 + 1000);
    # with the two-class head (192 x 2 + 2) that is 5,524,802.
    assert count_parameters(build_model("vit-ti16")) == 5_524_802

"""Model resolution (docs/MODELS.md): variant choice, layouts, bare .onnx files, labels and the fake class."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from models.builder import build_model_dir
from models.errors import ModelError
from models.loader import bundled_model_dir, fake_class_index, find_variants, resolve_model


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir("vit-tiny", tmp_path_factory.mktemp("built"))


@pytest.fixture
def model_dir(built: Path, tmp_path: Path) -> Path:
    """A private copy of a built model directory that a test may add variant files to."""
    return Path(shutil.copytree(built, tmp_path / "vit-tiny"))


def _add(model_dir: Path, *names: str) -> None:
    # The loader picks files by name only, so a copy of the fp32 graph stands in for each variant.
    for name in names:
        shutil.copy(model_dir / "onnx" / "model.onnx", model_dir / "onnx" / name)


def test_no_model_dir_resolves_the_bundled_tiny_model() -> None:
    files = resolve_model(None)
    assert files.onnx_path == bundled_model_dir() / "onnx" / "model.onnx"
    assert (files.name, files.variant) == ("vit-tiny", "fp32")
    assert files.id2label == {0: "Real", 1: "Fake"}
    assert (files.preprocess.height, files.preprocess.width) == (224, 224)


def test_sha256_is_the_hex_digest_of_the_loaded_file(model_dir: Path) -> None:
    files = resolve_model(model_dir)
    assert files.sha256 == hashlib.sha256(files.onnx_path.read_bytes()).hexdigest()


def test_auto_on_cpu_prefers_int8_over_fp32(model_dir: Path) -> None:
    _add(model_dir, "model_int8.onnx", "model_fp16.onnx", "model_q4.onnx")
    assert resolve_model(model_dir, gpu=False).variant == "int8"


def test_auto_on_cpu_uses_fp32_when_there_is_no_int8(model_dir: Path) -> None:
    _add(model_dir, "model_fp16.onnx", "model_q4.onnx", "model_bnb4.onnx")
    assert resolve_model(model_dir, gpu=False).variant == "fp32"


def test_auto_on_gpu_prefers_fp16_then_fp32(model_dir: Path) -> None:
    _add(model_dir, "model_int8.onnx")
    assert resolve_model(model_dir, gpu=True).variant == "fp32"
    _add(model_dir, "model_fp16.onnx")
    files = resolve_model(model_dir, gpu=True)
    assert (files.variant, files.onnx_path.name) == ("fp16", "model_fp16.onnx")


def test_auto_falls_back_to_whatever_variant_is_present(model_dir: Path) -> None:
    _add(model_dir, "model_q4.onnx")
    (model_dir / "onnx" / "model.onnx").unlink()
    assert resolve_model(model_dir).variant == "q4"


def test_model_quantized_onnx_is_accepted_as_int8(model_dir: Path) -> None:
    _add(model_dir, "model_quantized.onnx")
    files = resolve_model(model_dir, "int8")
    assert (files.variant, files.onnx_path.name) == ("int8", "model_quantized.onnx")


def test_explicit_variant_that_is_absent_lists_what_is_present(model_dir: Path) -> None:
    _add(model_dir, "model_int8.onnx")
    with pytest.raises(ModelError, match=r"'q4' \(model_q4.onnx\) is not in .*present: fp32, int8"):
        resolve_model(model_dir, "q4")


def test_unknown_variant_name_is_a_config_error(model_dir: Path) -> None:
    with pytest.raises(ModelError, match="unknown model variant 'int4'"):
        resolve_model(model_dir, "int4")


def test_explicit_variant_is_loaded_even_when_auto_would_pick_another(model_dir: Path) -> None:
    _add(model_dir, "model_int8.onnx")
    files = resolve_model(model_dir, "fp32")
    assert files.onnx_path == model_dir / "onnx" / "model.onnx"


def test_model_files_at_the_top_level_are_accepted(model_dir: Path) -> None:
    shutil.move(model_dir / "onnx" / "model.onnx", model_dir / "model.onnx")
    (model_dir / "onnx").rmdir()
    assert resolve_model(model_dir).onnx_path == model_dir / "model.onnx"


def test_onnx_subfolder_wins_over_the_top_level(model_dir: Path) -> None:
    shutil.copy(model_dir / "onnx" / "model.onnx", model_dir / "model.onnx")
    assert find_variants(model_dir) == {"fp32": model_dir / "onnx" / "model.onnx"}


def test_external_data_file_stays_beside_the_model(model_dir: Path) -> None:
    (model_dir / "onnx" / "model.onnx_data").write_bytes(b"")
    files = resolve_model(model_dir)
    assert files.onnx_path.parent == model_dir / "onnx"


def test_directory_without_onnx_files_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no ONNX model in"):
        resolve_model(tmp_path)


def test_missing_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(tmp_path / "missing")


def test_single_two_class_onnx_file_gets_real_fake_labels_and_vit_defaults(model_dir: Path) -> None:
    path = model_dir / "onnx" / "model.onnx"
    files = resolve_model(path)
    assert (files.name, files.variant, files.onnx_path) == ("model", "fp32", path)
    assert files.id2label == {0: "Real", 1: "Fake"}
    assert (files.preprocess.height, files.preprocess.width) == (224, 224)
    assert files.preprocess.image_mean == (0.5, 0.5, 0.5)


def test_single_file_with_other_class_count_and_size_uses_generic_labels_and_its_input_size(
    tmp_path: Path,
) -> None:
    out = build_model_dir("vit-tiny", tmp_path / "m", labels=("a", "b", "c"), image_size=64, fixed_shapes=True)
    path = Path(shutil.copy(out / "onnx" / "model.onnx", tmp_path / "detector_int8.onnx"))
    files = resolve_model(path)
    assert (files.name, files.variant) == ("detector_int8", "int8")
    assert files.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert (files.preprocess.height, files.preprocess.width) == (64, 64)


def test_single_symbolic_file_has_no_size_to_read_and_takes_the_vit_default(tmp_path: Path) -> None:
    # Without preprocessor_config.json a symbolic export says nothing about H×W: serve it as a model directory.
    out = build_model_dir("vit-tiny", tmp_path / "m", labels=("a", "b", "c"))
    files = resolve_model(out / "onnx" / "model.onnx")
    assert (files.preprocess.height, files.preprocess.width) == (224, 224)
    assert len(files.id2label) == 3  # ORT's shape inference still knows the head's width


def test_single_file_with_a_contradicting_explicit_variant_is_a_config_error(model_dir: Path) -> None:
    with pytest.raises(ModelError, match="looks like variant 'fp32', not 'fp16'"):
        resolve_model(model_dir / "onnx" / "model.onnx", "fp16")


def test_unloadable_single_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a protobuf")
    with pytest.raises(ModelError, match="cannot be loaded by onnxruntime"):
        resolve_model(path)


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"id2label": {}},
        {"id2label": ["Real", "Fake"]},
        {"id2label": {"0": "Real", "2": "Fake"}},
        {"id2label": {"zero": "Real"}},
    ],
)
def test_missing_or_invalid_id2label_is_a_config_error_naming_config_json(model_dir: Path, config: object) -> None:
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"config\.json: key 'id2label'"):
        resolve_model(model_dir)


def test_missing_config_json_is_a_config_error_naming_it(model_dir: Path) -> None:
    (model_dir / "config.json").unlink()
    with pytest.raises(ModelError, match=r"config\.json: cannot read"):
        resolve_model(model_dir)


def test_missing_preprocessor_config_is_a_config_error_naming_it(model_dir: Path) -> None:
    (model_dir / "preprocessor_config.json").unlink()
    with pytest.raises(ModelError, match=r"preprocessor_config\.json: cannot read"):
        resolve_model(model_dir)


def test_fake_class_is_found_by_name_case_insensitively() -> None:
    assert fake_class_index({0: "Real", 1: "Fake"}, None) == 1
    assert fake_class_index({0: "DEEPFAKE", 1: "realism"}, None) == 0
    assert fake_class_index({0: "bona fide", 1: "Spoof"}, None) == 1
    assert fake_class_index({0: "real_face", 1: "fake_face"}, None) == 1


def test_exact_fake_word_wins_over_a_label_that_merely_contains_it() -> None:
    assert fake_class_index({0: "not_fake", 1: "fake"}, None) == 1


def test_explicit_fake_label_is_matched_case_insensitively() -> None:
    assert fake_class_index({0: "Human", 1: "Synthetic"}, "synthetic") == 1


def test_explicit_fake_label_that_is_absent_lists_the_labels() -> None:
    with pytest.raises(ModelError, match=r"'AI' is not a model label; labels: \['Real', 'Fake'\]"):
        fake_class_index({0: "Real", 1: "Fake"}, "AI")


def test_labels_without_a_fake_class_are_a_config_error() -> None:
    with pytest.raises(ModelError, match="no label looks like the fake class"):
        fake_class_index({0: "cat", 1: "dog"}, None)

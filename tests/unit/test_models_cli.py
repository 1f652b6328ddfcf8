"""`deepfake-processor models …` through the real CLI entry: build, variants, inspect --json, validate exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from models.builder import ARCHS
from models.cli import ARCH_CHOICES
from processor.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vit-tiny with every variant, made through the CLI."""
    path = tmp_path_factory.mktemp("cli") / "vit-tiny"
    assert main(["models", "build", "--arch", "vit-tiny", "--out", str(path), "--seed", "3"]) == 0
    assert main(["models", "variants", str(path)]) == 0
    return path


def test_build_writes_the_spec_layout_with_the_given_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    assert main(["models", "build", "--arch", "vit-tiny", "--out", str(out), "--labels", "real,deepfake"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "onnx", "preprocessor_config.json"]
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "real", "1": "deepfake"}
    assert f"{out / 'onnx' / 'model.onnx'}" in capsys.readouterr().out


@pytest.mark.parametrize(("flags", "dims"), [([], "symbolic"), (["--fixed-shapes"], "fixed")])
def test_build_emits_the_symbolic_export_signature_unless_asked_for_fixed_shapes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], dims: str
) -> None:
    import onnx

    out = tmp_path / "m"
    assert main(["models", "build", "--arch", "vit-tiny", "--out", str(out), *flags]) == 0
    assert f"{dims} dims" in capsys.readouterr().out
    (inp,) = onnx.load(out / "onnx" / "model.onnx").graph.input
    declared = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert declared == (["batch_size", 3, 224, 224] if flags else ["batch_size", "num_channels", "height", "width"])


def test_variants_prints_one_progress_line_per_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    assert main(["models", "build", "--arch", "vit-tiny", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["models", "variants", str(out), "--only", "bnb4,int8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" …")[0] for line in lines] == ["[1/2] int8", "[2/2] bnb4"]
    assert sorted(p.name for p in (out / "onnx").iterdir()) == ["model.onnx", "model_bnb4.onnx", "model_int8.onnx"]


def test_inspect_prints_a_table_and_writes_json_for_every_variant(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "inspect.json"
    argv = ["models", "inspect", str(tiny_dir), "--images", "8", "--runs", "1", "--batch-sizes", "1,4"]
    assert main([*argv, "--json", str(report)]) == 0
    table = capsys.readouterr().out
    assert "| fp32 | model.onnx |" in table and "| b=4 ms |" in table and "max abs Δprob" in table
    data = json.loads(report.read_text())
    rows = {row["variant"]: row for row in data["variants"]}
    assert list(rows) == ["fp32", "fp16", "int8", "q4", "bnb4"]
    assert rows["fp32"]["top1_agreement_pct"] is None
    assert all(rows[v]["max_abs_dprob"] < 0.05 for v in ("fp16", "int8", "q4", "bnb4"))
    assert {row["parameters"] for row in rows.values()} == {rows["fp32"]["parameters"]}
    assert rows["int8"]["inputs"] == "pixel_values float32 [batch_size,num_channels,height,width]"
    assert set(rows["q4"]["latency_ms"]) == {"1", "4"}
    assert data["images"] == 8 and data["machine"]["cpu_count"] >= 1


def test_validate_exits_0_with_one_ok_line(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "validate", str(tiny_dir)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"OK {tiny_dir}: variants fp32, fp16, int8, q4, bnb4;")


def test_validate_exits_2_naming_the_problem(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    (broken / "onnx").mkdir(parents=True)
    (broken / "onnx" / "model.onnx").write_bytes((tiny_dir / "onnx" / "model.onnx").read_bytes())
    (broken / "preprocessor_config.json").write_text('{"size": {"height": 224, "width": 224}}')
    (broken / "config.json").write_text('{"id2label": {"0": "cat", "1": "dog"}}')
    assert main(["models", "validate", str(broken)]) == 2
    assert "no label looks like the fake class" in capsys.readouterr().err
    assert main(["models", "validate", str(broken), "--fake-label", "dog"]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["validate", "{missing}"], "does not exist"),
        (["variants", "{missing}"], "no fp32 model"),
        (["variants", "{tiny}", "--only", "fp8"], "unknown variant(s) ['fp8']"),
        (["build", "--arch", "vit-tiny", "--out", "{missing}", "--image-size", "100"], "not a multiple of"),
        (["build", "--arch", "vit-tiny", "--out", "{missing}", "--labels", "a,a"], "distinct"),
        (["inspect", "{tiny}", "--batch-sizes", "1,x"], "--batch-sizes"),
        (["inspect", "{tiny}", "--images", "0"], "at least 1"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    filled = [a.format(missing=tmp_path / "missing", tiny=tiny_dir) for a in argv]
    assert main(["models", *filled]) == 2
    assert message in capsys.readouterr().err


def test_arch_choices_match_the_builder() -> None:
    assert tuple(sorted(ARCHS)) == ARCH_CHOICES


def test_help_and_validate_work_without_onnx_while_build_asks_for_the_extra(tiny_dir: Path) -> None:
    """`onnx` is only in the [models] extra; the production image has onnxruntime alone."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["onnx"] = None  # makes `import onnx` raise ImportError, as if it were not installed
        from processor.cli import main
        assert main(["models", "validate", {str(tiny_dir)!r}, "--variant", "int8"]) == 0
        assert main(["models", "build", "--arch", "vit-tiny", "--out", {str(tiny_dir / "x")!r}]) == 2
        main(["--help"])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "OK " in done.stdout and "models" in done.stdout
    assert "needs the [models] extra" in done.stderr

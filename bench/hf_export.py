"""Cross-check on a host with torch + transformers: a real Hugging Face ViT-B/16 export through our loading path.

`python -m bench.hf_export --out DIR --json F` builds `transformers.ViTForImageClassification` (ViT-B/16,
random weights, labels Real/Fake), writes its `config.json` and `preprocessor_config.json` with transformers
itself, exports `onnx/model.onnx` with `torch.onnx.export` the way Optimum does (symbolic
`pixel_values [batch_size, num_channels, height, width]` -> `logits [batch_size, num_labels]`), derives
`model_fp16.onnx` with this project's variant tool, and then loads the directory exactly as the processor
does (`resolve_model` -> `Engine` on CUDA). It reports:
- each variant's largest |probability difference| from PyTorch's own forward pass on the same tensors;
- images/s per batch size for the export and for `models build`'s ViT-B/16 (fp16, CUDA), side by side;
- both graphs' signatures and operator counts, so the builder's shape can be compared with the real one.

torch and transformers are not dependencies of this project: the GPU host used for docs/GPU.md has them.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

LABELS = ("Real", "Fake")


def export(out: Path, seed: int = 0) -> Any:
    """Write a transformers ViT-B/16 model directory under `out`; return the torch model (eval mode)."""
    import torch  # type: ignore[import-not-found,unused-ignore]
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor  # type: ignore[import-not-found,unused-ignore]

    torch.manual_seed(seed)
    config = ViTConfig(image_size=224, patch_size=16, num_labels=len(LABELS),
                       id2label=dict(enumerate(LABELS)), label2id={v: i for i, v in enumerate(LABELS)})  # fmt: skip
    model = ViTForImageClassification(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    processor = ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor.save_pretrained(out)
    (out / "onnx").mkdir(exist_ok=True)
    dims = {0: "batch_size", 1: "num_channels", 2: "height", 3: "width"}
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(out / "onnx" / "model.onnx"),
                          input_names=["pixel_values"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"pixel_values": dims, "logits": {0: "batch_size"}}, dynamo=False)  # fmt: skip
    return model


def torch_probabilities(model: Any, batch: np.ndarray) -> np.ndarray:
    """Softmax of the PyTorch model's logits (fp32, on CUDA when there is one)."""
    import torch  # type: ignore[import-not-found,unused-ignore]

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.no_grad():
        logits = model.to(device)(pixel_values=torch.from_numpy(batch).to(device)).logits
    return torch.softmax(logits.float(), dim=-1).cpu().numpy()


def graph_summary(path: Path) -> dict[str, Any]:
    """Signature and operator counts of an ONNX file (weights not loaded)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def dims(v: Any) -> list[str]:
        return [d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim]

    return {"inputs": {v.name: dims(v) for v in graph.input}, "outputs": {v.name: dims(v) for v in graph.output},
            "ops": dict(sorted(Counter(n.op_type for n in graph.node).items()))}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Export, compare with PyTorch, time against the builder's ViT-B/16, write the JSON."""
    from bench.gpu import throughput
    from bench.workload import prepare_model_dir
    from models.loader import find_variants, resolve_model
    from models.variants import derive_variants
    from processor.engine import Engine
    from processor.settings import Providers

    parser = argparse.ArgumentParser(prog="python -m bench.hf_export", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--batch-sizes", default="1,8,32,128")
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.batch_sizes.split(","))
    model = export(args.out)
    derive_variants(args.out, ["fp16"])
    batch = np.random.default_rng(0).uniform(-1, 1, (8, 3, 224, 224)).astype(np.float32)
    reference = torch_probabilities(model, batch)
    result: dict[str, Any] = {"export": graph_summary(find_variants(args.out)["fp32"]), "variants": {}}
    for variant in ("fp32", "fp16"):
        engine = Engine(resolve_model(args.out, variant), Providers.CUDA, require_gpu=False, max_batch_size=max(sizes))
        probs = engine.infer(batch)
        result["variants"][variant] = {"provider": engine.provider,
                                       "max_abs_diff_vs_torch": float(np.abs(probs - reference).max()),
                                       "images_per_s": throughput(engine, sizes, args.seconds)}  # fmt: skip
        del engine
    ours = prepare_model_dir(None, "vit-b16", ["fp16"])
    result["builder"] = graph_summary(find_variants(ours)["fp32"])
    engine = Engine(resolve_model(ours, "fp16"), Providers.CUDA, require_gpu=False, max_batch_size=max(sizes))
    result["builder"]["fp16"] = {"provider": engine.provider, "images_per_s": throughput(engine, sizes, args.seconds)}
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Build a faithful ViT image classifier as ONNX (onnx.helper + numpy, no PyTorch) in the HF layout.

The graph mirrors Hugging Face `ViTForImageClassification`: 16×16 patch Conv, cls token, position
embeddings, pre-LN blocks (multi-head self-attention, Erf-GELU MLP), final LayerNorm, linear head
on the cls token. Weights are seeded random, so the same arguments always give byte-identical
files. The signature is the one Optimum / transformers.js export: every input dim symbolic
(`pixel_values` [batch_size, num_channels, height, width], `logits` [batch_size, num_labels]), so the
image size lives only in preprocessor_config.json and the class count only in config.json; `fixed_shapes`
declares 3×H×W and C instead. Regenerate the bundled demo model with
`python -m models.builder --arch vit-tiny --out models/bundled/vit-tiny`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

logger = logging.getLogger(__name__)

OPSET = 17
# Pinned so that the bytes do not change with the installed onnx package's default IR version.
IR_VERSION = 8
INIT_STD = 0.02
LAYER_NORM_EPS = 1e-12
# Protobuf cannot serialise a message over 2 GiB; above this the weights go to `model.onnx_data`.
EXTERNAL_DATA_THRESHOLD_BYTES = 2_000_000_000


@dataclass(frozen=True, slots=True)
class VitArch:
    """Shape of a ViT encoder; the field names follow the Hugging Face ViT config."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    patch_size: int = 16


ARCHS: dict[str, VitArch] = {
    "vit-tiny": VitArch(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
    "vit-ti16": VitArch(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
    "vit-b16": VitArch(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


class _Graph:
    """Accumulates nodes and seeded initialisers; every helper returns the name of its output."""

    def __init__(self, seed: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._rng = np.random.default_rng(seed)
        self._consts: dict[str, str] = {}

    def add_init(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def random(self, name: str, shape: tuple[int, ...]) -> str:
        return self.add_init(name, self._rng.standard_normal(shape, dtype=np.float32) * np.float32(INIT_STD))

    def const(self, values: Sequence[int] | Sequence[float] | int | float, dtype: type) -> str:
        """A shared constant, created once per distinct value."""
        array: np.ndarray = np.array(values, dtype=dtype)
        key = f"const/{array.dtype}/{array.shape}/{array.tolist()}"
        if key not in self._consts:
            self._consts[key] = self.add_init(f"const_{len(self._consts)}", array)
        return self._consts[key]

    def op(self, op_type: str, inputs: Sequence[str], out: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def linear(self, x: str, d_in: int, d_out: int, prefix: str, out: str | None = None) -> str:
        weight = self.random(f"{prefix}.weight", (d_in, d_out))
        bias = self.add_init(f"{prefix}.bias", np.zeros(d_out, dtype=np.float32))
        product = self.op("MatMul", [x, weight], f"{prefix}/matmul")
        return self.op("Add", [product, bias], out or f"{prefix}/out")

    def layer_norm(self, x: str, dim: int, prefix: str) -> str:
        scale = self.add_init(f"{prefix}.weight", np.ones(dim, dtype=np.float32))
        bias = self.add_init(f"{prefix}.bias", np.zeros(dim, dtype=np.float32))
        return self.op("LayerNormalization", [x, scale, bias], f"{prefix}/out", axis=-1, epsilon=LAYER_NORM_EPS)


def _embeddings(g: _Graph, arch: VitArch, image_size: int) -> str:
    d, p = arch.hidden_size, arch.patch_size
    num_tokens = (image_size // p) ** 2 + 1
    conv_w = g.random("embeddings.patch_embeddings.projection.weight", (d, 3, p, p))
    conv_b = g.add_init("embeddings.patch_embeddings.projection.bias", np.zeros(d, dtype=np.float32))
    conv = g.op("Conv", ["pixel_values", conv_w, conv_b], "embeddings/conv", kernel_shape=[p, p], strides=[p, p])
    flat = g.op("Reshape", [conv, g.const([0, d, -1], np.int64)], "embeddings/flatten")
    patches = g.op("Transpose", [flat], "embeddings/patches", perm=[0, 2, 1])
    # The cls token is broadcast to the dynamic batch: Shape -> first dim -> [N, 1, D].
    patches_shape = g.op("Shape", [patches], "embeddings/shape")
    batch = g.op("Slice", [patches_shape, g.const([0], np.int64), g.const([1], np.int64)], "embeddings/batch")
    cls_shape = g.op("Concat", [batch, g.const([1, d], np.int64)], "embeddings/cls_shape", axis=0)
    cls = g.op("Expand", [g.random("embeddings.cls_token", (1, 1, d)), cls_shape], "embeddings/cls")
    tokens = g.op("Concat", [cls, patches], "embeddings/tokens", axis=1)
    pos = g.random("embeddings.position_embeddings", (1, num_tokens, d))
    return g.op("Add", [tokens, pos], "embeddings/out")


def _attention(g: _Graph, x: str, arch: VitArch, prefix: str) -> str:
    d, heads = arch.hidden_size, arch.num_attention_heads
    head_dim = d // heads
    split = g.const([0, -1, heads, head_dim], np.int64)

    def project(name: str, perm: list[int]) -> str:
        y = g.linear(x, d, d, f"{prefix}.{name}")
        split_heads = g.op("Reshape", [y, split], f"{prefix}/{name}_split")
        return g.op("Transpose", [split_heads], f"{prefix}/{name}_heads", perm=perm)

    q, k, v = project("query", [0, 2, 1, 3]), project("key", [0, 2, 3, 1]), project("value", [0, 2, 1, 3])
    scores = g.op("MatMul", [q, k], f"{prefix}/scores")
    scaled = g.op("Div", [scores, g.const(math.sqrt(head_dim), np.float32)], f"{prefix}/scaled")
    probs = g.op("Softmax", [scaled], f"{prefix}/probs", axis=-1)
    context = g.op("MatMul", [probs, v], f"{prefix}/context")
    merged = g.op("Transpose", [context], f"{prefix}/context_t", perm=[0, 2, 1, 3])
    merged = g.op("Reshape", [merged, g.const([0, -1, d], np.int64)], f"{prefix}/merged")
    return g.linear(merged, d, d, f"{prefix}.output")


def _mlp(g: _Graph, x: str, arch: VitArch, prefix: str) -> str:
    up = g.linear(x, arch.hidden_size, arch.intermediate_size, f"{prefix}.intermediate")
    # Exact GELU written as x * 0.5 * (1 + erf(x / sqrt 2)), the pattern ORT fuses into BiasGelu.
    scaled = g.op("Div", [up, g.const(math.sqrt(2.0), np.float32)], f"{prefix}/gelu_div")
    erf = g.op("Erf", [scaled], f"{prefix}/gelu_erf")
    one_plus = g.op("Add", [erf, g.const(1.0, np.float32)], f"{prefix}/gelu_add")
    product = g.op("Mul", [up, one_plus], f"{prefix}/gelu_mul")
    gelu = g.op("Mul", [product, g.const(0.5, np.float32)], f"{prefix}/gelu")
    return g.linear(gelu, arch.intermediate_size, arch.hidden_size, f"{prefix}.output")


def build_model(
    arch: str, *, seed: int = 0, num_labels: int = 2, image_size: int = 224, fixed_shapes: bool = False
) -> onnx.ModelProto:
    """The ViT classifier graph: `pixel_values` float32 [N,3,H,W] -> `logits` float32 [N,C].

    Args:
        arch: a key of ARCHS.
        seed: weight seed; the same arguments give byte-identical graphs.
        num_labels: C, the width of `logits`.
        image_size: H = W; the position embeddings are sized for it.
        fixed_shapes: declare [batch_size,3,H,W] -> [batch_size,C]; by default every dim is symbolic
            ([batch_size,num_channels,height,width] -> [batch_size,num_labels]), as Optimum exports ViT.

    Returns:
        The checked ModelProto.
    """
    shape = _arch(arch)
    if image_size % shape.patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size {shape.patch_size}")
    g = _Graph(seed)
    x = _embeddings(g, shape, image_size)
    for i in range(shape.num_hidden_layers):
        prefix = f"encoder.layer.{i}"
        normed = g.layer_norm(x, shape.hidden_size, f"{prefix}.layernorm_before")
        x = g.op("Add", [x, _attention(g, normed, shape, f"{prefix}.attention")], f"{prefix}/residual_1")
        normed = g.layer_norm(x, shape.hidden_size, f"{prefix}.layernorm_after")
        x = g.op("Add", [x, _mlp(g, normed, shape, prefix)], f"{prefix}/residual_2")
    x = g.layer_norm(x, shape.hidden_size, "layernorm")
    cls = g.op("Gather", [x, g.const(0, np.int64)], "cls_hidden", axis=1)
    g.linear(cls, shape.hidden_size, num_labels, "classifier", out="logits")
    in_dims, out_dims = signature(image_size, num_labels, fixed_shapes=fixed_shapes)
    graph = helper.make_graph(
        g.nodes,
        f"{arch}-classifier",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, in_dims)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_dims)],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="deepfake-processor.models.builder",
        doc_string=f"{arch} with seeded random weights (seed={seed}); not a trained detector",
    )
    onnx.checker.check_model(model)
    return model


def signature(
    image_size: int, num_labels: int, *, fixed_shapes: bool = False
) -> tuple[list[int | str], list[int | str]]:
    """Declared (input, output) dims: symbolic as Optimum / transformers.js export them, or fixed but the batch.

    Args:
        image_size: H = W of the fixed signature.
        num_labels: C of the fixed signature.
        fixed_shapes: declare 3, H, W and C instead of names.

    Returns:
        The `pixel_values` dims and the `logits` dims.
    """
    if fixed_shapes:
        return ["batch_size", 3, image_size, image_size], ["batch_size", num_labels]
    return ["batch_size", "num_channels", "height", "width"], ["batch_size", "num_labels"]


def count_parameters(model: onnx.ModelProto) -> int:
    """Number of learned values (float initialisers), the figure Hugging Face reports as parameters."""
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and t.dims)


def build_model_dir(
    arch: str,
    out_dir: Path,
    *,
    seed: int = 0,
    labels: Sequence[str] = ("Real", "Fake"),
    image_size: int = 224,
    fixed_shapes: bool = False,
) -> Path:
    """Write `config.json`, `preprocessor_config.json` and `onnx/model.onnx` under `out_dir`.

    Args:
        arch: a key of ARCHS.
        out_dir: the model directory to write (created with parents).
        seed: weight seed.
        labels: id2label values in index order.
        image_size: H = W, written to preprocessor_config.json `size`.
        fixed_shapes: declare fixed dims in the graph (default: symbolic, as real exports are).

    Returns:
        `out_dir`.
    """
    shape = _arch(arch)
    if len(labels) < 1 or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be non-empty and distinct, got {list(labels)}")
    model = build_model(arch, seed=seed, num_labels=len(labels), image_size=image_size, fixed_shapes=fixed_shapes)
    onnx_dir = out_dir / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    external = model.ByteSize() > EXTERNAL_DATA_THRESHOLD_BYTES
    onnx.save_model(
        model,
        onnx_dir / "model.onnx",
        save_as_external_data=external,
        location="model.onnx_data" if external else None,
    )
    _write_json(out_dir / "config.json", _hf_config(arch, shape, labels, image_size))
    _write_json(out_dir / "preprocessor_config.json", _preprocessor_config(image_size))
    logger.info("built %s (seed=%d, %d parameters) in %s", arch, seed, count_parameters(model), out_dir)
    return out_dir


def _arch(arch: str) -> VitArch:
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}") from None


def _hf_config(arch: str, shape: VitArch, labels: Sequence[str], image_size: int) -> dict[str, Any]:
    return {
        "_name_or_path": f"deepfake-processor/{arch}-random",
        "architectures": ["ViTForImageClassification"],
        "model_type": "vit",
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
        "image_size": image_size,
        "patch_size": shape.patch_size,
        "num_channels": 3,
        "hidden_size": shape.hidden_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "intermediate_size": shape.intermediate_size,
        "hidden_act": "gelu",
        "layer_norm_eps": LAYER_NORM_EPS,
        "qkv_bias": True,
    }


def _preprocessor_config(image_size: int) -> dict[str, Any]:
    # Shaped like the preprocessor_config.json of a transformers.js ViT export.
    return {
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "ViTImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "resample": 2,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": image_size, "width": image_size},
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m models.builder --arch vit-tiny --out models/bundled/vit-tiny`."""
    parser = argparse.ArgumentParser(prog="python -m models.builder", description=__doc__)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="vit-tiny")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels", default="Real,Fake", help="comma-separated class labels, index order")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--fixed-shapes", action="store_true", help="declare 3×H×W and C instead of symbolic dims")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_model_dir(args.arch, args.out, seed=args.seed, labels=args.labels.split(","), image_size=args.image_size,
                    fixed_shapes=args.fixed_shapes)  # fmt: skip


if __name__ == "__main__":
    main()

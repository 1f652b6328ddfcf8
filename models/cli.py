"""`deepfake-processor models build|variants|inspect|validate`: the model toolkit on the command line.

Registered into the main CLI by `processor.cli`. `onnx` and the quantizers (the `[models]` extra) are
imported inside the handlers, so `deepfake-processor --help` and `models validate` work without them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from models.errors import ModelError

# Mirrors models.builder.ARCHS, which cannot be imported here without onnx (a test keeps them equal).
ARCH_CHOICES = ("vit-b16", "vit-ti16", "vit-tiny")
VARIANT_CHOICES = ("fp32", "fp16", "int8", "q4", "bnb4")


def register(sub: Any) -> None:
    """Add the `models` command and its subcommands to the main parser's subparsers object."""
    models = sub.add_parser("models", help="build / derive variants / inspect / validate model directories")
    commands = models.add_subparsers(dest="models_command", required=True)

    build = commands.add_parser("build", help="build a seeded random-weight ViT directory (Hugging Face layout)")
    build.add_argument("--arch", choices=ARCH_CHOICES, required=True)
    build.add_argument("--out", type=Path, required=True, help="model directory to write")
    build.add_argument("--seed", type=int, default=0, help="weight seed; the same seed gives identical files")
    build.add_argument("--labels", default="Real,Fake", help="comma-separated class labels in index order")
    build.add_argument("--image-size", type=int, default=224, help="input height and width (multiple of 16)")
    build.add_argument("--fixed-shapes", action="store_true",
                       help="declare [batch_size,3,H,W] -> [batch_size,C] instead of the symbolic dims real "
                       "Optimum / transformers.js exports declare (the default)")  # fmt: skip
    build.set_defaults(handler=cmd_build)

    variants = commands.add_parser("variants", help="derive fp16/int8/q4/bnb4 variants into DIR/onnx/")
    variants.add_argument("dir", type=Path, metavar="DIR")
    variants.add_argument("--only", default=None, help="comma list of fp16,int8,q4,bnb4 (default: all)")
    variants.set_defaults(handler=cmd_variants)

    inspect = commands.add_parser("inspect", help="size, parameters, I/O, agreement with fp32, CPU latency")
    inspect.add_argument("dir", type=Path, metavar="DIR")
    inspect.add_argument("--images", type=int, default=32, help="synthetic images for the fp32 agreement check")
    inspect.add_argument("--runs", type=int, default=3, help="timed runs per batch size (median reported)")
    inspect.add_argument("--batch-sizes", default="1,32", help="comma list of batch sizes to time")
    inspect.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: all cores)")
    inspect.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the report as JSON")
    inspect.set_defaults(handler=cmd_inspect)

    validate = commands.add_parser("validate", help="exit 2 with the reason if DIR would not serve, else 0")
    validate.add_argument("dir", type=Path, metavar="DIR")
    validate.add_argument("--variant", choices=VARIANT_CHOICES, default=None, help="check one variant (default: all)")
    validate.add_argument("--fake-label", default=None, help="the label that means fake, as DFP_FAKE_LABEL")
    validate.set_defaults(handler=cmd_validate)


def cmd_build(args: argparse.Namespace) -> int:
    """`models build`: write a seeded random-weight ViT directory (and, asked, its variants)."""
    with _models_extra():
        from models.builder import build_model_dir

    labels = [label.strip() for label in args.labels.split(",")]
    try:
        out = build_model_dir(args.arch, args.out, seed=args.seed, labels=labels, image_size=args.image_size,
                              fixed_shapes=args.fixed_shapes)  # fmt: skip
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    model = out / "onnx" / "model.onnx"
    dims = "fixed" if args.fixed_shapes else "symbolic"
    print(f"built {args.arch} (seed {args.seed}, labels {', '.join(labels)}, {dims} dims): {model} {_mb(model)}")
    return 0


def cmd_variants(args: argparse.Namespace) -> int:
    """`models variants`: derive fp16/int8/q4/bnb4 files next to a directory's fp32 model."""
    with _models_extra():  # the quantizers import onnx_ir and friends lazily, so the loop is inside too
        from models.variants import derive_variants, parse_only

        wanted = parse_only(args.only)
        for i, variant in enumerate(wanted, start=1):
            print(f"[{i}/{len(wanted)}] {variant} …", end=" ", flush=True)
            (done,) = derive_variants(args.dir, (variant,))
            print(f"{done.path} {_mb(done.path)} in {done.seconds:.1f} s", flush=True)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """`models inspect`: a table (and optional JSON) of every variant's size, signature and speed."""
    with _models_extra():
        from models.inspect import format_table, inspect_model_dir, write_json

    if args.images < 1 or args.runs < 1:
        raise ModelError("--images and --runs must be at least 1")
    batch_sizes = _positive_ints(args.batch_sizes, "--batch-sizes")
    reports = inspect_model_dir(
        args.dir,
        images=args.images,
        runs=args.runs,
        batch_sizes=batch_sizes,
        threads=args.threads,
        on_start=lambda variant: print(f"inspecting {variant} …", file=sys.stderr, flush=True),
    )
    print(format_table(reports))
    if args.json is not None:
        write_json(reports, args.json, model_dir=args.dir, images=args.images, runs=args.runs)
        print(f"wrote {args.json}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """`models validate`: check that a directory would serve; exit 0 with one ok line, else 2."""
    from models.validate import validate_model_dir

    print(validate_model_dir(args.dir, args.variant, args.fake_label).line())
    return 0


@contextmanager
def _models_extra() -> Iterator[None]:
    """Turn a missing `[models]` extra into a configuration error that says what to install."""
    try:
        yield
    except ImportError as exc:
        raise ModelError(
            f"this command needs the [models] extra ({exc.name or exc}): pip install 'deepfake-processor[models]'"
        ) from None


def _positive_ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ModelError(f"{flag}: expected a comma list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ModelError(f"{flag}: batch sizes must be at least 1, got {text!r}")
    return values


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"

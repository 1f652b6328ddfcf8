"""A Python that imports the real onnxruntime-gpu wheel, for the `gpu_wheel` tests (no GPU needed).

The project depends on onnxruntime-gpu, so the test venv normally has it already and that interpreter is used.
Where `onnxruntime` is the CPU package instead (the two install the same module and conflict), a separate venv
is made once per pinned version under ~/.cache/deepfake-processor/ and reused; the project itself runs there
from the source tree through PYTHONPATH. ORTGPU_FORCE_VENV=1 makes the separate venv even when not needed.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

PINNED = "1.31.1"  # the onnxruntime-gpu wheel these tests were written against (CUDA 13 / cuDNN 9 build)
# What the processor imports at run time, besides onnxruntime-gpu itself (pyproject's dependencies + the HTTP stack).
RUNTIME_DEPS = ("numpy", "confluent-kafka", "opencv-python-headless", "pydantic", "pydantic-settings",
                "prometheus-client", "starlette", "uvicorn", "python-multipart", "psutil")  # fmt: skip
VENV_ROOT = Path.home() / ".cache" / "deepfake-processor"


def installed_ortgpu() -> str | None:
    """The version of onnxruntime-gpu installed for this interpreter, or None."""
    try:
        return importlib.metadata.version("onnxruntime-gpu")
    except importlib.metadata.PackageNotFoundError:
        return None


def venv_python(version: str = PINNED, log: list[str] | None = None) -> Path:
    """The cached venv's python for `version`, built on first use; RuntimeError (with pip's output) on failure.

    Args:
        version: the onnxruntime-gpu version to pin.
        log: where to append a line saying how long the install took (for the test report).

    Returns:
        Path to the venv's python.
    """
    root = VENV_ROOT / f"ortgpu-venv-{version}"
    python, done = root / "bin" / "python", root / ".complete"
    if done.exists():
        return python
    started = time.monotonic()
    steps = [[sys.executable, "-m", "venv", "--clear", str(root)],
             [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
              f"onnxruntime-gpu=={version}", *RUNTIME_DEPS]]  # fmt: skip
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, timeout=1800, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(step[:4])} … failed ({result.returncode}):\n{result.stderr[-3000:]}")
    done.write_text(version + "\n")
    if log is not None:
        log.append(f"onnxruntime-gpu {version} venv installed in {time.monotonic() - started:.0f} s at {root}")
    return python


def ortgpu_python(log: list[str] | None = None) -> Path:
    """This interpreter when it has the pinned onnxruntime-gpu, else the cached venv (built if needed)."""
    if installed_ortgpu() == PINNED and os.environ.get("ORTGPU_FORCE_VENV") != "1":
        return Path(sys.executable)
    return venv_python(PINNED, log)

"""Model directories: resolve and load them, parse their preprocessing, build and derive ONNX graphs.

`loader` and `preprocess` run in production with only onnxruntime/numpy/opencv; `builder` (and any
variant derivation) needs the `[models]` extra (`onnx`).
"""

from __future__ import annotations

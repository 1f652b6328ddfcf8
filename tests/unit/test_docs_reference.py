"""docs/OPERATIONS.md's metrics reference names every metric the processor exports, with its type and labels."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from processor.telemetry.metrics import Metrics

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"


def _documented() -> dict[str, tuple[str, str]]:
    rows = re.findall(r"^\| `(deepfake_\w+)` \| (\w+) \| ([^|]*) \|", OPERATIONS.read_text(), re.MULTILINE)
    return {name: (kind, labels.strip()) for name, kind, labels in rows}


def _exported() -> dict[str, tuple[str, str]]:
    out = {}
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            name = metric._name + ("_total" if metric._type == "counter" else "")
            out[name] = (metric._type, ", ".join(metric._labelnames) or "—")
    return out


def test_every_exported_metric_is_documented_with_its_type_and_labels_and_nothing_else_is() -> None:
    assert _documented() == _exported()

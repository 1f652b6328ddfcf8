"""The CPUs an ONNX Runtime session may use: one answer for the processor's engine and for `models validate`."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity, else os.cpu_count().

    A cpuset-limited container or a pinned process sees its own share, where os.cpu_count() reports the host's.
    """
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1

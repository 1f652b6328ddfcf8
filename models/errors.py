"""Errors of the model toolkit: one class, so `models` never depends on the service that loads it."""

from __future__ import annotations


class ModelError(Exception):
    """A model directory, file or variant is unusable (missing, malformed, unsupported); says which and why."""

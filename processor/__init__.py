"""Kafka-native deepfake scoring processor: image events in, scored results and dead letters out."""

from __future__ import annotations

__version__ = "0.1.0"
SERVICE_NAME = "deepfake-processor"

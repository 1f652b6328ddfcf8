"""Telemetry: metrics, the shared health state, Kafka statistics and GPU readings; written by the stages, read by HTTP."""

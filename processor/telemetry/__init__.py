"""Telemetry: metrics, shared health state, Kafka statistics, GPU readings; written by the stages, read by HTTP."""

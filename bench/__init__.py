"""The benchmark harness behind `deepfake-processor bench`: it drives the service and never the other way round."""

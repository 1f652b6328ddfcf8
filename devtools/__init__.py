"""Developer tools: the demo, the embedded broker, the load generator, sample images, a processor subprocess runner."""

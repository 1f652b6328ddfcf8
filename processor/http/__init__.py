"""The HTTP front door: a Starlette app (probes, /metrics, /detect, admin) served by uvicorn in its own thread."""

"""Every metric the Grafana dashboard and the alert rules query is exported by a live processor's /metrics."""

from __future__ import annotations

from tests.deploy_files import alert_exprs, dashboard_exprs, unexported_names
from tests.procs import processor_env


def test_dashboard_and_alert_queries_name_metrics_a_running_processor_exports(
    tansu, topic_factory, group_id, processor_factory
) -> None:  # type: ignore[no-untyped-def]
    topic_in, topic_out, dlq = (topic_factory(tansu.bootstrap, 1, p) for p in ("in", "out", "dlq"))
    proc = processor_factory(processor_env(tansu.bootstrap, topic_in, topic_out, dlq, group_id))
    status, body = proc.get("/metrics")
    assert status == 200
    exprs = dashboard_exprs() + alert_exprs()
    assert exprs, "dashboard and alerts have queries"
    assert unexported_names(exprs, body.decode()) == set()

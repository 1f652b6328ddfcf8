"""Deployment artefacts agree with each other and with the processor: compose, Dockerfile, Prometheus rules,
Grafana dashboard, Kubernetes examples and the runbook (docs/OPERATIONS.md). Offline; promtool checks skip
when promtool is absent."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from processor.settings import Settings
from tests.deploy_files import (
    alert_exprs,
    alerts,
    compose,
    compose_default,
    compose_service,
    dashboard_exprs,
    dashboard_panels,
    environment,
    load_dashboard,
    load_yaml,
    metric_family,
    promql_metric_names,
    promql_recorded_names,
    rules,
    seconds,
    unexported_names,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "deepfake-processor.json"
GRAFANA_PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
KUBERNETES = ROOT / "deploy" / "kubernetes"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
TOPICS = ("images.uploaded", "images.deepfake-scores", "images.deepfake-dlq")
PROMTOOL_MISSING = "promtool not installed (Debian package prometheus)"


def _panel_table_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("panel_table", ROOT / "deploy" / "grafana" / "panel_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lower-case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _operations_anchors() -> set[str]:
    text = OPERATIONS.read_text(encoding="utf-8")
    return {_github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE)}


def _kubernetes_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(KUBERNETES.glob("*.y*ml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc)
    return docs


def _kubernetes(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _kubernetes_docs() if d["kind"] == kind]
    return doc


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI") == "true":  # .ci/run installs it: in CI a missing promtool is a failure
            pytest.fail(PROMTOOL_MISSING + "; .ci/run installs it (apt-get install prometheus)")
        pytest.skip(PROMTOOL_MISSING)
    return path


def _run_promtool(*args: str) -> None:
    result = subprocess.run([_promtool(), *args], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"


# ---- the name extraction itself ----------------------------------------------------------------------------


def test_promql_metric_names_reads_series_names_but_not_label_values_or_recorded_names() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(deepfake_stage_latency_seconds_bucket{stage="deepfake_x"}[5m])))'
        " > on () group_left () deepfake:end_to_end_latency_slo_seconds"
        ' and sum(rate(deepfake_events_consumed_total{topic=~"deepfake_.*"}[5m])) > 0'
    )
    assert promql_metric_names(expr) == {"deepfake_stage_latency_seconds_bucket", "deepfake_events_consumed_total"}
    assert promql_recorded_names(expr) == {"deepfake:end_to_end_latency_slo_seconds"}


def test_metric_family_maps_histogram_and_counter_series_to_their_family() -> None:
    families = {"deepfake_batch_size": "histogram", "deepfake_events_scored": "counter", "deepfake_ready": "gauge"}
    assert metric_family("deepfake_batch_size_bucket", families) == "deepfake_batch_size"
    assert metric_family("deepfake_batch_size_count", families) == "deepfake_batch_size"
    assert metric_family("deepfake_events_scored_total", families) == "deepfake_events_scored"
    assert metric_family("deepfake_ready", families) == "deepfake_ready"
    assert metric_family("deepfake_ready_total", families) is None
    assert metric_family("deepfake_nope", families) is None


def test_every_metric_in_the_dashboard_and_alerts_is_exported_by_the_processor() -> None:
    from prometheus_client import generate_latest

    from processor.telemetry.metrics import Metrics

    exposition = generate_latest(Metrics().registry).decode()
    exprs = dashboard_exprs() + alert_exprs()
    assert any(promql_metric_names(e) for e in exprs)
    assert unexported_names(exprs, exposition) == set()


def test_every_recorded_name_used_is_defined_by_a_recording_rule() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    used = {name for expr in dashboard_exprs() + alert_exprs() for name in promql_recorded_names(expr)}
    assert used <= recorded


# ---- docker-compose.yml --------------------------------------------------------------------------------------


def test_compose_runs_kafka_topic_init_processor_prometheus_and_grafana() -> None:
    assert {"kafka", "topic-init", "processor", "prometheus", "grafana"} <= set(compose()["services"])


def test_kafka_is_a_single_kraft_node_with_a_healthcheck() -> None:
    kafka = compose_service("kafka")
    env = environment(kafka)
    assert kafka["image"] == "apache/kafka:4.1.0"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@kafka:")
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert not any("ZOOKEEPER" in key for key in env)
    assert kafka["healthcheck"]["test"]
    # Large images must fit the input and, verbatim, the dead-letter topic (docs/EVENTS.md): 20 MiB base64'd is ~27 MiB.
    assert int(compose_default(env["KAFKA_MESSAGE_MAX_BYTES"])) >= 28 * 1024 * 1024


def test_topic_init_creates_the_three_topics_once_kafka_is_healthy() -> None:
    init = compose_service("topic-init")
    script = " ".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    assert init["image"] == compose_service("kafka")["image"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "/opt/kafka/bin/kafka-topics.sh" in script
    assert "--if-not-exists" in script
    assert "${PARTITIONS:-6}" in script
    assert all(topic in script for topic in TOPICS)


def test_processor_reserves_one_gpu_waits_for_topics_and_checks_readyz() -> None:
    processor = compose_service("processor")
    (device,) = processor["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["count"] == 1
    assert device["capabilities"] == ["gpu"]
    assert processor["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
    assert "/readyz" in " ".join(processor["healthcheck"]["test"])
    assert any(str(port).endswith("8007") for port in processor["ports"])
    assert any(str(volume).split(":")[1] == "/models" for volume in processor["volumes"])
    assert processor["build"]["context"] == "."


def test_processor_settings_point_at_the_compose_kafka_and_topics() -> None:
    env = environment(compose_service("processor"))
    assert env["DFP_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert (env["DFP_INPUT_TOPIC"], env["DFP_OUTPUT_TOPIC"], env["DFP_DLQ_TOPIC"]) == TOPICS
    assert env["DFP_GROUP_ID"] == "deepfake-processor"


def test_processor_gets_more_stop_time_than_its_shutdown_timeout() -> None:
    processor = compose_service("processor")
    shutdown_s = float(compose_default(environment(processor)["DFP_SHUTDOWN_TIMEOUT_S"]))
    assert seconds(processor["stop_grace_period"]) > shutdown_s


def test_compose_bind_mounts_exist_in_the_repository() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else str(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source}"


def test_prometheus_and_grafana_mount_the_deploy_configuration() -> None:
    prometheus = " ".join(compose_service("prometheus")["volumes"])
    grafana = " ".join(compose_service("grafana")["volumes"])
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml" in prometheus
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml" in prometheus
    assert "./deploy/grafana/provisioning/datasources:/etc/grafana/provisioning/datasources" in grafana
    assert "./deploy/grafana/provisioning/dashboards:/etc/grafana/provisioning/dashboards" in grafana
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards" in grafana


def test_cpu_override_drops_the_gpu_reservation_and_builds_the_cpu_image() -> None:
    processor = load_yaml(ROOT / "deploy" / "compose" / "cpu.yml")["services"]["processor"]
    assert processor["build"]["args"]["VARIANT"] == "cpu"
    assert processor["deploy"] is None  # `!reset`
    assert processor["environment"]["DFP_PROVIDERS"] == "cpu"


def test_real_model_override_mounts_a_host_directory_at_models() -> None:
    processor = load_yaml(ROOT / "deploy" / "compose" / "real-model.yml")["services"]["processor"]
    (mount,) = processor["volumes"]
    assert mount["target"] == "/models"
    assert mount["read_only"] is True
    assert processor["environment"]["DFP_MODEL_DIR"] == "/models"


def test_every_dfp_variable_in_the_deployments_is_a_setting() -> None:
    fields = set(Settings.model_fields)
    names = set(environment(compose_service("processor")))
    names |= set(load_yaml(ROOT / "deploy" / "compose" / "real-model.yml")["services"]["processor"]["environment"])
    container = _kubernetes("Deployment")["spec"]["template"]["spec"]["containers"][0]
    names |= {item["name"] for item in container["env"]}
    unknown = {
        n for n in names if n.startswith("DFP_") and not n.startswith("DFP_KAFKA_") and n[4:].lower() not in fields
    }
    assert unknown == set()


# ---- Dockerfile ----------------------------------------------------------------------------------------------


def _dockerfile() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


def test_dockerfile_defaults_to_cuda_with_cudnn_and_has_a_cpu_variant() -> None:
    text = _dockerfile()
    assert re.search(r"^ARG BASE_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+$", text, re.M)
    assert re.search(r"^ARG CPU_BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^ARG VARIANT=gpu$", text, re.M)
    assert "FROM base-${VARIANT} AS base" in text
    assert re.search(r"^FROM \S+ AS base-gpu$", text, re.M) and re.search(r"^FROM \S+ AS base-cpu$", text, re.M)
    assert "pip install ." in text


def test_dockerfile_runs_as_non_root_with_the_cli_entrypoint_and_a_readyz_healthcheck() -> None:
    text = _dockerfile()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert re.search(r'^ENTRYPOINT \["deepfake-processor"\]$', text, re.M)
    assert re.search(r'^CMD \["run"\]$', text, re.M)
    healthcheck = text[text.index("HEALTHCHECK") :].split("\n\n")[0]
    assert "/readyz" in healthcheck and "urllib" in healthcheck and "curl" not in healthcheck
    assert "/models" in text and "EXPOSE 8007" in text


def _dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes. Good enough for the patterns we use."""
    allowed = True
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if Path(path).match(pattern) or path == pattern or path.startswith(pattern + "/"):
            allowed = negate
    return allowed


def test_dockerignore_lets_in_every_copied_source_and_keeps_out_the_rest() -> None:
    sources = [
        src.rstrip("*")  # `README.md*`: optional file
        for line in re.findall(r"^COPY (?!--from)(.+)$", _dockerfile(), re.M)
        for src in line.split()[:-1]
        if not src.startswith("--")
    ]
    assert {"pyproject.toml", "processor", "schemas", "models"} <= set(sources)
    assert all(_dockerignore_allows(src) for src in sources), sources
    for excluded in (".git", ".venv", "tests", "docs", "bench-out"):
        assert not _dockerignore_allows(excluded), excluded


# ---- Prometheus --------------------------------------------------------------------------------------------


def test_prometheus_scrapes_the_processor_job_that_the_alerts_select() -> None:
    config = load_yaml(PROMETHEUS)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "deepfake-processor"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert [sd["port"] for sd in job["dns_sd_configs"]] == [8007]
    assert [sd["names"] for sd in job["dns_sd_configs"]] == [["processor"]]
    assert config["rule_files"] == [ALERTS.name]


def test_prometheus_config_passes_promtool() -> None:
    _run_promtool("check", "config", str(PROMETHEUS))


def test_alert_rules_pass_promtool() -> None:
    _run_promtool("check", "rules", str(ALERTS))


def test_alert_rules_behave_as_their_unit_tests_say() -> None:
    _run_promtool("test", "rules", str(ALERTS_TEST))


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    promtool = _promtool()
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m").replace("$instance", ".*")}
        for i, expr in enumerate(dashboard_exprs())
        if not expr.startswith("label_values(")
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_expected_alerts_exist() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    assert {
        "DeepfakeConsumerLagGrowing",
        "DeepfakeDeadLetterRateHigh",
        "DeepfakeEndToEndLatencyHigh",
        "DeepfakeProcessorNotReady",
        "DeepfakeProcessorDown",
        "DeepfakeGpuMemoryHigh",
        "DeepfakeProcessorStalled",
    } <= set(names)
    exprs = {rule["alert"]: str(rule["expr"]) for rule in alerts()}
    assert 'deepfake_stage_latency_seconds_bucket{stage="end_to_end"}' in exprs["DeepfakeEndToEndLatencyHigh"]
    assert "deriv(" in exprs["DeepfakeConsumerLagGrowing"]
    assert "deepfake_gpu_memory_total_bytes" in exprs["DeepfakeGpuMemoryHigh"]


def test_every_alert_has_severity_summary_description_and_a_runbook_anchor_in_operations_md() -> None:
    anchors = _operations_anchors()
    for rule in alerts():
        annotations = rule.get("annotations", {})
        assert {"summary", "description", "runbook_url"} <= set(annotations), rule["alert"]
        assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, rule["alert"]
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/OPERATIONS.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in docs/OPERATIONS.md"


# ---- Grafana -------------------------------------------------------------------------------------------------


def test_dashboard_is_valid_and_uses_the_provisioned_datasource() -> None:
    dashboard = load_dashboard()
    (datasource,) = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"]
    panels = list(dashboard_panels())
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_dashboard_shows_what_operators_need() -> None:
    titles = {p["title"] for p in dashboard_panels()}
    text = json.dumps(load_dashboard())
    assert {"Throughput", "Dead letters by code", "Fake ratio by label", "Batch size distribution"} <= titles
    assert {"Per-stage latency p50 / p95 / p99", "End-to-end p99 vs SLO", "Consumer lag per partition"} <= titles
    assert {"In-flight events and backpressure", "Readiness by instance", "Model", "GPU memory"} <= titles
    for name in ("deepfake_consumer_paused", "deepfake_model_info", "deepfake_gpu_utilization_ratio"):
        assert name in text


def test_dashboard_provisioning_points_at_the_mounted_dashboards() -> None:
    (provider,) = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "deepfake-processor.yml")["providers"]
    mounts = dict(v.split(":")[:2] for v in compose_service("grafana")["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]


def test_operations_md_lists_the_dashboard_panels_as_they_are_in_the_json() -> None:
    panel_table = _panel_table_module()
    document = OPERATIONS.read_text(encoding="utf-8")
    expected = panel_table.splice(document, panel_table.render(load_dashboard()))
    assert document == expected, "run: python deploy/grafana/panel_table.py --write"


# ---- Kubernetes ------------------------------------------------------------------------------------------


def test_kubernetes_examples_are_a_deployment_and_a_keda_scaled_object() -> None:
    kinds = {(doc["apiVersion"], doc["kind"]) for doc in _kubernetes_docs()}
    assert kinds == {("apps/v1", "Deployment"), ("keda.sh/v1alpha1", "ScaledObject")}


def test_deployment_requests_a_gpu_probes_readyz_and_healthz_and_outlasts_the_drain() -> None:
    pod = _kubernetes("Deployment")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(env["DFP_SHUTDOWN_TIMEOUT_S"])
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8007"
    assert [p["containerPort"] for p in container["ports"]] == [8007]


def test_scaled_object_scales_the_deployment_on_its_own_group_lag_up_to_the_partition_count() -> None:
    deployment = _kubernetes("Deployment")
    scaled = _kubernetes("ScaledObject")
    env = {i["name"]: i.get("value") for i in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    (trigger,) = scaled["spec"]["triggers"]
    metadata = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert metadata["consumerGroup"] == env["DFP_GROUP_ID"] == "deepfake-processor"
    assert metadata["topic"] == env["DFP_INPUT_TOPIC"]
    assert metadata["bootstrapServers"] == env["DFP_BOOTSTRAP_SERVERS"]
    assert int(metadata["lagThreshold"]) > 0
    # Partitions >= instances: replicas beyond the partition count would idle, each holding a GPU.
    init = compose_service("topic-init")
    script = " ".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    partitions = re.search(r"\$\{PARTITIONS:-(\d+)\}", script)
    assert partitions is not None
    assert scaled["spec"]["maxReplicaCount"] == int(partitions.group(1))
    assert str(metadata.get("allowIdleConsumers", "false")).lower() == "false"


TRT_CACHE = "/var/cache/deepfake-processor/trt"


def test_compose_keeps_the_tensorrt_cache_on_a_named_volume_at_dfp_trt_cache_dir() -> None:
    processor = compose_service("processor")
    assert environment(processor)["DFP_TRT_CACHE_DIR"] == TRT_CACHE
    assert f"trt-cache:{TRT_CACHE}" in processor["volumes"]
    assert "trt-cache" in yaml.safe_load(COMPOSE.read_text())["volumes"]


def test_kubernetes_mounts_an_empty_dir_at_dfp_trt_cache_dir() -> None:
    pod = _kubernetes("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert env["DFP_TRT_CACHE_DIR"] == TRT_CACHE
    assert "emptyDir" in volumes[mounts[TRT_CACHE]]


def test_dockerfile_creates_the_tensorrt_cache_owned_by_the_app_user() -> None:
    text = DOCKERFILE.read_text()
    assert f"ENV DFP_TRT_CACHE_DIR={TRT_CACHE}" in text
    assert "chown -R app:app /var/cache/deepfake-processor" in text

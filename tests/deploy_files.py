"""The deployment files as data: compose, Prometheus rules, the Grafana dashboard, and the PromQL names they read.

Shared by the offline checks (tests/unit/test_deploy.py) and the check against a live /metrics
(tests/integration/test_dashboard_live.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "deepfake-processor.json"


_STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_DEEPFAKE_NAME = re.compile(r"(?<![A-Za-z0-9_:])deepfake_[a-z0-9_]+")
_RECORDED_NAME = re.compile(r"(?<![A-Za-z0-9_:])deepfake:[a-z0-9_:]+")


def promql_metric_names(expr: str) -> set[str]:
    """The `deepfake_*` series names a PromQL expression reads, as written (`..._bucket`, `..._total` kept).

    String literals are dropped first, so label values such as `{code="deepfake_x"}` never count.
    """
    return set(_DEEPFAKE_NAME.findall(_STRING_LITERAL.sub('""', expr)))


def promql_recorded_names(expr: str) -> set[str]:
    """The `deepfake:*` recording-rule names a PromQL expression reads."""
    return set(_RECORDED_NAME.findall(_STRING_LITERAL.sub('""', expr)))


def exported_families(exposition: str) -> dict[str, str]:
    """Family name -> type ("counter", "histogram", ...) of a Prometheus text exposition (e.g. /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {family.name: family.type for family in text_string_to_metric_families(exposition)}


_SUFFIXES_BY_TYPE = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("_sum", "_count"),
}


def metric_family(series_name: str, families: dict[str, str]) -> str | None:
    """The exported family a series name belongs to (`x_bucket` -> histogram `x`, `x_total` -> counter `x`)."""
    if series_name in families:
        return series_name
    for family, kind in families.items():
        for suffix in _SUFFIXES_BY_TYPE.get(kind, ()):
            if series_name == family + suffix:
                return family
    return None


def unexported_names(exprs: list[str], exposition: str) -> set[str]:
    """Every `deepfake_*` name read by `exprs` that no family of `exposition` exports."""
    families = exported_families(exposition)
    return {name for expr in exprs for name in promql_metric_names(expr) if metric_family(name, families) is None}


# ---- loading ---------------------------------------------------------------------------------------------


class _ComposeLoader(yaml.SafeLoader):
    """Safe YAML plus Compose's merge tags (`!reset`, `!override`) used by the override files."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: None)
_ComposeLoader.add_constructor(
    "!override",
    lambda loader, node: (
        loader.construct_sequence(node)
        if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node)
        if isinstance(node, yaml.MappingNode)
        else loader.construct_scalar(node)
    ),
)


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_ComposeLoader)


@cache
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def compose_service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def compose_default(value: str) -> str:
    """`${NAME:-default}` -> default; anything else unchanged."""
    match = re.fullmatch(r"\$\{[A-Z0-9_]+:?-([^}]*)\}", value)
    return match.group(1) if match else value


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration))


@cache
def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


@cache
def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in load_dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows nest their panels


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", []) if t.get("expr")]
    for variable in load_dashboard().get("templating", {}).get("list", []):
        query = variable.get("query")
        exprs.append(query.get("query", "") if isinstance(query, dict) else str(query or ""))
    return exprs


def alert_exprs() -> list[str]:
    return [str(rule["expr"]) for rule in rules()]

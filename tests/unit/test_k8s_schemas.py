"""The Kubernetes examples validate against Kubernetes' published JSON schemas (the kubernetes-validate package).

KEDA's ScaledObject is a custom resource whose CRD schema no PyPI package ships, so its Kubernetes-typed parts
(ObjectMeta, the HPA behavior it passes through to the HorizontalPodAutoscaler) are validated against the
published schemas, and the rest against the Deployment it scales.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
#: Oldest supported Kubernetes minor and the newest the package knows.
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def _load(name: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    assert len(docs) == 1
    return docs[0]  # type: ignore[no-any-return]


def _validate_part(part: dict[str, Any], schema_file: str, version: str) -> None:
    """Validate one object against one type's strict schema of `version`, refs resolved like kubernetes-validate."""
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    schema = schema_contents(f"{folder}/{schema_file}", version)
    registry: Registry[Any] = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(schema_contents(f"{folder}/_definitions.json", version)) @ registry
    jsonschema.validators.Draft202012Validator(schema, registry=registry).validate(part)


@pytest.mark.parametrize("version", VERSIONS)
def test_deployment_validates_strictly_against_the_published_kubernetes_schema(version: str) -> None:
    assert kubernetes_validate.validate(_load("deployment.yaml"), version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_scaled_object_kubernetes_parts_validate_against_the_published_schemas(version: str) -> None:
    scaled = _load("keda-scaledobject.yaml")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):  # a CRD: not in Kubernetes' own schemas
        kubernetes_validate.validate(scaled, version, strict=True)
    _validate_part(scaled["metadata"], "objectmeta-meta-v1.json", version)
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    _validate_part(behavior, "horizontalpodautoscalerbehavior-autoscaling-v2.json", version)


def test_a_typo_in_the_deployment_fails_strict_validation() -> None:
    broken = _load("deployment.yaml")
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_scaled_object_targets_the_deployment_and_its_consumer_group_and_topic() -> None:
    deployment, scaled = _load("deployment.yaml"), _load("keda-scaledobject.yaml")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == env.get("DFP_GROUP_ID", "deepfake-processor")
    assert trigger["metadata"]["topic"] == env.get("DFP_INPUT_TOPIC", "images.uploaded")

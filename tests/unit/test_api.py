"""The HTTP app in process: /detect status mapping, readiness, limits, multipart, auth, admin, OpenAPI document."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr
from starlette.exceptions import StarletteDeprecationWarning

from processor.errors import DLQ_ERRORS, ERROR_CODES, ConfigError, FetchFailed, InferenceFailed, ProcessorError
from processor.http.api import STATUS_BY_CODE, DetectApi, DetectFn, with_event_id
from processor.http.limits import ApiLimits
from processor.http.routes import Reloader, build_app
from processor.http.server import bearer_token
from processor.inflight import Headers, InFlight
from processor.settings import Settings
from processor.telemetry.health import Health
from processor.telemetry.metrics import Metrics

with warnings.catch_warnings():  # Starlette 1.x nudges towards the httpx2 fork; httpx serves the test client fine
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

LIMITS = ApiLimits(max_body_bytes=1000, max_batch=3, timeout_s=2.0)
Seen = list[tuple[bytes, Headers | None]]


def finished(error: ProcessorError, seen: Seen | None = None) -> DetectFn:
    """A fake submit_detect that finishes every image with `error` (and records what it was given)."""

    def detect(value: bytes, item_headers: Headers | None) -> Future[InFlight]:
        if seen is not None:
            seen.append((value, item_headers))
        item = InFlight("http", -1, -1, None, value, item_headers, None)
        item.error = error
        future: Future[InFlight] = Future()
        future.set_result(item)
        return future

    return detect


def ready() -> Health:
    return Health(model_loaded=True, warmed_up=True, joined_group=True)


def client(
    detect: DetectFn | None = None,
    health: Health | None = None,
    limits: ApiLimits = LIMITS,
    metrics: Metrics | None = None,
    reload: Reloader | None = None,
    token: bytes | None = None,
) -> TestClient:
    health = health or ready()
    metrics = metrics or Metrics()
    api = DetectApi(detect, health, limits, metrics) if detect is not None else None
    return TestClient(build_app(health, metrics, api, reload, token), raise_server_exceptions=False)


@pytest.fixture
def fetch_failed() -> Iterator[TestClient]:
    with client(finished(FetchFailed("404"))) as c:
        yield c


def test_every_dlq_code_has_a_status_and_client_input_never_maps_to_5xx() -> None:
    assert set(STATUS_BY_CODE) == set(ERROR_CODES)
    server_side = {code for code, status in STATUS_BY_CODE.items() if status >= 500}
    assert server_side == {"inference_failed"}


@pytest.mark.parametrize("error_class", DLQ_ERRORS)
def test_an_image_refused_with_a_dlq_code_answers_its_status_and_code(error_class: type[ProcessorError]) -> None:
    reply = client(finished(error_class("why"))).post("/detect", content=b"\xff\xd8")
    assert (reply.status_code, reply.json()) == (
        STATUS_BY_CODE[error_class.code],
        {"error": {"code": error_class.code, "message": "why"}},
    )


def test_requests_and_refused_images_are_counted_by_route_status_and_code() -> None:
    metrics = Metrics()
    api = client(finished(FetchFailed("404")), metrics=metrics)
    api.post("/detect", content=b"{}")
    api.post("/detect", content=b"{}")
    client(finished(FetchFailed("404")), Health(), metrics=metrics).post("/detect", content=b"x")

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert value("deepfake_api_requests_total", route="/detect", status="422") == 2
    assert value("deepfake_api_requests_total", route="/detect", status="503") == 1
    assert value("deepfake_api_images_total", route="/detect", outcome="fetch_failed") == 2  # refused: no image


def test_fetch_failed_is_422_and_inference_failed_is_500(fetch_failed: TestClient) -> None:
    assert fetch_failed.post("/detect", content=b"{}").status_code == 422
    assert client(finished(InferenceFailed("nan"))).post("/detect", content=b"x").status_code == 500


def test_not_warm_or_draining_is_503_not_ready_with_retry_after() -> None:
    for health in (Health(), Health(model_loaded=True, warmed_up=True, stopping=True)):
        reply = client(finished(InferenceFailed("x")), health).post("/detect", content=b"x" * 10)
        assert (reply.status_code, reply.json()["error"]["code"]) == (503, "not_ready")
        assert reply.headers["Retry-After"] == "1"


def test_a_pipeline_that_is_shut_down_is_503() -> None:
    def detect(value: bytes, item_headers: Headers | None) -> Future[InFlight]:
        raise RuntimeError("cannot schedule new futures after shutdown")

    assert client(detect).post("/detect", content=b"x").json()["error"]["code"] == "not_ready"


def test_no_result_within_the_timeout_is_503_timeout() -> None:
    limits = ApiLimits(max_body_bytes=1000, max_batch=3, timeout_s=0.05)
    reply = client(lambda value, h: Future(), limits=limits).post("/detect", content=b"x")
    assert (reply.status_code, reply.json()["error"]["code"]) == (503, "timeout")


def test_body_over_the_limit_is_413_and_a_chunked_body_within_it_is_scored() -> None:
    api = client(finished(InferenceFailed("x")))
    reply = api.post("/detect", content=b"x" * 1001)
    assert (reply.status_code, reply.json()["error"]["code"]) == (413, "image_too_large")
    over = api.post("/detect", content=iter([b"x" * 600, b"x" * 600]))  # a generator goes out chunked
    assert (over.status_code, over.json()["error"]["code"]) == (413, "image_too_large")
    assert api.post("/detect", content=iter([b"x" * 500, b"x" * 500])).status_code == 500  # read whole, then scored


def test_images_reach_the_pipeline_as_kafka_shaped_events() -> None:
    seen: Seen = []
    api = client(finished(InferenceFailed("x"), seen))
    api.post("/detect", content=b"\xff\xd8raw", headers={"Content-Type": "image/jpeg"})
    api.post("/detect", content=b'{"image_b64": "AAAA"}', headers={"Content-Type": "application/json"})
    batch = {"images": [{"image_b64": "AA"}, {"event_id": "mine", "image_b64": "BB"}]}
    api.post("/detect/batch", json=batch)
    raw, envelope, first, second = seen
    assert raw[0] == b"\xff\xd8raw" and raw[1] is not None and raw[1][0][0] == "event_id"
    assert json.loads(envelope[0])["event_id"].startswith("http-")
    assert json.loads(first[0])["event_id"].startswith("http-") and json.loads(second[0])["event_id"] == "mine"


def test_a_batch_over_the_limit_is_413_and_an_unknown_body_type_is_415() -> None:
    api = client(finished(InferenceFailed("x")))
    reply = api.post("/detect/batch", json={"images": [{"image_b64": "AA"}] * 4})
    assert (reply.status_code, reply.json()["error"]["code"]) == (413, "batch_too_large")
    assert api.post("/detect/batch", content=b"\xff\xd8", headers={"Content-Type": "image/jpeg"}).status_code == 415


def test_with_event_id_lets_the_clients_own_id_win() -> None:
    assert json.loads(with_event_id(b' {"event_id": "mine", "a": 1}', "gen")) == {"event_id": "mine", "a": 1}
    assert json.loads(with_event_id(b"{ }", "gen")) == {"event_id": "gen"}
    assert json.loads(with_event_id(b'{"a": 1}', "gen")) == {"event_id": "gen", "a": 1}
    assert with_event_id(b"[1]", "gen") == b"[1]"


def test_a_multipart_image_reaches_the_pipeline_with_its_bytes_exactly() -> None:
    data = bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)) + b"\r\n\r\n--\r\n"
    seen: Seen = []
    api = client(finished(InferenceFailed("x"), seen), limits=ApiLimits(100_000, 3, 2.0))
    api.post("/detect", files={"image": ("a b.jpg", data, "image/jpeg")})
    api.post("/detect", files={"image": ("a.jpg", data, "image/jpeg")}, data={"faces": "[]", "event_id": "e"})
    assert seen[0][0] == data
    big = data * 300  # 1.5 MB: over Starlette's 1 MB spool size, still read back from memory exactly
    client(finished(InferenceFailed("x"), seen), limits=ApiLimits(4_000_000, 3, 2.0)).post(
        "/detect", files={"image": ("big.jpg", big, "image/jpeg")}
    )
    assert seen[2][0] == big
    envelope = json.loads(seen[1][0])
    assert (envelope["event_id"], envelope["faces"]) == ("e", [])


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (b"--x\r\nno boundary declared", "multipart/form-data", "invalid_schema"),
        (b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--XyZ--\r\n", "multipart/form-data; boundary=XyZ",
         "invalid_schema"),
        (b'--XyZ\r\nContent-Disposition: form-data; name="faces"\r\n\r\n[]\r\n--XyZ--\r\n',
         "multipart/form-data; boundary=XyZ", "missing_image"),
    ],
)  # fmt: skip
def test_malformed_or_imageless_multipart_is_400_with_its_code(body: bytes, content_type: str, code: str) -> None:
    reply = client(finished(InferenceFailed("x"))).post("/detect", content=body, headers={"Content-Type": content_type})
    assert (reply.status_code, reply.json()["error"]["code"]) == (400, code)


def test_unknown_routes_and_methods_answer_json_404_and_405_with_allow(fetch_failed: TestClient) -> None:
    reply = fetch_failed.get("/detect")
    assert (reply.status_code, reply.json()["error"]["code"], reply.headers["Allow"]) == (405, "method_not_allowed",
                                                                                          "POST")  # fmt: skip
    reply = fetch_failed.delete("/health")
    assert (reply.status_code, reply.headers["Allow"]) == (405, "GET, HEAD")
    assert fetch_failed.post("/nope", content=b"x").json()["error"]["code"] == "not_found"
    assert client().post("/detect", content=b"x").status_code == 404  # DFP_HTTP_API=false


def test_probes_answer_from_health() -> None:
    health = Health(model_loaded=True, warmed_up=True)
    api = client(health=health)
    assert api.get("/healthz").json() == {"status": "alive"}
    assert api.get("/readyz").status_code == 503
    health.joined_group = True
    assert (api.get("/readyz").status_code, api.get("/readyz").json()["ready"]) == (200, True)
    assert api.get("/health").json()["model_loaded"] is True
    assert api.get("/metrics").text.startswith("# HELP")


def test_a_token_guards_detect_and_admin_but_not_probes_or_metrics() -> None:
    api = client(finished(FetchFailed("404")), reload=lambda d, v: {"swapped": True}, token=b"s3cret")
    for path in ("/detect", "/detect/batch", "/admin/reload"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            reply = api.post(path, content=b"{}", headers=headers)
            assert (reply.status_code, reply.headers["WWW-Authenticate"]) == (401, "Bearer"), (path, headers)
            assert reply.json()["error"]["code"] == "unauthorized"
    assert api.post("/detect", content=b"{}", headers={"Authorization": "Bearer s3cret"}).status_code == 422
    assert api.post("/admin/reload", headers={"Authorization": "bearer s3cret"}).status_code == 200
    assert [api.get(p).status_code for p in ("/healthz", "/health", "/metrics", "/openapi.json")] == [200] * 4


def test_the_token_comes_from_the_setting_or_a_file_read_at_start(tmp_path: Path) -> None:
    assert bearer_token(Settings(api_token=SecretStr(" tok\n"))) == b"tok"
    (tmp_path / "token").write_text("from-file\n")
    assert bearer_token(Settings(api_token_file=tmp_path / "token")) == b"from-file"
    assert bearer_token(Settings()) is None
    assert "s3cr3t-value" not in repr(Settings(api_token=SecretStr("s3cr3t-value")))
    for bad in ({"api_token_file": tmp_path / "missing"}, {"api_token": SecretStr(" ")},
                {"api_token": SecretStr("a"), "api_token_file": tmp_path / "token"}):  # fmt: skip
        with pytest.raises(ConfigError):
            bearer_token(Settings(**bad))


def test_admin_reload_takes_a_small_json_object_and_answers_409_when_refused() -> None:
    calls: list[tuple[Path | None, str | None]] = []

    def reload(model_dir: Path | None, variant: str | None) -> dict[str, Any]:
        calls.append((model_dir, variant))
        return {"swapped": variant != "bad"}

    api = client(reload=reload)
    assert api.post("/admin/reload").status_code == 200
    assert api.post("/admin/reload", json={"model_dir": "/m", "variant": "bad"}).status_code == 409
    assert calls == [(None, None), (Path("/m"), "bad")]
    for body in (b"{nope", b"[1]", b"\xff"):
        reply = api.post("/admin/reload", content=body)
        assert (reply.status_code, reply.json()["error"]["code"]) == (400, "invalid_request")
    too_big = api.post("/admin/reload", content=iter([b" " * 40_000, b" " * 40_000]))
    assert (too_big.status_code, too_big.json()["error"]["code"]) == (413, "image_too_large")
    assert len(calls) == 2
    assert client().post("/admin/reload").status_code == 404  # DFP_ADMIN_API=false


def test_openapi_document_is_valid_openapi_3_1_and_lists_only_mounted_routes() -> None:
    schemathesis = pytest.importorskip("schemathesis")
    document = client(finished(FetchFailed("x")), limits=ApiLimits(1000, 7, 1.0)).get("/openapi.json").json()
    schemathesis.openapi.from_dict(document).validate()
    assert document["components"]["schemas"]["DetectBatchRequest"]["properties"]["images"]["maxItems"] == 7
    assert set(document["paths"]) == {"/health", "/healthz", "/readyz", "/detect", "/detect/batch"}
    assert "/detect" not in client().get("/openapi.json").json()["paths"]
    secured = client(finished(FetchFailed("x")), token=b"t").get("/openapi.json").json()
    schemathesis.openapi.from_dict(secured).validate()
    assert "401" in secured["paths"]["/detect"]["post"]["responses"]

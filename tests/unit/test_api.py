"""The /detect API's pure parts: status mapping, readiness, limits, multipart, event ids, the OpenAPI document."""

from __future__ import annotations

import io
import json
from concurrent.futures import Future
from email.message import Message
from typing import Any

import numpy as np
import pytest

from processor.errors import DLQ_ERRORS, ERROR_CODES, FetchFailed, InferenceFailed, ProcessorError
from processor.http.api import STATUS_BY_CODE, ApiLimits, DetectApi, Reply, with_event_id
from processor.http.multipart import parse_form
from processor.http.openapi import openapi_document, to_openapi30
from processor.http.server import Health
from processor.inflight import Headers, InFlight
from processor.telemetry.metrics import Metrics

LIMITS = ApiLimits(max_body_bytes=1000, max_batch=3, timeout_s=2.0)


class Unreadable(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        raise AssertionError("the body must not be read")


def headers(content_type: str | None, length: int) -> Message:
    msg = Message()
    if content_type:
        msg["Content-Type"] = content_type
    msg["Content-Length"] = str(length)
    return msg


def finished(error: ProcessorError) -> Any:
    """A fake submit_sync that finishes every image with `error`."""

    def detect(value: bytes, item_headers: Headers | None) -> Future[InFlight]:
        item = InFlight("http", -1, -1, None, value, item_headers, None)
        item.error = error
        future: Future[InFlight] = Future()
        future.set_result(item)
        return future

    return detect


def call(api: DetectApi, body: bytes, content_type: str | None = "image/jpeg", path: str = "/detect") -> Reply:
    return api.handle(path, headers(content_type, len(body)), io.BytesIO(body))  # type: ignore[arg-type]


def ready() -> Health:
    return Health(model_loaded=True, warmed_up=True)


def test_every_dlq_code_has_a_status_and_client_input_never_maps_to_5xx() -> None:
    assert set(STATUS_BY_CODE) == set(ERROR_CODES)
    server_side = {code for code, status in STATUS_BY_CODE.items() if status >= 500}
    assert server_side == {"inference_failed"}


@pytest.mark.parametrize("error_class", DLQ_ERRORS)
def test_an_image_refused_with_a_dlq_code_answers_its_status_and_code(error_class: type[ProcessorError]) -> None:
    reply = call(DetectApi(finished(error_class("why")), ready(), LIMITS), b"\xff\xd8")
    assert (reply.status, reply.body) == (
        STATUS_BY_CODE[error_class.code],
        {"error": {"code": error_class.code, "message": "why"}},
    )


def test_requests_and_refused_images_are_counted_by_route_status_and_code() -> None:
    metrics = Metrics()
    api = DetectApi(finished(FetchFailed("404")), ready(), LIMITS, metrics)
    call(api, b"{}")
    call(api, b"{}")
    not_ready = DetectApi(finished(FetchFailed("404")), Health(), LIMITS, metrics)
    call(not_ready, b"x")

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert value("deepfake_api_requests_total", route="/detect", status="422") == 2
    assert value("deepfake_api_requests_total", route="/detect", status="503") == 1
    assert value("deepfake_api_images_total", route="/detect", outcome="fetch_failed") == 2  # refused: no image


def test_fetch_failed_is_422_and_inference_failed_is_500() -> None:
    assert call(DetectApi(finished(FetchFailed("404")), ready(), LIMITS), b"{}").status == 422
    assert call(DetectApi(finished(InferenceFailed("nan")), ready(), LIMITS), b"x").status == 500


def test_not_warm_or_draining_is_503_without_reading_the_body() -> None:
    for health in (Health(), Health(model_loaded=True, warmed_up=True, stopping=True)):
        api = DetectApi(finished(InferenceFailed("x")), health, LIMITS)
        reply = api.handle("/detect", headers("image/jpeg", 10), Unreadable())  # type: ignore[arg-type]
        assert (reply.status, reply.body["error"]["code"], reply.close) == (503, "not_ready", True)
        assert reply.headers["Retry-After"] == "1"


def test_a_pipeline_that_is_shut_down_is_503() -> None:
    def detect(value: bytes, item_headers: Headers | None) -> Future[InFlight]:
        raise RuntimeError("cannot schedule new futures after shutdown")

    assert call(DetectApi(detect, ready(), LIMITS), b"x").body["error"]["code"] == "not_ready"


def test_no_result_within_the_timeout_is_503_timeout() -> None:
    limits = ApiLimits(max_body_bytes=1000, max_batch=3, timeout_s=0.05)
    reply = call(DetectApi(lambda value, h: Future(), ready(), limits), b"x")
    assert (reply.status, reply.body["error"]["code"]) == (503, "timeout")


def test_body_over_the_limit_is_413_from_content_length_alone() -> None:
    api = DetectApi(finished(InferenceFailed("x")), ready(), LIMITS)
    reply = api.handle("/detect", headers("image/jpeg", 1001), Unreadable())  # type: ignore[arg-type]
    assert (reply.status, reply.body["error"]["code"], reply.close) == (413, "image_too_large", True)


def test_too_many_concurrent_requests_is_503_overloaded() -> None:
    api = DetectApi(finished(InferenceFailed("x")), ready(), LIMITS)
    while api._slots.acquire(blocking=False):
        pass
    assert call(api, b"x").body["error"]["code"] == "overloaded"


def test_images_reach_the_pipeline_as_kafka_shaped_events() -> None:
    seen: list[tuple[bytes, Headers | None]] = []

    def detect(value: bytes, item_headers: Headers | None) -> Future[InFlight]:
        seen.append((value, item_headers))
        return finished(InferenceFailed("x"))(value, item_headers)

    api = DetectApi(detect, ready(), LIMITS)
    call(api, b"\xff\xd8raw")
    call(api, b'{"image_b64": "AAAA"}', "application/json")
    call(
        api,
        json.dumps({"images": [{"image_b64": "AA"}, {"event_id": "mine", "image_b64": "BB"}]}).encode(),
        "application/json",
        "/detect/batch",
    )
    raw, envelope, first, second = seen
    assert raw[0] == b"\xff\xd8raw" and raw[1] is not None and raw[1][0][0] == "event_id"
    assert json.loads(envelope[0])["event_id"].startswith("http-")
    assert json.loads(first[0])["event_id"].startswith("http-") and json.loads(second[0])["event_id"] == "mine"


def test_a_batch_over_the_limit_is_413_and_an_unknown_body_type_is_415() -> None:
    api = DetectApi(finished(InferenceFailed("x")), ready(), LIMITS)
    body = json.dumps({"images": [{"image_b64": "AA"}] * 4}).encode()
    assert call(api, body, "application/json", "/detect/batch").body["error"]["code"] == "batch_too_large"
    assert call(api, b"\xff\xd8", "image/jpeg", "/detect/batch").status == 415


def test_with_event_id_lets_the_clients_own_id_win() -> None:
    assert json.loads(with_event_id(b' {"event_id": "mine", "a": 1}', "gen")) == {"event_id": "mine", "a": 1}
    assert json.loads(with_event_id(b"{ }", "gen")) == {"event_id": "gen"}
    assert json.loads(with_event_id(b'{"a": 1}', "gen")) == {"event_id": "gen", "a": 1}
    assert with_event_id(b"[1]", "gen") == b"[1]"


def test_multipart_parts_keep_their_bytes_exactly() -> None:
    data = bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)) + b"\r\n\r\n--\r\n"
    body = (
        b'preamble\r\n--XyZ\r\nContent-Disposition: form-data; name="image"; filename="a b.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + data + b'\r\n--XyZ\r\nContent-Disposition: form-data; name="faces"'
        b"\r\n\r\n[]\r\n--XyZ\r\nX-Nothing: 1\r\n\r\nignored\r\n--XyZ--\r\n"
    )
    parts = parse_form(body, "XyZ", 10)
    assert [(p.name, p.filename) for p in parts] == [("image", "a b.jpg"), ("faces", None), ("", None)]
    assert parts[0].data == data and parts[1].data == b"[]"


@pytest.mark.parametrize(
    "body", [b"no boundary here", b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\nunterminated']
)
def test_malformed_multipart_is_invalid_schema(body: bytes) -> None:
    with pytest.raises(ProcessorError) as info:
        parse_form(body, "XyZ", 10)
    assert info.value.code == "invalid_schema"


def test_openapi_document_is_valid_openapi_3_0() -> None:
    schemathesis = pytest.importorskip("schemathesis")
    document = openapi_document(7)
    schemathesis.openapi.from_dict(document).validate()
    assert document["components"]["schemas"]["DetectBatchRequest"]["properties"]["images"]["maxItems"] == 7
    assert "/detect" not in openapi_document(None)["paths"]


def test_json_schema_2020_keywords_become_their_openapi_3_0_forms() -> None:
    converted = to_openapi30(
        {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "properties": {"w": {"exclusiveMinimum": 0}, "c": {"const": 1}},
        }
    )
    assert converted == {
        "type": "string",
        "nullable": True,
        "properties": {"w": {"minimum": 0, "exclusiveMinimum": True}, "c": {"enum": [1]}},
    }

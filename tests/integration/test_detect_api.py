"""The synchronous /detect API end to end: same limits and codes as the DLQ, and it shares batches with Kafka."""

from __future__ import annotations

import base64
import http.client
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer

from bench.e2e import metric_samples
from devtools.broker import create_topics
from devtools.samples import encode, sample_events, synthetic_image
from processor.http.api import STATUS_BY_CODE
from schemas import ScoreResult
from schemas.api import DetectBatchResponse, DetectResult, ErrorResponse
from tests.brokers import Cluster, TopicFactory
from tests.corpus import bad_events, jpeg_bytes, png_bytes
from tests.integration.conftest import ProcessorFactory
from tests.procs import ProcessorProc, new_processor, processor_env, read_topics

MAX_IMAGE_BYTES = 256 * 1024
BODY_LIMIT = MAX_IMAGE_BYTES * 4 // 3 + 256 * 1024
MAX_BATCH = 4
# An envelope without event_id is refused on Kafka, but /detect makes one up: not an error over HTTP.
KAFKA_ONLY_CASES = {"missing_event_id"}
Reply = tuple[int, dict[str, Any], dict[str, str]]


@pytest.fixture(scope="module")
def api(tansu: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessorProc]:
    """One processor for the module's request/response tests (each test only talks HTTP to it)."""
    topics = [f"{p}-{uuid.uuid4().hex[:12]}" for p in ("in", "out", "dlq")]
    create_topics(tansu.bootstrap, topics, 1)
    env = processor_env(
        tansu.bootstrap,
        *topics,
        f"g-{uuid.uuid4().hex[:12]}",
        max_image_bytes=str(MAX_IMAGE_BYTES),
        detect_max_batch=str(MAX_BATCH),
    )
    proc = new_processor(env, tmp_path_factory.mktemp("detect"), "detect").start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop(timeout_s=40)


def post(
    proc: ProcessorProc, path: str, body: bytes, content_type: str | None = None, headers: dict[str, str] | None = None
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=60)
    try:
        sent = dict(headers or {})
        if content_type:
            sent["Content-Type"] = content_type
        conn.request("POST", path, body=body, headers=sent)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read()), dict(resp.getheaders())
    finally:
        conn.close()


def form(fields: list[tuple[str, bytes, str | None]]) -> tuple[bytes, str]:
    """multipart/form-data body and its content type; a field with a file name is sent as a file."""
    boundary = uuid.uuid4().hex
    out = b""
    for name, data, filename in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def photo(width: int = 320, height: int = 240, seed: int = 1) -> bytes:
    return encode(synthetic_image(np.random.default_rng(seed), width, height), "jpeg")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_result(doc: dict[str, Any]) -> DetectResult:
    assert "source" not in doc
    result = DetectResult.model_validate(doc)
    assert 0.0 <= result.fake_score <= 1.0 and result.label in result.scores
    return result


def test_detect_scores_a_raw_jpeg_body_and_makes_up_an_event_id(api: ProcessorProc) -> None:
    status, doc, _ = post(api, "/detect", photo(), "image/jpeg")
    assert status == 200, doc
    result = assert_result(doc)
    assert result.event_id.startswith("http-") and result.faces is None


def test_detect_scores_a_multipart_image_with_faces_and_ids(api: ProcessorProc) -> None:
    faces = [{"x": 10, "y": 10, "width": 100, "height": 120}, {"x": 150, "y": 40, "width": 90, "height": 90}]
    body, content_type = form(
        [
            ("image", photo(), "a.jpg"),
            ("faces", json.dumps(faces).encode(), None),
            ("event_id", b"mp-1", None),
            ("metadata", b'{"k": "v"}', None),
        ]
    )
    status, doc, _ = post(api, "/detect", body, content_type)
    assert status == 200, doc
    result = assert_result(doc)
    assert result.event_id == "mp-1" and result.metadata == {"k": "v"}
    assert result.faces is not None and [f.box.model_dump() for f in result.faces] == faces
    assert result.fake_score == max(f.fake_score for f in result.faces)


def test_detect_scores_a_json_envelope_with_faces_and_echoes_its_fields(api: ProcessorProc) -> None:
    envelope = {
        "event_id": "j-1",
        "post_id": "p-1",
        "user_id": "u-1",
        "image_b64": b64(photo()),
        "faces": [{"x": 0, "y": 0, "width": 160, "height": 160}],
        "metadata": {"n": 1},
    }
    status, doc, _ = post(api, "/detect", json.dumps(envelope).encode(), "application/json")
    assert status == 200, doc
    result = assert_result(doc)
    assert (result.event_id, result.post_id, result.user_id, result.metadata) == ("j-1", "p-1", "u-1", {"n": 1})
    assert result.faces is not None and len(result.faces) == 1


def test_detect_result_is_the_kafka_result_minus_source() -> None:
    assert set(DetectResult.model_fields) == set(ScoreResult.model_fields) - {"source"}


def test_batch_answers_every_item_in_order_with_a_per_item_error(api: ProcessorProc) -> None:
    face = {"x": 5, "y": 5, "width": 50, "height": 50}
    items = [
        {"image_b64": b64(photo(seed=2))},
        {"event_id": "bad", "image_b64": b64(b"not an image")},
        {"event_id": "f", "image_b64": b64(photo(seed=3)), "faces": [face]},
    ]
    status, doc, _ = post(api, "/detect/batch", json.dumps({"images": items}).encode(), "application/json")
    assert status == 200, doc
    results = DetectBatchResponse.model_validate(doc).results
    assert isinstance(results[0], DetectResult) and results[0].event_id.startswith("http-")
    assert isinstance(results[1], ErrorResponse) and results[1].error.code == "image_decode_failed"
    assert isinstance(results[2], DetectResult) and results[2].event_id == "f" and results[2].faces


def samples(proc: ProcessorProc) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on /metrics, keyed by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in metric_samples(proc)}


def test_api_traffic_is_counted_apart_from_kafka_events(api: ProcessorProc) -> None:
    before = samples(api)
    items = [{"image_b64": b64(photo(seed=7))}, {"image_b64": b64(photo(seed=8))}, {"image_b64": b64(b"nope")}]
    assert post(api, "/detect/batch", json.dumps({"images": items}).encode(), "application/json")[0] == 200
    after = samples(api)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    route = "/detect/batch"
    assert grew("deepfake_api_requests_total", route=route, status="200") == 1
    assert grew("deepfake_api_images_total", route=route, outcome="image_decode_failed") == 1
    scored = sum(grew("deepfake_api_images_total", route=route, outcome=label) for label in ("Real", "Fake"))
    assert scored == 2
    events = [k for k in after if k[0] == "deepfake_events_scored_total"]
    assert all(after[k] == before.get(k, 0.0) for k in events)  # /detect images are not Kafka events


def test_batch_takes_several_multipart_image_files(api: ProcessorProc) -> None:
    body, content_type = form([("images", photo(seed=s), f"{s}.jpg") for s in range(3)])
    status, doc, _ = post(api, "/detect/batch", body, content_type)
    assert status == 200, doc
    assert [assert_result(r).label for r in doc["results"]] and len(doc["results"]) == 3


def _http_case(case_headers: list[tuple[str, bytes]] | None) -> str:
    labelled_json = any(k == "content-type" and b"json" in v for k, v in case_headers or [])
    return "application/json" if labelled_json else "application/octet-stream"


def test_every_dead_letter_code_of_the_corpus_maps_to_its_http_status(api: ProcessorProc) -> None:
    """The DLQ corpus posted to /detect: the same code, and the status STATUS_BY_CODE gives it."""
    wrong = []
    for case in bad_events(MAX_IMAGE_BYTES, 50_000_000):
        if case.name in KAFKA_ONLY_CASES:
            continue
        status, doc, _ = post(api, "/detect", case.value, _http_case(case.headers))
        got = (status, doc.get("error", {}).get("code"))
        if got != (STATUS_BY_CODE[case.expected_code], case.expected_code):
            wrong.append((case.name, got))
    assert not wrong


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status", "code"),
    [
        ("/detect", *form([("faces", b"[]", None)]), 400, "missing_image"),
        ("/detect", *form([("image", png_bytes(), "a.png"), ("faces", b"[{", None)]), 400, "invalid_json"),
        ("/detect", b"--x\r\nno boundary declared", "multipart/form-data", 400, "invalid_schema"),
        ("/detect/batch", b'{"images": []}', "application/json", 400, "missing_image"),
        ("/detect/batch", b'{"pictures": []}', "application/json", 400, "invalid_schema"),
        ("/detect/batch", b"{nope", "application/json", 400, "invalid_json"),
        ("/detect/batch", jpeg_bytes(), "image/jpeg", 415, "unsupported_media_type"),
        (
            "/detect/batch",
            json.dumps({"images": [{"image_b64": "AAAA"}] * (MAX_BATCH + 1)}).encode(),
            "application/json",
            413,
            "batch_too_large",
        ),
    ],
)
def test_request_level_errors_have_their_status_and_code(
    api: ProcessorProc, path: str, body: bytes, content_type: str, status: int, code: str
) -> None:
    got_status, doc, _ = post(api, path, body, content_type)
    assert (got_status, ErrorResponse.model_validate(doc).error.code) == (status, code)


def test_body_over_the_limit_is_refused_413_before_it_is_read(api: ProcessorProc) -> None:
    sock = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        # Declare 1 GiB but send only the headers: the reply must come from Content-Length alone.
        sock.putrequest("POST", "/detect")
        sock.putheader("Content-Type", "image/jpeg")
        sock.putheader("Content-Length", str(1 << 30))
        sock.endheaders()
        resp = sock.getresponse()
        assert resp.status == 413
        assert json.loads(resp.read())["error"]["code"] == "image_too_large"
    finally:
        sock.close()
    status, _, _ = post(api, "/detect", b"\xff" * (BODY_LIMIT + 1), "image/jpeg")
    assert status == 413


def test_chunked_body_is_scored_and_wrong_method_405_and_unknown_route_404(api: ProcessorProc) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        conn.request("POST", "/detect", body=iter([photo()]), headers={"Content-Type": "image/jpeg"},
                     encode_chunked=True)  # fmt: skip
        resp = conn.getresponse()
        assert_result(json.loads(resp.read()))
        assert resp.status == 200
    finally:
        conn.close()
    status, body = api.get("/detect")
    assert (status, json.loads(body)["error"]["code"]) == (405, "method_not_allowed")
    assert post(api, "/nope", b"x")[0] == 404
    for method, path, allow in (("PUT", "/detect", "POST"), ("DELETE", "/health", "GET, HEAD")):
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
        try:
            conn.request(method, path, body=b"x" if method == "PUT" else None)
            resp = conn.getresponse()
            assert json.loads(resp.read())["error"]["code"] == "method_not_allowed"
            assert (resp.status, resp.getheader("Allow")) == (405, allow), method
        finally:
            conn.close()


def test_openapi_document_lists_the_detect_routes(api: ProcessorProc) -> None:
    status, doc = api.get_json("/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    assert {"/detect", "/detect/batch", "/health", "/healthz", "/readyz"} <= set(doc["paths"])
    assert doc["components"]["schemas"]["DetectBatchRequest"]["properties"]["images"]["maxItems"] == MAX_BATCH


def test_disabled_api_answers_404_and_leaves_it_out_of_openapi(
    tansu: Cluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory
) -> None:
    topics = [topic_factory(tansu.bootstrap, 1, p) for p in ("in", "out", "dlq")]
    proc = processor_factory(processor_env(tansu.bootstrap, *topics, group_id, http_api="false"))
    status, doc, _ = post(proc, "/detect", jpeg_bytes(), "image/jpeg")
    assert (status, doc["error"]["code"]) == (404, "not_found")
    assert proc.get("/detect")[0] == 404
    assert "/detect" not in proc.get_json("/openapi.json")[1]["paths"]


def _batches_over_one(proc: ProcessorProc) -> tuple[float, float]:
    """(batches of exactly one image, all batches) from the deepfake_batch_size histogram."""
    now = samples(proc)
    return now[("deepfake_batch_size_bucket", (("le", "1.0"),))], now[("deepfake_batch_size_count", ())]


def test_detect_requests_share_the_pipeline_with_kafka_traffic_and_lose_no_event(
    tansu: Cluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory, tmp_path: Path
) -> None:
    partitions, count, requests = 3, 100, 30
    source, out, dlq = (topic_factory(tansu.bootstrap, partitions, p) for p in ("in", "out", "dlq"))
    env = processor_env(tansu.bootstrap, source, out, dlq, group_id, max_batch_wait_ms="20", decode_workers="4")
    proc = processor_factory(env)
    events = list(sample_events(count, sizes=((320, 240),), prefix="k"))
    images = [photo(seed=100 + i) for i in range(requests)]
    producer = Producer({"bootstrap.servers": tansu.bootstrap, "linger.ms": 20})
    with ThreadPoolExecutor(max_workers=requests) as pool:
        # Half the requests go out before the events, half while they are being produced and scored.
        pending = [pool.submit(post, proc, "/detect", image, "image/jpeg") for image in images[: requests // 2]]
        for event in events:
            producer.produce(source, event.value, key=event.key, headers=event.headers)
        producer.poll(0)
        pending += [pool.submit(post, proc, "/detect", image, "image/jpeg") for image in images[requests // 2 :]]
        assert producer.flush(30) == 0
        replies = [future.result() for future in pending]
    assert [status for status, _, _ in replies] == [200] * requests
    for _, doc, _ in replies:
        assert_result(doc)
    results = read_topics(tansu.bootstrap, [out], partitions, count, settle_s=2.0)
    ids = sorted(ScoreResult.model_validate_json(m.value() or b"").event_id for m in results)
    assert ids == sorted(f"k-{i}" for i in range(count))
    assert read_topics(tansu.bootstrap, [dlq], partitions, 1, timeout_s=2.0) == []
    singles, batches = _batches_over_one(proc)
    assert batches > singles, "every inference call held one image: nothing was batched"

"""Hot model swap on the real broker: SIGHUP mid-stream swaps between batches; a bad model is refused."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

from confluent_kafka import Producer

from devtools.samples import sample_events
from models.builder import build_model_dir
from models.loader import bundled_model_dir, file_sha256
from tests.procs import processor_env, read_topics, wait_for

N_BEFORE, N_AFTER = 60, 60


def _produce(bootstrap: str, topic: str, count: int, prefix: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for event in sample_events(count, seed=len(prefix), prefix=prefix, faces_every=0):
        producer.produce(topic, value=event.value, key=event.key, headers=event.headers or None)
    producer.flush(30)


def _wait_for_sha(proc, sha: str, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    wait_for(lambda: proc.get_json("/health")[1]["model"]["sha256"] == sha, timeout_s, f"model {sha[:12]} served")


def test_sighup_swaps_model_mid_stream_without_losing_or_repeating_events(
    tansu, topic_factory, group_id, processor_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    model_dir = tmp_path / "model"
    shutil.copytree(bundled_model_dir(), model_dir)
    old_sha = file_sha256(model_dir / "onnx" / "model.onnx")
    topic_in, topic_out, dlq = (topic_factory(tansu.bootstrap, 2, p) for p in ("in", "out", "dlq"))
    env = processor_env(tansu.bootstrap, topic_in, topic_out, dlq, group_id, model_dir=str(model_dir))
    proc = processor_factory(env)
    _produce(tansu.bootstrap, topic_in, N_BEFORE, "before")
    assert len(read_topics(tansu.bootstrap, [topic_out], 2, N_BEFORE // 2, timeout_s=60)) >= N_BEFORE // 2

    rebuilt = build_model_dir("vit-tiny", tmp_path / "next", seed=7)
    shutil.copy(rebuilt / "onnx" / "model.onnx", model_dir / "onnx" / "model.onnx")
    new_sha = file_sha256(model_dir / "onnx" / "model.onnx")
    assert new_sha != old_sha
    proc.signal(signal.SIGHUP)
    _wait_for_sha(proc, new_sha)
    _produce(tansu.bootstrap, topic_in, N_AFTER, "after")

    outputs = read_topics(tansu.bootstrap, [topic_out, dlq], 2, N_BEFORE + N_AFTER, timeout_s=90, settle_s=1.0)
    results = [json.loads(m.value()) for m in outputs if m.topic() == topic_out]
    ids = [r["event_id"] for r in results]
    assert len(ids) == len(set(ids)) == N_BEFORE + N_AFTER, "every event scored exactly once across the swap"
    assert all(r["model"]["sha256"] == new_sha for r in results if r["event_id"].startswith("after"))
    by_partition: dict[int, list[tuple[int, str]]] = {}
    for r in results:
        by_partition.setdefault(r["source"]["partition"], []).append((r["source"]["offset"], r["model"]["sha256"]))
    for rows in by_partition.values():
        shas = [sha for _, sha in sorted(rows)]
        first_new = shas.index(new_sha)
        assert set(shas[:first_new]) <= {old_sha} and set(shas[first_new:]) == {new_sha}, "swap is a clean cut"


def test_bad_model_on_reload_is_refused_and_old_one_keeps_serving(
    tansu, topic_factory, group_id, processor_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    model_dir = tmp_path / "model"
    shutil.copytree(bundled_model_dir(), model_dir)
    old_sha = file_sha256(model_dir / "onnx" / "model.onnx")
    topic_in, topic_out, dlq = (topic_factory(tansu.bootstrap, 1, p) for p in ("in", "out", "dlq"))
    proc = processor_factory(processor_env(tansu.bootstrap, topic_in, topic_out, dlq, group_id,
                                           model_dir=str(model_dir)))  # fmt: skip
    (model_dir / "onnx" / "model.onnx").write_bytes(b"this is not an onnx graph")
    proc.signal(signal.SIGHUP)
    wait_for(lambda: "model reload refused" in proc.log_path.read_text(), 30, "the refused reload's log line")
    _produce(tansu.bootstrap, topic_in, 10, "still")
    results = [json.loads(m.value()) for m in read_topics(tansu.bootstrap, [topic_out], 1, 10, timeout_s=60)]
    assert len(results) == 10
    assert {r["model"]["sha256"] for r in results} == {old_sha}
    status, health = proc.get_json("/health")
    assert status == 200 and health["model"]["sha256"] == old_sha and health["status"] == "healthy"


def test_admin_reload_endpoint_swaps_to_another_model_dir_and_is_off_by_default(
    tansu, topic_factory, group_id, processor_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import urllib.error
    import urllib.request

    other = build_model_dir("vit-tiny", tmp_path / "other", seed=3)
    topic_in, topic_out, dlq = (topic_factory(tansu.bootstrap, 1, p) for p in ("in", "out", "dlq"))
    base = processor_env(tansu.bootstrap, topic_in, topic_out, dlq, group_id)

    def post(proc, body: dict[str, str]) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
        req = urllib.request.Request(proc.url("/admin/reload"), data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    off = processor_factory(base, name="off")
    assert post(off, {"model_dir": str(other)})[0] == 404
    off.stop()

    on = processor_factory(dict(base, DFP_ADMIN_API="true"), name="on")
    status, body = post(on, {"model_dir": str(tmp_path / "missing")})
    assert status == 409 and body["swapped"] is False
    status, body = post(on, {"model_dir": str(other)})
    assert status == 200 and body["swapped"] is True
    new_sha = file_sha256(other / "onnx" / "model.onnx")
    assert body["model"]["sha256"] == new_sha
    _produce(tansu.bootstrap, topic_in, 5, "post")
    results = [json.loads(m.value()) for m in read_topics(tansu.bootstrap, [topic_out], 1, 5, timeout_s=60)]
    assert {r["model"]["sha256"] for r in results} == {new_sha}
    text = on.get("/metrics")[1].decode()
    assert f'sha256="{new_sha}"' in text

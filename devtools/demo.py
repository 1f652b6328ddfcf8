"""`demo`: embedded broker + the processor + a producer of sample images; prints every result and dead letter."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from devtools.broker import EMBEDDED_CLIENT_ENV, EmbeddedBroker, create_topics, free_port
from devtools.produce import make_producer, send
from devtools.runner import ProcessorProcess
from devtools.samples import sample_events

TOPICS = ("images.uploaded", "images.deepfake-scores", "images.deepfake-dlq")


def register(sub: Any) -> None:
    """Add the `demo` subcommand."""
    p = sub.add_parser("demo", help="embedded broker + processor + sample producer; prints scored results")
    p.add_argument("--count", type=int, default=0, help="stop after this many outputs (0 = until Ctrl-C)")
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--rate", type=float, default=20.0, help="sample events per second")
    p.add_argument("--http-port", type=int, default=8007)
    p.add_argument("--broker-port", type=int, default=0, help="0 = a free port")
    p.add_argument("--model-dir", default=None, help="model directory (default: the bundled demo model)")
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo until `--count` outputs were printed or Ctrl-C / SIGTERM; 0 after a clean drain."""
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.__setitem__("now", True))
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("now", True))
    workdir = Path(tempfile.mkdtemp(prefix="dfp-demo-"))
    with EmbeddedBroker(args.broker_port or free_port(), log_path=workdir / "broker.log") as broker:
        print(f"embedded broker (Tansu) on {broker.bootstrap}")
        create_topics(broker.bootstrap, TOPICS, partitions=args.partitions)
        proc = _processor(broker.bootstrap, args.http_port or free_port(), args.model_dir, workdir / "processor.log")
        proc.start()
        try:
            code = _serve(args, broker.bootstrap, proc, stop)
        finally:
            exit_code = proc.stop(timeout_s=35)
            print(f"processor exited with {exit_code}")
            print(f"processor log: {proc.log_path}")
        return code if exit_code == 0 else 1


def _processor(bootstrap: str, http_port: int, model_dir: str | None, log_path: Path) -> ProcessorProcess:
    env = dict(
        os.environ,
        DFP_BOOTSTRAP_SERVERS=bootstrap,
        DFP_HTTP_PORT=str(http_port),
        DFP_HTTP_HOST="127.0.0.1",
        DFP_GROUP_ID="deepfake-demo",
        **EMBEDDED_CLIENT_ENV,
    )
    if model_dir:
        env["DFP_MODEL_DIR"] = model_dir
    return ProcessorProcess(env, log_path, http_port, own_session=True)


def _serve(args: argparse.Namespace, bootstrap: str, proc: ProcessorProcess, stop: dict[str, bool]) -> int:
    print(f"processor starting (pid {proc.pid}); health {proc.url('/health')}")
    try:
        proc.wait_ready(90.0, cancelled=lambda: stop["now"])
    except RuntimeError as exc:
        if stop["now"]:
            return 0
        print(f"processor did not become ready: {exc}", file=sys.stderr)
        return 1
    print(f"ready. metrics: {proc.url('/metrics')} — Ctrl-C stops")
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "demo-reader", "enable.auto.commit": False})
    reader.assign([TopicPartition(t, p, 0) for t in TOPICS[1:] for p in range(args.partitions)])
    producer = make_producer(bootstrap)
    target = args.count or sys.maxsize
    batch = max(1, min(20, target))
    seen = produced = 0
    try:
        while seen < target and not stop["now"] and proc.alive:
            if produced - seen < batch:
                events = sample_events(batch, seed=produced, bad_every=7, prefix=f"demo-{produced}")
                produced += int(send(producer, TOPICS[0], events, rate=args.rate)["sent"])
            for msg in reader.consume(100, 0.2):
                if msg.error() is None and seen < target:
                    seen += 1
                    print(_describe(msg), flush=True)
    finally:
        reader.close()
    print(f"{seen} outputs printed")
    return 0 if seen >= min(target, 1) or stop["now"] else 1


def _describe(msg: Message) -> str:
    if msg.topic() == TOPICS[2]:
        headers = {k: (v or b"").decode(errors="replace") for k, v in msg.headers() or []}  # type: ignore[union-attr,str-unpack]
        return (
            f"DLQ    {headers.get('event_id', '?'):<14} code={headers['error.code']:<20} "
            f"{headers['error.message'][:70]}"
        )
    doc = json.loads(msg.value() or b"{}")
    faces = f" faces={len(doc['faces'])}" if doc.get("faces") else ""
    return (
        f"RESULT {doc['event_id']:<14} label={doc['label']:<5} fake_score={doc['fake_score']:.4f}{faces} "
        f"p{doc['source']['partition']}@{doc['source']['offset']} {doc['timings_ms']['total']:.1f} ms"
    )

"""Example downstream consumer: read deepfake scores and dead letters, print one line per record.

    python examples/moderation_consumer.py --bootstrap-servers localhost:9092 --group moderation

Needs only confluent-kafka. `isolation.level=read_committed` makes it correct for both delivery modes: with
DELIVERY=exactly-once it never sees results of aborted transactions; with at-least-once it changes nothing.
Offsets are committed after a record is handled (at-least-once on this side too).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message

RESULT_TOPIC = "images.deepfake-scores"
DLQ_TOPIC = "images.deepfake-dlq"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", default="localhost:9092")
    parser.add_argument("--group", default="moderation-example")
    parser.add_argument("--results-topic", default=RESULT_TOPIC)
    parser.add_argument("--dlq-topic", default=DLQ_TOPIC)
    parser.add_argument("--max-messages", type=int, default=0, help="stop after this many records (0 = run on)")
    return parser.parse_args(argv)


def describe_result(msg: Message) -> str:
    result: dict[str, Any] = json.loads(msg.value() or b"{}")
    faces = result.get("faces") or []
    verdict = "FAKE" if result["is_fake"] else "ok  "
    return (
        f"{verdict} event={result['event_id']} post={result.get('post_id')} score={result['fake_score']:.3f} "
        f"label={result['label']} faces={len(faces)} model={result['model']['name']}/{result['model']['variant']}"
    )


def describe_dead_letter(msg: Message) -> str:
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    headers = {k: v.decode("utf-8", errors="replace") if isinstance(v, bytes) else (v or "") for k, v in pairs}
    return (
        f"DLQ  event={headers.get('event_id', '?')} code={headers.get('error.code')} "
        f"from={headers.get('source.topic')}[{headers.get('source.partition')}]@{headers.get('source.offset')} "
        f"bytes={len(msg.value() or b'')} message={headers.get('error.message', '')[:120]!r}"
    )


def run(args: argparse.Namespace) -> int:
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap_servers,
            "group.id": args.group,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,  # store an offset only once its record is handled
        }
    )
    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    consumer.subscribe([args.results_topic, args.dlq_topic])
    seen = 0
    try:
        while not stop and (args.max_messages <= 0 or seen < args.max_messages):
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            line = describe_dead_letter(msg) if msg.topic() == args.dlq_topic else describe_result(msg)
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            consumer.store_offsets(msg)
            seen += 1
    finally:
        consumer.close()  # commits the stored offsets and leaves the group
    return 0


if __name__ == "__main__":
    raise SystemExit(run(parse_args()))

"""`deepfake-processor soak`: a long run at a fraction of the measured maximum, watching for leaks and loss.

The processor runs as a subprocess against Apache Kafka (or the embedded broker). First a backlog is drained
to measure the maximum rate; then a paced producer holds `--load` of it for `--minutes`, while every `--sample-s` the
processor's RSS, threads and open file descriptors (from /proc) and the backlog (events sent − outputs
read back) are sampled. At the end every input offset must have exactly one output. Growth compares the
median of the samples just after warm-up with the median of the last ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.e2e import processor_env
from bench.goodput import broker
from bench.kafka import OutputCollector
from bench.report import machine_info
from devtools.broker import create_topics, free_port
from devtools.produce import make_producer, send
from devtools.runner import ProcessorProcess
from devtools.samples import SampleEvent, sample_events
from processor.settings import MiB, load_settings

#: Small pictures keep a 30-minute run inside the embedded broker's memory; leaks do not depend on size.
SOAK_SIZE = (160, 120)
BAD_EVERY = 50  # the dead-letter path soaks too


def register(sub: Any) -> None:
    """Add the `soak` subcommand."""
    p = sub.add_parser("soak", help="long run at a fraction of max: RSS, threads, fds and backlog over time")
    p.add_argument("--minutes", type=float, default=30.0, help="paced load duration")
    p.add_argument("--load", type=float, default=0.5, help="fraction of the measured maximum rate")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--warmup-s", type=float, default=120.0, help="samples before this are warm-up")
    p.add_argument("--calibrate-events", type=int, default=3000, help="backlog drained to measure the maximum")
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--broker", choices=("kafka", "tansu"), default="kafka",
                   help="Apache Kafka (default; Java 17 + Maven) or the embedded broker")  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="write the result JSON here")
    p.set_defaults(handler=run_soak)


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the processor and the stream."""

    t_s: float
    rss_mb: float
    threads: int
    open_fds: int
    sent: int
    outputs: int

    @property
    def backlog(self) -> int:
        """Events sent but not yet read back as a result or dead letter."""
        return self.sent - self.outputs


def proc_stats(pid: int) -> tuple[float, int, int]:
    """(RSS MiB, threads, open fds) of a live process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(fields["VmRSS"].split()[0])
    threads = int(fields["Threads"])
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return rss_kb * 1024 / MiB, threads, fds


def growth(samples: list[Sample], warmup_s: float, window: int = 6) -> dict[str, float | None]:
    """Per quantity, % change from the median just after warm-up to the median of the last `window` samples."""
    after = [s for s in samples if s.t_s >= warmup_s]
    if len(after) < 2:
        return {"rss_mb": None, "threads": None, "open_fds": None}
    n = max(1, min(window, len(after) // 2))
    head, tail = after[:n], after[-n:]
    out: dict[str, float | None] = {}
    for key in ("rss_mb", "threads", "open_fds"):
        start = statistics.median(float(getattr(s, key)) for s in head)
        end = statistics.median(float(getattr(s, key)) for s in tail)
        out[key] = round(100.0 * (end - start) / start, 2) if start else None
    return out


def accounting(collector: OutputCollector, sent_offsets: int, partitions_of: Counter[int]) -> dict[str, int]:
    """Lost and duplicated inputs: every (partition, offset) sent must come back exactly once."""
    per_input = Counter((o.partition, o.offset) for o in collector.outputs)
    expected = {(p, o) for p, n in partitions_of.items() for o in range(n)}
    lost = len(expected - per_input.keys())
    duplicates = sum(n - 1 for n in per_input.values() if n > 1)
    return {"sent": sent_offsets, "outputs": len(collector.outputs), "lost": lost, "duplicates": duplicates}


def _events(prefix: str) -> Iterator[SampleEvent]:
    """An endless stream of small sample events (the sample generator reuses a pool of pictures)."""
    batch = 0
    while True:
        yield from sample_events(10_000, seed=batch, sizes=(SOAK_SIZE,), bad_every=BAD_EVERY, prefix=f"{prefix}{batch}")
        batch += 1


def _wait_outputs(collector: OutputCollector, total: int, timeout_s: float) -> float:
    """Pump outputs until `total` arrived (or the timeout); the seconds it took."""
    started = time.monotonic()
    while len(collector.outputs) < total and time.monotonic() - started < timeout_s:
        collector.pump(0.2)
    return time.monotonic() - started


def run_soak(args: argparse.Namespace) -> int:
    """Run the soak and print (and optionally write) its figures; 1 when an event was lost."""
    workdir = Path(tempfile.mkdtemp(prefix="dfp-soak-"))
    with broker(args.broker, workdir) as (bootstrap, _):
        run_id = uuid.uuid4().hex[:8]
        topics = (f"soak-in-{run_id}", f"soak-out-{run_id}", f"soak-dlq-{run_id}")
        create_topics(bootstrap, topics, partitions=args.partitions)
        port = free_port()
        settings = load_settings({"bootstrap_servers": bootstrap})
        env = processor_env(settings, topics, f"soak-{run_id}", port)
        proc = ProcessorProcess(env, workdir / "processor.log", port).start()
        collector = OutputCollector(bootstrap, topics[1:], args.partitions)
        try:
            proc.wait_ready()
            result = _soak(args, bootstrap, topics[0], proc, collector)
        finally:
            collector.close()
            result_exit = proc.stop()
    result["processor_exit_code"] = result_exit
    result["machine"] = machine_info(sys.argv)
    result["broker"] = args.broker
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["accounting"]["lost"] == 0 and result_exit == 0 else 1


def _soak(
    args: argparse.Namespace, bootstrap: str, topic: str, proc: ProcessorProcess, collector: OutputCollector
) -> dict[str, Any]:
    counted: Counter[int] = Counter()  # delivered events per input partition: their offsets are 0 .. n-1

    def delivered(err: Any, msg: Any) -> None:
        if err is None:
            counted[msg.partition()] += 1

    producer = make_producer(bootstrap, on_delivery=delivered)
    events = _events("soak-")
    # The maximum: from the first event sent until the backlog's last output is read back (the processor
    # works while the producer still sends, so timing only the drain after `send` would overstate it).
    calibration_started = time.monotonic()
    calibration = send(producer, topic, (next(events) for _ in range(args.calibrate_events)))
    _wait_outputs(collector, args.calibrate_events, timeout_s=600)
    drained_s = time.monotonic() - calibration_started
    max_rate = args.calibrate_events / drained_s
    rate = max(1.0, args.load * max_rate)
    samples: list[Sample] = []
    sent = {"n": int(calibration["sent"])}
    done = threading.Event()

    def paced() -> None:
        summary = send(producer, topic, events, rate=rate, duration_s=args.minutes * 60.0)
        sent["n"] += int(summary["sent"])
        done.set()

    thread = threading.Thread(target=paced, name="soak-producer", daemon=True)
    started = time.monotonic()
    thread.start()
    next_sample = started
    while not done.is_set():
        collector.pump(0.2)
        if time.monotonic() >= next_sample:
            rss, threads, fds = proc_stats(proc.pid)
            t_s = round(time.monotonic() - started, 1)
            samples.append(Sample(t_s, round(rss, 1), threads, fds, sum(counted.values()), len(collector.outputs)))
            next_sample += args.sample_s
    thread.join()
    drain_s = _wait_outputs(collector, sent["n"], timeout_s=300)
    return {
        "minutes": args.minutes,
        "load": args.load,
        "calibration": {
            "events": args.calibrate_events,
            "seconds": round(drained_s, 2),
            "max_events_per_s": round(max_rate, 1),
        },
        "paced_events_per_s": round(rate, 1),
        "final_drain_s": round(drain_s, 2),
        "accounting": accounting(collector, sent["n"], counted),
        "growth_pct_after_warmup": growth(samples, args.warmup_s),
        "max_backlog": max((s.backlog for s in samples), default=0),
        "samples": [asdict(s) | {"backlog": s.backlog} for s in samples],
    }

"""Where a processor's per-event CPU goes: py-spy samples the real processor draining a backlog on Apache Kafka.

`python -m bench.profile_e2e --events 3000 --json docs/bench/profile-vit-tiny.json` starts Kafka, produces the
bench's event mix, starts `python -m processor run`, and records it with py-spy (`pip install py-spy`) while
it drains. Each sample is charged to the deepest frame in our code (a C call such as json.loads or
cv2.imdecode counts for the Python function that made it) and summed into stages: envelope parse, base64,
image decode, inference, result build, produce, offsets, consumer poll, hand-offs. CPU ms per event comes
from the process's CPU time over the drain (psutil), split by the sampled shares.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# (file suffix, function or "*", stage): the first match for the deepest frame of ours wins.
STAGE_RULES: tuple[tuple[str, str, str], ...] = (
    ("processor/envelope.py", "decode_b64", "base64 decode"),
    ("processor/envelope.py", "*", "envelope JSON parse + checks"),
    ("processor/imageinfo.py", "*", "image header checks"),
    ("processor/decode.py", "*", "image decode + preprocess"),
    ("processor/engine.py", "*", "inference (ONNX Runtime)"),
    ("processor/static_binding.py", "*", "inference (ONNX Runtime)"),
    ("processor/scorer.py", "*", "scorer bookkeeping"),
    ("processor/batcher.py", "*", "batcher (stacking, hand-off)"),
    ("processor/policies.py", "*", "batcher (stacking, hand-off)"),
    ("processor/slo.py", "*", "batcher (stacking, hand-off)"),
    ("processor/outcomes.py", "*", "result / dead-letter build (JSON)"),
    ("schemas/", "*", "result / dead-letter build (JSON)"),
    ("processor/publish.py", "*", "produce (librdkafka)"),
    ("processor/offsets.py", "*", "offset bookkeeping"),
    ("processor/consumer.py", "*", "consumer loop (poll, admit, commit)"),
    ("processor/telemetry/", "*", "metrics"),
    ("processor/http/", "*", "HTTP server"),
    ("concurrent/futures/", "*", "thread hand-offs (pool, queues)"),
    ("threading.py", "*", "thread hand-offs (pool, queues)"),
    ("queue.py", "*", "thread hand-offs (pool, queues)"),
)


def stage_of(stack: str) -> str:
    """The stage a py-spy raw stack (frames `func (file:line)` joined by `;`, root first) is charged to."""
    frames = stack.split(";")
    for frame in reversed(frames):
        func, _, where = frame.partition(" (")
        for suffix, name, stage in STAGE_RULES:
            if suffix in where and (name == "*" or name == func.strip()):
                return stage
    return "other (interpreter, imports, idle threads)"


def _stacks(raw: str) -> Iterator[tuple[str, int]]:
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack, int(count)


def summarise(raw: str, cpu_ms_per_event: float) -> dict[str, Any]:
    """Shares and CPU ms per event of each stage from py-spy's `--format raw` output (`stack count` lines)."""
    counts: Counter[str] = Counter()
    for stack, n in _stacks(raw):
        counts[stage_of(stack)] += n
    total = sum(counts.values()) or 1
    return {stage: {"share": round(n / total, 4), "cpu_ms_per_event": round(cpu_ms_per_event * n / total, 3)}
            for stage, n in counts.most_common()}  # fmt: skip


def top_frames(raw: str, limit: int = 20) -> list[dict[str, Any]]:
    """The most sampled (stage, our deepest function, leaf frame) triples, with their share of all samples."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for stack, n in _stacks(raw):
        frames = stack.split(";")
        ours = [f for f in frames if "processor/" in f or "schemas/" in f]
        counts[(stage_of(stack), ours[-1].split(" (")[0] if ours else "-", frames[-1])] += n
    total = sum(counts.values()) or 1
    return [{"stage": s, "function": f, "leaf": leaf, "share": round(n / total, 4)}
            for (s, f, leaf), n in counts.most_common(limit)]  # fmt: skip


def _py_spy() -> str:
    return str(Path(sys.executable).parent / "py-spy")


def thread_names(pid: int) -> dict[int, str]:
    """Native thread id → Python thread name of a running process (one `py-spy dump`)."""
    dump = subprocess.run([_py_spy(), "dump", "--pid", str(pid), "--nonblocking"],
                          capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    return {int(m.group(1)): m.group(2) for m in re.finditer(r'Thread (\d+) \([^)]*\): "([^"]+)"', dump)}


def thread_cpu_s(pid: int) -> dict[int, tuple[str, float]]:
    """Native thread id → (kernel thread name, CPU seconds so far) from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(tid)] = (comm, (int(fields[11]) + int(fields[12])) / tick)
    return out


def per_thread_cores(names: dict[int, str], before: dict[int, tuple[str, float]],
                     after: dict[int, tuple[str, float]], wall_s: float) -> dict[str, float]:  # fmt: skip
    """Average cores per thread role over the window: Python threads by name, librdkafka's together, and the
    rest (ONNX Runtime's intra-op pool, which has no name) as unnamed."""
    cores: dict[str, float] = {}
    for tid, (comm, cpu) in after.items():
        role = names.get(tid) or ("librdkafka threads" if comm.startswith("rdk:") else "unnamed (ONNX Runtime pool)")
        cores[role] = cores.get(role, 0.0) + (cpu - before.get(tid, (comm, 0.0))[1]) / wall_s
    return {role: round(c, 3) for role, c in sorted(cores.items(), key=lambda rc: -rc[1]) if c >= 0.001}


def profile(events: int, partitions: int, rate: int, env_extra: dict[str, str], idle: bool = False,
            threads: bool = False) -> dict[str, Any]:  # fmt: skip
    """Drain `events` through one processor on Apache Kafka under py-spy; the stage split and the totals.

    With `threads`, no sampling (it slows the process): CPU per thread over the drain instead.
    """
    import psutil

    from bench.e2e import processor_env, wait_for_outputs
    from bench.goodput import broker
    from bench.kafka import OutputCollector
    from bench.workload import iter_events, relabelled
    from devtools.broker import create_topics, free_port
    from devtools.produce import make_producer, send
    from devtools.runner import ProcessorProcess
    from models.loader import bundled_model_dir
    from processor.settings import load_settings

    workdir = Path(tempfile.mkdtemp(prefix="dfp-profile-"))
    with broker("kafka", workdir) as (bootstrap, _pid):
        uid = uuid.uuid4().hex[:8]
        topics = (f"prof-in-{uid}", f"prof-out-{uid}", f"prof-dlq-{uid}")
        create_topics(bootstrap, list(topics), partitions=partitions)
        pool = list(iter_events(64, [(640, 480), (1280, 720)], ["jpeg"]))
        send(make_producer(bootstrap), topics[0], relabelled(pool, events, "prof"), total=events)
        settings = load_settings({"bootstrap_servers": bootstrap, "model_dir": bundled_model_dir()})
        port = free_port()
        env = {**processor_env(settings, topics, f"prof-{uid}", port), **env_extra}
        proc = ProcessorProcess(env, workdir / "processor.log", port).start()
        collector = OutputCollector(bootstrap, topics[1:], partitions)
        try:
            proc.wait_ready()
            process = psutil.Process(proc.pid)
            cpu0, wall0 = sum(process.cpu_times()[:2]), time.monotonic()
            cmd = [_py_spy(), "record", "--pid", str(proc.pid), "--format", "raw", "--rate", str(rate),
                   "--nonblocking", "-o", str(workdir / "raw.txt")]  # fmt: skip
            if idle:
                cmd += ["--idle", "--threads"]
            before = thread_cpu_s(proc.pid)
            with (workdir / "py-spy.log").open("wb") as spy_log:
                spy = None if threads else subprocess.Popen(cmd, stdout=spy_log, stderr=subprocess.STDOUT)
            wait_for_outputs(collector, "prof-", events, proc, 600.0)
            cpu_s, wall_s = sum(process.cpu_times()[:2]) - cpu0, time.monotonic() - wall0
            per_thread: dict[str, float] = {}
            if threads:  # named after the drain: the decode pool starts its threads on its first events
                per_thread = per_thread_cores(thread_names(proc.pid), before, thread_cpu_s(proc.pid), wall_s)
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
                spy.wait(60)
        finally:
            proc.stop()
            collector.close()
        raw = (workdir / "raw.txt").read_text() if (workdir / "raw.txt").exists() else ""
    cpu_ms = 1000.0 * cpu_s / events
    return {"events": events, "partitions": partitions, "wall_s": round(wall_s, 2), "cpu_s": round(cpu_s, 2),
            "events_per_s": round(events / wall_s, 1), "cpu_ms_per_event": round(cpu_ms, 3),
            "cores_busy": round(cpu_s / wall_s, 2), "py_spy_rate_hz": rate, "settings": env_extra,
            "idle_threads_sampled": idle, "cores_per_thread": per_thread,
            "cpu_ms_per_event_per_thread": {role: round(1000.0 * c * wall_s / events, 3)
                                            for role, c in per_thread.items()},
            "stages": summarise(raw, cpu_ms), "top_frames": top_frames(raw)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Command line: profile once, print the split, write --json."""
    p = argparse.ArgumentParser(prog="python -m bench.profile_e2e", description=__doc__)
    p.add_argument("--events", type=int, default=3000)
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--set", action="append", default=[], metavar="DFP_NAME=VALUE", help="extra processor settings")
    p.add_argument("--idle", action="store_true",
                   help="sample waiting threads too (py-spy --idle --threads): shares are then of thread time, "
                        "not CPU, and show where each thread waits")  # fmt: skip
    p.add_argument("--threads", action="store_true",
                   help="no py-spy sampling (it slows the process): CPU per thread over the drain (/proc)")  # fmt: skip
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.set)
    result = profile(args.events, args.partitions, args.rate, extra, idle=args.idle, threads=args.threads)
    for stage, row in result["stages"].items():
        print(f"{stage:42} {100 * row['share']:5.1f} %  {row['cpu_ms_per_event']:7.3f} CPU ms/event")
    for role, ms in result["cpu_ms_per_event_per_thread"].items():
        print(f"thread {role:35} {result['cores_per_thread'][role]:5.2f} cores {ms:7.3f} CPU ms/event")
    print(f"{result['events_per_s']} events/s, {result['cpu_ms_per_event']} CPU ms/event, {result['cores_busy']} cores")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

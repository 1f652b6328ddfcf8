"""bench.profile_e2e: py-spy stacks are charged to the deepest frame of ours, and summed into stages."""

from __future__ import annotations

from bench.profile_e2e import per_thread_cores, stage_of, summarise, thread_cpu_s, top_frames

RAW = (
    "Thread.run (threading.py:982);DecodePool._work (processor/decode.py:90);decode_b64 (processor/envelope.py:112) 3\n"
    "Thread.run (threading.py:982);Scorer.score (processor/scorer.py:96);Engine.infer (processor/engine.py:150) 6\n"
    "Thread.run (threading.py:982);Scorer._run (processor/scorer.py:84);Condition.wait (threading.py:331) 1\n"
)


def test_a_c_call_is_charged_to_the_python_function_of_ours_that_made_it() -> None:
    assert stage_of("main;DecodePool._work (processor/decode.py:90);decode_b64 (processor/envelope.py:112)") == (
        "base64 decode"
    )
    assert stage_of("main;Scorer._run (processor/scorer.py:84);Condition.wait (threading.py:331)") == (
        "thread hand-offs (pool, queues)"
    )


def test_stage_shares_split_the_measured_cpu_per_event() -> None:
    stages = summarise(RAW, cpu_ms_per_event=2.0)
    assert stages["inference (ONNX Runtime)"] == {"share": 0.6, "cpu_ms_per_event": 1.2}
    assert stages["base64 decode"]["cpu_ms_per_event"] == 0.6
    assert top_frames(RAW)[0]["function"] == "Engine.infer"


def test_thread_cpu_is_summed_per_role_python_names_first_then_librdkafka_then_unnamed() -> None:
    names = {10: "decode_0", 11: "scorer"}
    before = {10: ("python3", 1.0), 11: ("python3", 2.0), 12: ("rdk:broker1", 0.0), 13: ("python3", 0.5)}
    after = {10: ("python3", 6.0), 11: ("python3", 4.0), 12: ("rdk:broker1", 0.2), 14: ("rdk:main", 0.3),
             13: ("python3", 1.5)}  # fmt: skip
    assert per_thread_cores(names, before, after, wall_s=10.0) == {
        "decode_0": 0.5, "scorer": 0.2, "unnamed (ONNX Runtime pool)": 0.1, "librdkafka threads": 0.05}  # fmt: skip


def test_thread_cpu_reads_this_process_threads_from_proc() -> None:
    import os
    import threading

    threads = thread_cpu_s(os.getpid())
    assert threading.get_native_id() in threads
    assert all(cpu >= 0.0 for _, cpu in threads.values())

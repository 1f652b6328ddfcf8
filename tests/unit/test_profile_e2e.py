"""bench.profile_e2e: py-spy stacks are charged to the deepest frame of ours, and summed into stages."""

from __future__ import annotations

from bench.profile_e2e import stage_of, summarise, top_frames

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

"""The soak's growth figure: medians just after warm-up against the last samples."""

from __future__ import annotations

from bench.soak import Sample, growth


def test_growth_compares_the_samples_after_warm_up_with_the_last_ones() -> None:
    def sample(t: float, rss: float) -> Sample:
        return Sample(t, rss, 10, 20, 0, 0)

    samples = [sample(0, 50.0), sample(10, 100.0), sample(20, 100.0), sample(30, 110.0), sample(40, 110.0)]
    assert growth(samples, warmup_s=10, window=2) == {"rss_mb": 10.0, "threads": 0.0, "open_fds": 0.0}
    assert growth(samples[:1], warmup_s=10) == {"rss_mb": None, "threads": None, "open_fds": None}

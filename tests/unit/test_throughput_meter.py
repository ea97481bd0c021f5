"""The throughput meter forgets events that left its window even when nobody scrapes (found by the soak: RSS grew per token)."""

from __future__ import annotations

import time

from service.metrics import ThroughputMeter


def test_events_out_of_the_window_are_forgotten_without_a_scrape() -> None:
    meter = ThroughputMeter(window_seconds=0.05)
    for _ in range(10_000):
        meter.add(1)
    time.sleep(0.06)
    meter.add(3)
    assert len(meter._events) == 1  # memory stays bounded by the window, not by the traffic since the last scrape
    assert meter.rate() == 3 / 0.05

"""The monitors' event-time windows and trigger policy (shared by drift and accuracy)."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.transforms import trigger, window

LATE_FIRING_DELAY_S = 5


def monitor_windows(window_s: int, allowed_lateness_s: int, period_s: int = 0) -> beam.WindowInto:
    """Fixed (or sliding every ``period_s``) windows: fire at the watermark, then late rows
    within the allowed lateness re-fire a window at most every LATE_FIRING_DELAY_S
    (accumulating)."""
    return beam.WindowInto(
        window.SlidingWindows(window_s, period_s) if period_s else window.FixedWindows(window_s),
        trigger=trigger.AfterWatermark(late=trigger.AfterProcessingTime(LATE_FIRING_DELAY_S)),
        accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
        allowed_lateness=allowed_lateness_s,
    )

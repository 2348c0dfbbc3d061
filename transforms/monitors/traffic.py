"""Traffic-drop detection: each window's event count against the median of recent normal windows.

Beam fires no pane for a window without events, so a model that went silent would never be
seen by a per-window statistic. Here a window with no pane is a window with 0 events: in
streams an event-time timer at the end of the *next* window fires when that window passed
without a pane; in bounded replays (no timers: the final watermark would fire them all) a gap
between two fired windows counts as silent windows. Late re-firings of a window already judged
are ignored. Only windows judged normal join the baseline, so an outage does not teach the
detector that silence is normal.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterator

from transforms.monitors.alerts import severity
from transforms.monitors.records import AlertInput, Breach, series_key
from transforms.rows import from_micros


@dataclasses.dataclass
class TrafficSettings:
    """``warning``/``critical``: count / baseline median at or below which to alert."""

    warning: float = 0.3
    critical: float = 0.1
    baseline_windows: int = 12
    min_baseline_windows: int = 3
    #: the baseline median must reach this many events per window before a drop is judged
    min_sample_size: int = 500


@dataclasses.dataclass
class TrafficState:
    """Per (model, version); picklable, it lives in Beam state."""

    baseline: list[int] = dataclasses.field(default_factory=list)
    last_start_us: int | None = None
    silent_streak: int = 0  # windows in a row judged by the timer (no pane)


@dataclasses.dataclass(frozen=True)
class TrafficVerdict:
    start_us: int
    count: int
    ratio: float | None
    baseline_median: float | None
    level: str | None


def observe(
    state: TrafficState, start_us: int, count: int, window_us: int, s: TrafficSettings
) -> list[TrafficVerdict]:
    """Judge a fired window (and the silent windows before it); updates ``state``.

    >>> st, s = TrafficState(), TrafficSettings(min_sample_size=10)
    >>> for i in range(3):
    ...     _ = observe(st, i * 60, 100, 60, s)
    >>> [(v.start_us, v.count, v.level) for v in observe(st, 240, 4, 60, s)]  # 180 was silent
    [(180, 0, 'critical'), (240, 4, 'critical')]
    >>> observe(st, 240, 5, 60, s)  # a late re-firing of a judged window
    []
    """
    if state.last_start_us is not None and start_us <= state.last_start_us:
        return []
    out: list[TrafficVerdict] = []
    if state.last_start_us is not None:
        for silent in range(state.last_start_us + window_us, start_us, window_us):
            out.append(_judge(state, silent, 0, s))
    out.append(_judge(state, start_us, count, s))
    state.last_start_us = start_us
    state.silent_streak = 0
    return out


def silent_window(state: TrafficState, start_us: int, s: TrafficSettings) -> TrafficVerdict | None:
    """A window that ended without a pane (streaming timer)."""
    if state.last_start_us is not None and start_us <= state.last_start_us:
        return None
    state.last_start_us = start_us
    return _judge(state, start_us, 0, s)


def _judge(state: TrafficState, start_us: int, count: int, s: TrafficSettings) -> TrafficVerdict:
    if len(state.baseline) < s.min_baseline_windows:
        state.baseline.append(count)
        return TrafficVerdict(start_us, count, None, None, None)
    median = statistics.median(state.baseline)
    if median < s.min_sample_size:
        state.baseline = (state.baseline + [count])[-s.baseline_windows :]
        return TrafficVerdict(start_us, count, None, median, None)
    ratio = count / median
    level = severity(ratio, s.warning, s.critical, higher_is_worse=False)
    if level is None:
        state.baseline = (state.baseline + [count])[-s.baseline_windows :]
    return TrafficVerdict(start_us, count, ratio, median, level)


def breaches(
    model: str, version: str, verdicts: list[TrafficVerdict], window_us: int, s: TrafficSettings
) -> Iterator:
    """``AlertInput`` records for the alerting step (judged windows only)."""
    for v in verdicts:
        if v.ratio is None:
            continue
        threshold = s.critical if v.level == "critical" else s.warning
        breach = Breach(
            v.level, v.ratio, threshold, {"baseline_median": v.baseline_median}, {"count": v.count}
        )
        yield (
            series_key(model, version, "events", "traffic"),
            AlertInput(breach, from_micros(v.start_us), from_micros(v.start_us + window_us), v.count),
        )

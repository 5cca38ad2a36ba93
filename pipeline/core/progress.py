"""An honest time estimate for a long loop: measured after warm-up, logged once, up front."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class Eta:
    """Call `update(n)` after each batch of n units (steps, images). After `warmup` batches (allocator,
    kernel selection, compilation are not representative) the rate over the next `measure` batches
    gives the estimate for the rest; past `slow_minutes` the `slow_hint` is logged as a warning."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str,
        *,
        warmup: int = 2,
        measure: int = 4,
        slow_minutes: float = float("inf"),
        slow_hint: str = "",
    ) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.warmup, self.measure, self.slow_minutes, self.slow_hint = warmup, measure, slow_minutes, slow_hint
        self.batches = self.done = 0
        self.minutes: float | None = None  # the estimate for the rest, once measured
        self._start: tuple[float, int] = (0.0, 0)

    def update(self, n: int) -> None:
        self.batches += 1
        self.done += n
        if self.batches == self.warmup:
            self._start = (time.perf_counter(), self.done)
        elif self.batches == self.warmup + self.measure and self.done < self.total:
            seconds, done = time.perf_counter() - self._start[0], self.done - self._start[1]
            self.minutes = (self.total - self.done) * seconds / done / 60
            log.info(
                "%s: %.3g %s/s -> about %.1f min for the remaining %d %s",
                self.what,
                done / seconds,
                self.unit,
                self.minutes,
                self.total - self.done,
                self.unit,
            )
            if self.minutes > self.slow_minutes and self.slow_hint:
                log.warning("%s: ~%.0f min on this machine. %s", self.what, self.minutes, self.slow_hint)

"""Measured steps of a drill, failover or failback.

A *step* is one named phase (``detect``, ``fetch``, ``promote``, ...) with its
UTC start time, wall-clock duration in seconds, outcome and details. A
*timeline* is the ordered list of steps of one run. Durations come from
``time.monotonic()``, so a clock adjustment during a run does not distort them.
Start times come from the wall clock, because auditors compare them with logs.

>>> timeline = Timeline()
>>> with timeline.step("detect") as detail:
...     detail["standby"] = "streaming"
>>> timeline.steps[0].name, timeline.steps[0].outcome
('detect', 'ok')
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from resguardo.errors import ResguardoError
from resguardo.log import get_logger

log = get_logger("drills.timeline")

OUTCOME_OK = "ok"
OUTCOME_FAILED = "failed"
OUTCOME_SKIPPED = "skipped"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(moment: dt.datetime) -> str:
    """Format a timezone-aware time as ISO 8601 UTC with microseconds and ``Z``."""
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class Step:
    """One measured phase."""

    name: str
    started_at: str
    seconds: float
    outcome: str
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Step":
        return cls(**data)


@dataclass
class Timeline:
    """The steps of one run, in the order they started."""

    steps: list[Step] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str, **context: Any) -> Iterator[dict[str, Any]]:
        """Measure the block as step ``name``; the yielded dict becomes its details.

        An exception inside the block records the step as failed with the
        error's message and propagates.
        """
        started_at = utc_now()
        started = time.monotonic()
        detail: dict[str, Any] = {}
        log.info("drills.step.start", extra={"step": name, **context})
        try:
            yield detail
        except BaseException as error:
            seconds = round(time.monotonic() - started, 3)
            message = error.message if isinstance(error, ResguardoError) else str(error) or type(error).__name__
            self.steps.append(Step(name, iso(started_at), seconds, OUTCOME_FAILED, detail, message))
            log.error("drills.step.failed", extra={"step": name, "seconds": seconds, "error": message, **context})
            raise
        seconds = round(time.monotonic() - started, 3)
        self.steps.append(Step(name, iso(started_at), seconds, OUTCOME_OK, detail))
        log.info("drills.step.done", extra={"step": name, "seconds": seconds, **context})

    def skip(self, name: str, reason: str) -> None:
        """Record step ``name`` as skipped with ``reason``."""
        self.steps.append(Step(name, iso(utc_now()), 0.0, OUTCOME_SKIPPED, {"reason": reason}))
        log.info("drills.step.skipped", extra={"step": name, "reason": reason})

    def seconds(self, *names: str) -> float:
        """Return the summed duration of the named steps (all steps when none are named)."""
        return round(sum(s.seconds for s in self.steps if not names or s.name in names), 3)

    def get(self, name: str) -> Step | None:
        """Return the last step called ``name``, or None."""
        for step in reversed(self.steps):
            if step.name == name:
                return step
        return None

    def to_list(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.steps]

    @classmethod
    def from_list(cls, items: list[dict[str, Any]]) -> "Timeline":
        return cls([Step.from_dict(item) for item in items])

"""What a successful handler call answers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Union

from ._errors import Permanent


@dataclass(frozen=True)
class Done:
    """Finished, with an optional result (JSON text) recorded on the job."""

    result: Optional[str] = None


@dataclass(frozen=True)
class Continue:
    """Not finished: the host commits this call's effects, records
    ``cursor`` and calls the handler again after ``delay_ms`` with
    ``ctx.cursor`` set to it. Keeps each call short, so a long job fits the
    per-call limits and a crash only loses the current slice."""

    cursor: str
    delay_ms: int = 0


Outcome = Union[Done, Continue]


def done(result: Any = None) -> Done:
    """Finished; ``result`` (if not None) is serialised to JSON as the job's
    result."""
    if result is None:
        return Done(None)
    return Done(to_json(result))


def continue_at(cursor: str, delay_ms: int = 0) -> Continue:
    """Not finished: call again with ``cursor`` after ``delay_ms``."""
    if isinstance(delay_ms, bool) or not isinstance(delay_ms, int) or delay_ms < 0:
        raise ValueError(f"delay_ms must be a non-negative integer, not {delay_ms!r}")
    return Continue(str(cursor), min(delay_ms, 2**64 - 1))


def to_json(value: Any) -> str:
    """Compact JSON, like the Rust SDK's serde_json output. A value that does
    not serialise will not on the next attempt either: permanent."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise Permanent(f"JSON error: {e}") from None


def from_result(value: Any) -> Outcome:
    """What a handler returned -> an outcome: ``None`` is done without a
    result, an outcome is itself, anything else is done with it as JSON."""
    if value is None:
        return Done(None)
    if isinstance(value, (Done, Continue)):
        return value
    return Done(to_json(value))

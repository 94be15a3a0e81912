"""Unit-testing handlers on plain CPython, without the host.

:class:`TestHost` runs a handler the way the host does (parse the JSON body
into the request type, call, make the outcome) and keeps what the call did.
Like the host, it applies a call's effects only if the call succeeds::

    from sluice_sdk.testing import TestHost

    host = TestHost()
    outcome = host.handle(Handler, {"name": "Ann"})
    assert outcome == sluice.done({"greeting": "hello Ann"})
    assert host.posts[0].channel == "greeted"
    assert host.state("seen") == 1
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ._context import Context
from ._errors import Permanent
from ._export import handler_spec, run_handler
from ._outcome import Outcome, to_json


@dataclass
class Posted:
    """A message the handler posted (committed, since the call succeeded)."""

    channel: str
    body: str
    name: str
    kind: str
    headers: List[Tuple[str, str]] = field(default_factory=list)
    delay_ms: Optional[int] = None
    launch_at_ms: Optional[int] = None
    expires_at_ms: Optional[int] = None

    def json(self) -> Any:
        """The body, parsed."""
        return json.loads(self.body)


@dataclass
class Progress:
    """The last progress a successful call reported."""

    percent: int
    note: Optional[str]


class _Call:
    """One call's buffered effects; reads see its own writes."""

    def __init__(self, committed: Dict[str, bytes]):
        self.committed = committed
        self.writes: Dict[str, Optional[bytes]] = {}
        self.posts: List[Posted] = []
        self.progress_: Optional[Progress] = None
        # Set by an add the host would refuse: the call fails for good.
        self.invalid: Optional[str] = None

    def post(self, channel, body, name, kind, headers, delay_ms, launch_at_ms, expires_at_ms):
        self.posts.append(
            Posted(channel, body, name or channel, kind, headers, delay_ms, launch_at_ms, expires_at_ms)
        )

    def progress(self, percent, note):
        self.progress_ = Progress(percent, note)

    def state_get(self, key):
        if key in self.writes:
            return self.writes[key]
        return self.committed.get(key)

    def state_set(self, key, value):
        self.writes[key] = bytes(value)

    def state_delete(self, key):
        self.writes[key] = None

    def state_add(self, key, delta):
        # One call at a time, so adding to what the call sees now is what
        # the host's commit-time add comes to.
        total = _integer(self.state_get(key))
        if total is not None:
            total += delta
        if total is None or not -(2**63) <= total < 2**63:
            if self.invalid is None:
                self.invalid = (
                    f"state-add on key {key!r}: its value is not an integer, "
                    f"or adding {delta} overflows"
                )
            return
        self.writes[key] = str(total).encode()


def _integer(raw: Optional[bytes]) -> Optional[int]:
    """The counter in ``raw`` as the host reads it (a JSON integer; absent
    is 0), or None if it is not one."""
    if raw is None:
        return 0
    try:
        text = raw.decode("ascii").strip(" \t\r\n")
    except UnicodeDecodeError:
        return None
    digits = text[1:] if text.startswith("-") else text
    if not digits or not all("0" <= c <= "9" for c in digits):
        return None
    n = int(text)
    return n if -(2**63) <= n < 2**63 else None


class TestHost:
    """A stand-in for the host in unit tests: committed state, the posts
    and progress of successful calls, and the job the next call sees."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, channel: str = "test", attempt: int = 1):
        self.committed: Dict[str, bytes] = {}
        self.posts: List[Posted] = []
        self.progress: Optional[Progress] = None
        self.channel = channel
        self.attempt = attempt
        self.headers: List[Tuple[str, str]] = []
        self.cursor: Optional[str] = None
        self.job_id = "test-job"
        self.message_id = "test-message"
        self.request_name: Optional[str] = None

    def set_state(self, key: str, value: Any) -> "TestHost":
        """Commits ``value`` (as JSON) at ``key`` before the next call."""
        self.committed[key] = to_json(value).encode()
        return self

    def state(self, key: str, default: Any = None) -> Any:
        """The committed value at ``key``, decoded from JSON."""
        raw = self.committed.get(key)
        return default if raw is None else json.loads(raw)

    def handle(self, handler: Any, request: Any) -> Outcome:
        """Runs ``handler`` (what ``export_handler`` returned, or the
        function or class given to it) on ``request`` (any JSON value, or a
        JSON string with :meth:`handle_json`). Returns the outcome or raises
        ``Retryable`` / ``Permanent``; effects are committed only on
        success. An ``add`` on a value that is not an integer, or past a
        signed 64-bit integer, raises ``Permanent``, as the host
        dead-letters such a job."""
        return self.handle_json(handler, to_json(request))

    def handle_json(self, handler: Any, body: str) -> Outcome:
        """Like :meth:`handle`, with the request body as JSON text."""
        spec = getattr(handler, "spec", None) or handler_spec(handler)
        ctx = Context(
            self.job_id,
            self.message_id,
            self.channel,
            self.attempt,
            list(self.headers),
            self.cursor,
            self.request_name or self.channel,
        )
        call = _Call(self.committed)
        outcome = run_handler(spec, ctx, body, call)
        if call.invalid is not None:
            raise Permanent(call.invalid)
        for key, value in call.writes.items():
            if value is None:
                self.committed.pop(key, None)
            else:
                self.committed[key] = value
        self.posts.extend(call.posts)
        if call.progress_ is not None:
            self.progress = call.progress_
        return outcome

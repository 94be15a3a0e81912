"""What a plugin says about itself when the host loads it."""

from __future__ import annotations

from typing import List, Optional

HANDLER = "handler"
MAPPER = "mapper"


class Describe:
    """The answer to the host's ``describe()`` call, built like the Rust
    SDK's ``Describe``::

        Describe.handler("task-reminder", "1.0.0").channel("task.reminder").timeout_ms(5_000)

    Limits left unset mean the host default; the host configuration has the
    last word (it may lower what a plugin asks for, never raise it).
    """

    def __init__(self, name: str, version: str, kind: str):
        self.name = str(name)
        self.version = str(version)
        self.kind = kind
        self.channels: List[str] = []
        self._fuel: Optional[int] = None
        self._memory: Optional[int] = None
        self._timeout: Optional[int] = None

    @classmethod
    def handler(cls, name: str, version: str) -> "Describe":
        """A handler named ``name`` (unique among the loaded plugins) at
        ``version`` (recorded on every job it runs)."""
        return cls(name, version, HANDLER)

    @classmethod
    def mapper(cls, name: str, version: str) -> "Describe":
        """A mapper named ``name`` at ``version``."""
        return cls(name, version, MAPPER)

    def channel(self, channel: str) -> "Describe":
        """Adds a channel this plugin handles (or maps)."""
        self.channels.append(str(channel))
        return self

    def fuel(self, fuel: int) -> "Describe":
        """Asks for a fuel budget per call (roughly instructions executed)."""
        self._fuel = _unsigned("fuel", fuel)
        return self

    def memory_bytes(self, n: int) -> "Describe":
        """Asks for a largest linear memory, in bytes."""
        self._memory = _unsigned("memory_bytes", n)
        return self

    def timeout_ms(self, ms: int) -> "Describe":
        """Asks for a wall-clock budget per call, in milliseconds."""
        self._timeout = _unsigned("timeout_ms", ms)
        return self

    def fuel_limit(self) -> Optional[int]:
        """The requested fuel per call, if any."""
        return self._fuel

    def memory_limit(self) -> Optional[int]:
        """The requested memory limit in bytes, if any."""
        return self._memory

    def timeout_limit(self) -> Optional[int]:
        """The requested timeout in milliseconds, if any."""
        return self._timeout

    def __repr__(self) -> str:
        return (
            f"Describe({self.kind} {self.name!r} {self.version!r}, channels={self.channels!r}, "
            f"fuel={self._fuel}, memory_bytes={self._memory}, timeout_ms={self._timeout})"
        )


def _unsigned(what: str, n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0 or n >= 2**64:
        raise ValueError(f"{what} must be an integer from 0 to 2**64-1, not {n!r}")
    return n

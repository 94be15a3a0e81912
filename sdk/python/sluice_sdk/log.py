"""Logging to the host's log.

Lines are tagged by the host with the plugin's name and the job id. A guest
has no usable stdout or stderr in production, so these functions are the
way to say something. Logging is not an effect: a line is written even if
the call later fails. Off WebAssembly (unit tests) lines go to stderr.
"""

from __future__ import annotations

import sys


def _write(level: str, message: str) -> None:
    try:
        from wit_world.imports import log as wit_log
    except ImportError:
        print(f"[{level}] {message}", file=sys.stderr)
        return
    wit_log.log(getattr(wit_log.Level, level.upper()), str(message))


def trace(message: str) -> None:
    """The finest detail, usually filtered out."""
    _write("trace", message)


def debug(message: str) -> None:
    """Detail that helps when something goes wrong."""
    _write("debug", message)


def info(message: str) -> None:
    """What happened, in normal operation."""
    _write("info", message)


def warn(message: str) -> None:
    """Something odd that did not stop the work."""
    _write("warn", message)


def error(message: str) -> None:
    """Something failed."""
    _write("error", message)

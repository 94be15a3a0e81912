"""The plain data a mapper works with, mirroring the WIT records."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

from ._errors import Rejected
from ._outcome import to_json

COMMAND = "command"
EVENT = "event"


@dataclass
class Message:
    """A message as it travels on a channel: what a mapper's
    ``to_request`` receives."""

    id: str
    channel: str
    kind: str
    headers: List[Tuple[str, str]]
    body: bytes
    attempt: int

    def json(self, type_: Any = None) -> Any:
        """The body parsed as JSON (into ``type_`` when given, see
        :func:`sluice_sdk.decode`). Raises :class:`Rejected` saying what is
        wrong, ready to be the reason the message is rejected."""
        from ._request import DecodeError, decode, type_name

        try:
            value = json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise Rejected(f"body is not valid JSON: {e}") from None
        if type_ is None:
            return value
        try:
            return decode(type_, value)
        except DecodeError as e:
            raise Rejected(f"body is not a valid {type_name(type_)}: {e}") from None

    def header(self, key: str) -> Optional[str]:
        """The first header named ``key``, compared ASCII case-insensitively."""
        return _header(self.headers, key)


@dataclass
class Request:
    """What a mapper makes of a message and a handler receives: a request
    type name and its JSON body."""

    name: str
    body: str

    @classmethod
    def json(cls, name: str, body: Any) -> "Request":
        """A request named ``name`` whose body is ``body`` as JSON."""
        return cls(name, to_json(body))

    def parse(self, type_: Any = None) -> Any:
        """The body parsed (into ``type_`` when given)."""
        from ._request import decode

        value = json.loads(self.body)
        return value if type_ is None else decode(type_, value)


@dataclass
class Outgoing:
    """A message as a mapper's ``to_message`` produces it; the host adds the
    id, channel and kind."""

    headers: List[Tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @classmethod
    def json(cls, body: Any) -> "Outgoing":
        """A message whose body is ``body`` as JSON, with the header
        ``content-type: application/json``."""
        return cls([("content-type", "application/json")], to_json(body).encode())

    def header(self, key: str, value: str) -> "Outgoing":
        """Adds a header."""
        self.headers.append((str(key), str(value)))
        return self


def _header(headers: List[Tuple[str, str]], key: str) -> Optional[str]:
    key = key.lower()
    for k, v in headers:
        if k.lower() == key:
            return v
    return None

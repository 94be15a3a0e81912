"""Glue between the componentize-py bindings and the SDK's concepts.

componentize-py exports a module-level class named after the WIT interface
(``Handler`` for ``sluice:plugin/handler``, ``Mapper`` for the mapper) and
calls its methods with the generated WIT types. :func:`export_handler` and
:func:`export_mapper` build that class around a plain function or class.
The generated ``wit_world`` package exists only inside the component, so it
is imported lazily, on the first call: the SDK itself imports on plain
CPython (for unit tests) too.
"""

from __future__ import annotations

import inspect
import json
import traceback
import typing
from typing import Any, Callable, Optional

from . import _context
from ._context import Context
from ._describe import HANDLER, MAPPER, Describe
from ._errors import Permanent, Rejected, Retryable
from ._message import Message, Outgoing, Request
from ._outcome import Continue, Outcome, from_result
from ._request import DecodeError, decode, type_name, warm

# Lines of traceback kept in the reason of an unexpected exception.
_TRACEBACK_LINES = 6

# The generated bindings, imported when this module is, so that
# componentize-py's build-time snapshot (it imports the app module once and
# saves the initialised interpreter) already holds them: a call then pays no
# import. Each is absent on plain CPython, and `effects` in a mapper.
try:
    from componentize_py_types import Err as _Err
    from wit_world.imports import types as _types
except ImportError:
    _Err = _types = None
try:
    from wit_world.exports import handler as _wit_handler
    from wit_world.imports import effects as _effects
except ImportError:
    _wit_handler = _effects = None


class _Spec:
    """A handler as the SDK runs it: describe, the call, the request type."""

    def __init__(self, describe: Describe, call: Callable[[Context, Any], Any], request: Any):
        self.describe = describe
        self.call = call
        self.request = request


def _describe_of(target: Any, describe: Optional[Describe], kind: str) -> Describe:
    d = describe
    if d is None:
        d = getattr(target, "describe", None)
        if callable(d) and not isinstance(d, Describe):
            d = d()
    if not isinstance(d, Describe):
        raise TypeError(
            f"{getattr(target, '__name__', target)!r} has no Describe: pass one to "
            f"export_{kind}(..., Describe.{kind}(name, version).channel(...)) or set a "
            "`describe` attribute"
        )
    if d.kind != kind:
        raise TypeError(f"{d.name!r} is described as a {d.kind}, exported as a {kind}")
    return d


def handler_spec(target: Any, describe: Optional[Describe] = None) -> _Spec:
    """Reads a handler function or class (see :func:`export_handler`)."""
    d = _describe_of(target, describe, HANDLER)
    if inspect.isclass(target):
        method = getattr(target, "handle", None)
        if method is None:
            raise TypeError(f"handler class {target.__name__} has no handle(self, ctx, request)")

        def call(ctx: Context, req: Any) -> Any:
            return target().handle(ctx, req)

        request = getattr(target, "Request", None) or _annotation(method, 2)
    elif callable(target):
        call = target
        request = _annotation(target, 1)
    else:
        raise TypeError(f"export_handler needs a function or a class, not {target!r}")
    return _Spec(d, call, request)


def _annotation(fn: Callable[..., Any], index: int) -> Any:
    """The type annotation of parameter ``index`` of ``fn`` (Any if none)."""
    params = list(inspect.signature(fn).parameters.values())
    if len(params) <= index:
        return Any
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable hints mean "untyped"
        hints = {}
    return hints.get(params[index].name, Any)


def parse_request(spec: _Spec, body: str) -> Any:
    """The request body as the handler's request type; a body that does not
    fit is permanent (it will not fit on a retry either)."""
    try:
        value = json.loads(body)
    except ValueError as e:
        raise Permanent(f"request is not valid JSON: {e}") from None
    try:
        return decode(spec.request, value)
    except DecodeError as e:
        raise Permanent(f"request is not a valid {type_name(spec.request)}: {e}") from None


def run_handler(spec: _Spec, ctx: Context, body: str, backend: Any) -> Outcome:
    """One call: parse, handle with ``backend`` for effects, make the
    outcome. Raises Retryable/Permanent; any other exception becomes a
    Retryable naming it (as a Rust panic is retried with its message)."""
    previous = _context._set_backend(backend)
    try:
        request = parse_request(spec, body)
        return from_result(spec.call(ctx, request))
    except (Retryable, Permanent):
        raise
    except Exception as e:  # noqa: BLE001 - every failure must become data
        raise Retryable(_unexpected(e)) from None
    finally:
        _context._set_backend(previous)


def _unexpected(e: BaseException) -> str:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    tail = "".join(tb[-_TRACEBACK_LINES:]).strip()
    return f"unhandled {type(e).__name__}: {e}\n{tail}"


def export_handler(target: Any, describe: Optional[Describe] = None) -> type:
    """The class componentize-py exports for a handler: assign it to the
    module-level name ``Handler``::

        Handler = sluice.export_handler(greet, Describe.handler("greeter", "1.0.0").channel("greetings"))

    ``target`` is a function ``(ctx, request) -> result`` or a class with a
    ``handle(self, ctx, request)`` method (a fresh instance per call) and a
    ``describe`` attribute. The request type is the annotation of the
    request parameter (or a class attribute ``Request``). The result: None
    (done), ``done(x)`` / ``continue_at(cursor, delay_ms)``, or any JSON
    value (done with it as the job's result).
    """
    spec = handler_spec(target, describe)
    warm(spec.request)

    class Handler:
        def describe(self) -> Any:
            return _plugin_info(spec.describe)

        def handle(self, ctx: Any, request: Any) -> Any:
            wit, Err = _wit_handler, _Err
            context = Context(
                ctx.job_id,
                ctx.message_id,
                ctx.channel,
                ctx.attempt,
                list(ctx.headers),
                ctx.cursor,
                request.name,
            )
            try:
                outcome = run_handler(spec, context, request.body, _WitEffects())
            except Retryable as e:
                raise Err(wit.HandlerError_Retryable(e.message)) from None
            except Permanent as e:
                raise Err(wit.HandlerError_Permanent(e.message)) from None
            if isinstance(outcome, Continue):
                return wit.Outcome_Continue(wit.Continuation(outcome.cursor, outcome.delay_ms))
            return wit.Outcome_Done(outcome.result)

    Handler.__qualname__ = Handler.__name__ = "Handler"
    Handler.spec = spec  # type: ignore[attr-defined]
    return Handler


def export_mapper(target: Any, describe: Optional[Describe] = None) -> type:
    """The class componentize-py exports for a mapper: assign it to the
    module-level name ``Mapper``. ``target`` is a class with
    ``to_request(self, message: Message) -> Request`` and
    ``to_message(self, request: Request) -> Outgoing``, and a ``describe``.
    Raising :class:`Rejected` (or anything else) from ``to_request``
    dead-letters the message with that reason."""
    d = _describe_of(target, describe, MAPPER)
    for method in ("to_request", "to_message"):
        if not callable(getattr(target, method, None)):
            raise TypeError(f"mapper {getattr(target, '__name__', target)!r} has no {method}()")

    class Mapper:
        def describe(self) -> Any:
            return _plugin_info(d)

        def to_request(self, message: Any) -> Any:
            types = _types
            m = Message(
                message.id,
                message.channel,
                "event" if message.kind == types.MessageKind.EVENT else "command",
                list(message.headers),
                bytes(message.body),
                message.attempt,
            )
            r = _mapped(lambda: target().to_request(m), Request)
            return types.Request(r.name, r.body)

        def to_message(self, request: Any) -> Any:
            types = _types
            o = _mapped(lambda: target().to_message(Request(request.name, request.body)), Outgoing)
            return types.Outgoing(list(o.headers), bytes(o.body))

    Mapper.__qualname__ = Mapper.__name__ = "Mapper"
    return Mapper


def _mapped(call: Callable[[], Any], expected: type) -> Any:
    Err = _Err
    try:
        out = call()
    except Rejected as e:
        raise Err(e.reason) from None
    except Exception as e:  # noqa: BLE001 - a failing mapper rejects, with the reason
        raise Err(_unexpected(e)) from None
    if not isinstance(out, expected):
        raise Err(f"mapper returned {type(out).__name__}, expected {expected.__name__}")
    return out


def _plugin_info(d: Describe) -> Any:
    types = _types
    return types.PluginInfo(
        name=d.name,
        version=d.version,
        kind=types.PluginKind.HANDLER if d.kind == HANDLER else types.PluginKind.MAPPER,
        channels=list(d.channels),
        limits=types.Limits(
            fuel=d.fuel_limit(), memory_bytes=d.memory_limit(), timeout_ms=d.timeout_limit()
        ),
    )


class _WitEffects:
    """Effects through the host's imports (handler world only)."""

    def __init__(self) -> None:
        self._effects = _effects
        self._types = _types

    def post(self, channel, body, name, kind, headers, delay_ms, launch_at_ms, expires_at_ms):
        t = self._types
        self._effects.post(
            channel,
            body,
            self._effects.PostOptions(
                name=name,
                kind=t.MessageKind.EVENT if kind == "event" else t.MessageKind.COMMAND,
                headers=headers,
                delay_ms=delay_ms,
                launch_at_ms=launch_at_ms,
                expires_at_ms=expires_at_ms,
            ),
        )

    def progress(self, percent, note):
        self._effects.progress(percent, note)

    def state_get(self, key):
        return self._effects.state_get(key)

    def state_set(self, key, value):
        self._effects.state_set(key, value)

    def state_delete(self, key):
        self._effects.state_delete(key)

    def state_add(self, key, delta):
        self._effects.state_add(key, delta)


__all__ = ["export_handler", "export_mapper"]

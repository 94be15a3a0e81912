"""Write Sluice message handlers and mappers in Python.

A Sluice plugin is a WebAssembly component the Sluice host loads and calls
once per message. ``componentize-py`` turns a Python module into such a
component; this package hides the generated bindings behind the same
concepts as the Rust SDK (``sluice-sdk``):

* a **handler** does the work for the messages of its channels. It gets a
  :class:`Context` (``ctx.post``, ``ctx.state``, ``ctx.progress``) and a
  typed request parsed from the message's JSON body;
* a **mapper** turns a channel's wire messages into requests and back.

A handler is a function or a class::

    from dataclasses import dataclass
    import sluice_sdk as sluice

    @dataclass
    class Greet:
        name: str

    def greet(ctx: sluice.Context, req: Greet):
        seen = ctx.state.get("seen", 0)
        ctx.state.set("seen", seen + 1)
        ctx.post("greeted", {"name": req.name})
        return {"greeting": f"hello {req.name}"}

    Handler = sluice.export_handler(
        greet, sluice.Describe.handler("greeter", "1.0.0").channel("greetings")
    )

The module-level name ``Handler`` (or ``Mapper``) is what componentize-py
exports; build with::

    componentize-py -d sluice_sdk/wit -w handler-plugin componentize app -o greeter.wasm

Failing: raise :class:`Retryable` when another attempt may succeed and
:class:`Permanent` when it cannot (the message is dead-lettered at once). Any
other exception is reported as a retryable error with its type, message and
the last lines of its traceback, as a panic is in Rust: the attempt failed,
the reason is kept.

Effects (posts, state writes, progress) take effect only if the call
succeeds, in the same transaction as the job's completion.

Off WebAssembly (plain CPython) the package works too, so handlers can be
unit-tested with :mod:`sluice_sdk.testing`.
"""

from ._context import Context, State
from ._describe import Describe
from ._errors import Permanent, Rejected, Retryable
from ._export import export_handler, export_mapper
from ._message import Message, Outgoing, Request
from ._outcome import Continue, Done, Outcome, continue_at, done
from ._request import decode
from . import log

__all__ = [
    "Context",
    "Continue",
    "Describe",
    "Done",
    "Message",
    "Outcome",
    "Outgoing",
    "Permanent",
    "Rejected",
    "Request",
    "Retryable",
    "State",
    "continue_at",
    "decode",
    "done",
    "export_handler",
    "export_mapper",
    "log",
]

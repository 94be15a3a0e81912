"""{{name}}: a Sluice handler for messages on `{{channel}}`."""

from dataclasses import dataclass

import sluice_sdk as sluice


@dataclass
class Greet:
    """The request: a message's JSON body. A body that does not fit is
    dead-lettered before the handler runs, with the reason."""

    name: str


def handle(ctx: sluice.Context, req: Greet):
    name = req.name.strip()
    if not name:
        # Retrying cannot fix this request: dead-letter it at once.
        raise sluice.Permanent("name is empty")
    # Effects (state, posts, progress) commit with the job's outcome, and
    # only if this call succeeds.
    seen = ctx.state.get("seen", 0) + 1
    ctx.state.set("seen", seen)
    ctx.post("{{channel}}.done", {"name": name})
    sluice.log.info(f"greeted {name}")
    return {"greeting": f"hello {name}", "seen": seen}


# The name componentize-py exports; the Describe says who the plugin is.
Handler = sluice.export_handler(
    handle,
    sluice.Describe.handler("{{name}}", "0.1.0").channel("{{channel}}").timeout_ms(5_000),
)

"""{{name}}: a Sluice mapper for channel `{{channel}}`. It turns the
channel's wire messages into requests for its handlers, and requests posted
to the channel into wire messages."""

from dataclasses import asdict, dataclass

import sluice_sdk as sluice


@dataclass
class Wire:
    """The wire format of `{{channel}}`: JSON with a name."""

    name: str


class {{Type}}:
    describe = sluice.Describe.mapper("{{name}}", "0.1.0").channel("{{channel}}")

    def to_request(self, message: sluice.Message) -> sluice.Request:
        """Raising Rejected dead-letters the message at once with the
        reason: the same bytes will not map any better on a retry."""
        ct = message.header("content-type")
        if ct is not None and not ct.startswith("application/json"):
            raise sluice.Rejected(f"content-type {ct!r} is not application/json")
        wire = message.json(Wire)
        if not wire.name.strip():
            raise sluice.Rejected("name is empty")
        return sluice.Request.json("{{Type}}", asdict(wire))

    def to_message(self, request: sluice.Request) -> sluice.Outgoing:
        return sluice.Outgoing.json(asdict(request.parse(Wire)))


# The name componentize-py exports.
Mapper = sluice.export_mapper({{Type}})

"""py-invoice: an example handler in Python.

Request on ``invoice.create``: ``{"customer": str, "lines": [{"sku": str,
"quantity": int, "unit_cents": int}], "currency": "EUR"}``. It totals the
lines, numbers the invoice from a per-plugin counter in state (read, so
``get`` then ``set``), adds the total to a revenue tally (not read, so
``add``: it never conflicts), reports progress, and posts an ``invoice.created`` event with the total. A line with
a quantity below 1 is a permanent error (dead-lettered at once); a customer
named ``"flaky"`` fails with a retryable error on the first attempt, to show
retries.
"""

from dataclasses import dataclass, field
from typing import List

import sluice_sdk as sluice


@dataclass
class Line:
    sku: str
    quantity: int
    unit_cents: int


@dataclass
class Invoice:
    customer: str
    lines: List[Line]
    currency: str = "EUR"
    tags: List[str] = field(default_factory=list)


def create_invoice(ctx: sluice.Context, req: Invoice):
    if not req.lines:
        raise sluice.Permanent("an invoice needs at least one line")
    for i, line in enumerate(req.lines):
        if line.quantity < 1:
            raise sluice.Permanent(f"line {i} ({line.sku}): quantity must be at least 1")
    if req.customer == "flaky" and ctx.attempt == 1:
        raise sluice.Retryable("the customer service did not answer (first attempt fails)")
    total = sum(line.quantity * line.unit_cents for line in req.lines)
    number = ctx.state.get("last_number", 0) + 1
    ctx.state.set("last_number", number)
    ctx.state.add("revenue_cents", total)
    ctx.progress(100, f"{len(req.lines)} lines")
    ctx.post(
        "invoice.created",
        {"number": number, "customer": req.customer, "total_cents": total, "currency": req.currency},
        event=True,
    )
    sluice.log.info(f"invoice {number} for {req.customer}: {total} {req.currency} cents")
    return {"number": number, "total_cents": total}


Handler = sluice.export_handler(
    create_invoice,
    sluice.Describe.handler("py-invoice", "1.0.0").channel("invoice.create"),
)

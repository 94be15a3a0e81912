"""py-bench-amounts: the benchmark workload of ``tests/plugins/bench-amounts``
in Python, so ``sluice bench --plugin py-bench-amounts`` puts a Python
plugin's figures next to Rust's on the same work.

A payment-like message ``{"id": int, "amount": int, "note": str}`` is parsed
in full and ``{"id": .., "amount": ..}`` returned as the job's result, so the
bench can check in SQLite that every job ran once and the amounts add up.
"""

from dataclasses import dataclass

import sluice_sdk as sluice


@dataclass
class Payment:
    id: int
    amount: int
    note: str


def handle(ctx: sluice.Context, req: Payment):
    if len(req.note) > 1024:
        raise sluice.Permanent("note longer than 1 KiB")
    return {"id": req.id, "amount": req.amount}


Handler = sluice.export_handler(
    handle,
    sluice.Describe.handler("py-bench-amounts", "0.1.0").channel("bench.amounts"),
)

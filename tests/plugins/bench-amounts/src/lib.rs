//! The benchmark workload (the one job queues are usually compared on): a
//! payment-like message `{"id": u64, "amount": i64, "note": string}` is
//! parsed in full and its `amount` returned as the job's result,
//! `{"id": .., "amount": ..}`, so `sluice bench` can check in SQLite that
//! every job ran exactly once and the amounts add up.

use sluice_sdk::prelude::*;

#[derive(Deserialize)]
struct Payment {
    id: u64,
    amount: i64,
    note: String,
}

struct BenchAmounts;

impl Handler for BenchAmounts {
    type Request = Payment;

    fn describe() -> Describe {
        Describe::handler("bench-amounts", "0.1.0").channel("bench.amounts")
    }

    fn handle(_ctx: &mut Context, req: Payment) -> Result<Outcome, Error> {
        if req.note.len() > 1024 {
            return Err(Error::permanent("note longer than 1 KiB"));
        }
        Outcome::done_with(&serde_json::json!({ "id": req.id, "amount": req.amount }))
    }
}

sluice_sdk::export_handler!(BenchAmounts);

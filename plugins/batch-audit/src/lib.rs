//! Example of a long job split into short calls. Each call audits one slice
//! of `items` and returns `Outcome::continue_at` with the next index as the
//! cursor; the host commits the slice's effects (the "audited" count and the
//! progress) and calls again. A crash only loses the slice in flight, and no
//! single call comes near the per-call limits.

use std::time::Duration;

use sluice_sdk::prelude::*;

#[derive(Deserialize)]
struct Audit {
    items: u32,
    #[serde(default = "default_slice")]
    slice: u32,
}

fn default_slice() -> u32 {
    100
}

struct BatchAudit;

impl Handler for BatchAudit {
    type Request = Audit;

    fn describe() -> Describe {
        Describe::handler("batch-audit", "1.0.0").channel("audit.batch")
    }

    fn handle(ctx: &mut Context, req: Audit) -> Result<Outcome, Error> {
        if req.slice == 0 {
            return Err(Error::permanent("slice must be at least 1"));
        }
        let start: u32 = match ctx.cursor() {
            None => 0,
            Some(c) => c
                .parse()
                .map_err(|_| Error::permanent(format!("cursor {c:?} is not an index")))?,
        }
        .min(req.items);
        let end = start.saturating_add(req.slice).min(req.items);
        // The "audit": a checksum over the slice.
        let checksum = (start..end).fold(17u64, |sum, i| sum.wrapping_mul(31) ^ u64::from(i));
        let audited: u64 = ctx.state().get("audited")?.unwrap_or(0);
        ctx.state()
            .set("audited", &(audited + u64::from(end - start)))?;
        let percent = (u64::from(end) * 100)
            .checked_div(u64::from(req.items))
            .unwrap_or(100);
        let note = format!("audited {end} of {}", req.items);
        ctx.progress(u8::try_from(percent).unwrap_or(100), Some(&note));
        sluice_sdk::log::debug(&format!("{note}, slice checksum {checksum:x}"));
        if end < req.items {
            Ok(Outcome::continue_at(end.to_string(), Duration::ZERO))
        } else {
            Outcome::done_with(&serde_json::json!({ "audited": req.items }))
        }
    }
}

sluice_sdk::export_handler!(BatchAudit);

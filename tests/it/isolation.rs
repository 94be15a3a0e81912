//! One message can never see another's memory: every call starts on the
//! module's pristine linear memory, however the instance pool recycles
//! and resets its slots (memset for what stays resident, pages given back
//! for the rest, only the pages a call dirtied when the kernel can tell).

use std::time::Duration;

use serde_json::Value;
use sluice::store::JobState;

use crate::util::{Env, FAST};

#[test]
fn every_call_starts_on_pristine_memory_in_a_recycled_slot() {
    let env = Env::new(&["test-fresh-memory"], FAST);
    // More calls than the pool keeps warm slots (and than the pump runs
    // at once), each dirtying more than the resident window, with a
    // different amount of grown memory, so slots are reused in every state.
    let n = 300;
    let input: String = (0..n)
        .map(|i| format!("{{\"grow_pages\": {}}}\n", i % 7 * 9))
        .collect();
    let out = env.sluice_stdin(&["post", "test.fresh"], &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon = env.start();
    let jobs = env.wait_settled("test.fresh", n, Duration::from_secs(120));
    let mut start_pages = Vec::new();
    for job in &jobs {
        assert_eq!(
            job.state,
            JobState::Succeeded,
            "{:?}\n{}",
            job.last_error,
            daemon.log_text()
        );
        let r: Value = serde_json::from_str(job.result.as_deref().unwrap_or("null")).expect("json");
        for check in ["data_fresh", "bss_fresh", "heap_zero", "grown_zero"] {
            assert_eq!(r[check], Value::Bool(true), "{check} in {r}");
        }
        start_pages.push(r["pages_at_start"].as_u64().expect("pages_at_start"));
    }
    start_pages.dedup();
    assert_eq!(
        start_pages.len(),
        1,
        "memory size at start varied: {start_pages:?}"
    );
    assert!(start_pages[0] > 0);
}

use std::collections::HashSet;

use super::*;
use crate::flow::{Concurrency, KeySource, Rate, RateLimit};

fn spec(limit: u32) -> FlowSpec {
    FlowSpec {
        concurrency: Some(Concurrency {
            key: KeySource::Header("tenant".into()),
            limit,
        }),
        rate: None,
    }
}

fn row(i: usize, tenant: &str) -> Row {
    Row {
        id: format!("{i:06}"),
        visible_at: i as i64,
        headers: vec![("tenant".into(), tenant.into())],
        body: b"{}".to_vec(),
    }
}

fn take(gate: &Arc<Gate>, max: usize) -> Vec<Lease> {
    let picks = gate.pick(max, 0);
    let got: HashSet<String> = picks.iter().map(|p| p.id.clone()).collect();
    gate.claimed(picks, &got)
}

#[test]
fn keys_take_turns_and_a_full_key_waits_without_holding_others_up() {
    let gate = Gate::new("h", spec(1), Arc::default());
    let mut rows: Vec<Row> = (0..500).map(|i| row(i, "flood")).collect();
    rows.extend((500..505).map(|i| row(i, "quiet")));
    gate.offer(rows);
    let first = take(&gate, 4);
    // One of each key: the flood's limit is 1.
    let keys: Vec<&str> = first.iter().map(Lease::key).collect();
    assert_eq!(keys, ["flood", "quiet"]);
    assert_eq!(
        gate.waiting_reason(&vec![("tenant".into(), "flood".into())], b"", 0),
        Some(Waiting::Concurrency("flood".into()))
    );
    assert!(take(&gate, 4).is_empty(), "both keys are at their limit");
    assert_eq!(gate.waiting_counts(), (499 + 4, 0));
    drop(first);
    let next = take(&gate, 4);
    assert_eq!(
        next.iter().map(Lease::key).collect::<Vec<_>>(),
        ["flood", "quiet"]
    );
}

#[test]
fn a_pick_the_store_did_not_hand_out_frees_its_place() {
    let gate = Gate::new("h", spec(1), Arc::default());
    gate.offer(vec![row(0, "a"), row(1, "a")]);
    let picks = gate.pick(2, 0);
    assert_eq!(picks.len(), 1);
    assert!(gate.claimed(picks, &HashSet::new()).is_empty());
    assert_eq!(gate.running("a"), 0);
    assert_eq!(take(&gate, 2).len(), 1);
}

#[test]
fn rows_seen_before_are_not_queued_twice_and_the_buffer_is_bounded() {
    let gate = Gate::new("h", spec(2), Arc::default());
    assert_eq!(
        gate.scan_from(),
        Some(None),
        "the first read is from the start"
    );
    gate.offer((0..10).map(|i| row(i, "a")).collect());
    assert_eq!(gate.scan_from(), Some(Some((9, "000009".into()))));
    gate.offer((0..10).map(|i| row(i, "a")).collect());
    assert_eq!(take(&gate, 100).len(), 2);
    assert_eq!(gate.waiting_counts(), (8, 0));
    let big = Gate::new("h", spec(1), Arc::default());
    big.offer((0..MAX_BUFFERED + 10).map(|i| row(i, "k")).collect());
    assert_eq!(big.scan_from(), None, "a full buffer reads no further");
}

#[test]
fn a_rate_limit_lets_the_burst_through_then_waits() {
    let gate = Gate::new(
        "h",
        FlowSpec {
            concurrency: None,
            rate: Some(RateLimit {
                key: None,
                rate: Rate::parse("2/1s", Some(3)).expect("rate"),
            }),
        },
        Arc::default(),
    );
    gate.offer((0..10).map(|i| row(i, "a")).collect());
    assert_eq!(gate.pick(10, 0).len(), 3);
    assert_eq!(gate.pick(10, 100).len(), 0);
    assert_eq!(
        gate.waiting_reason(&Vec::new(), b"", 100),
        Some(Waiting::Rate)
    );
    assert_eq!(gate.waiting_counts(), (0, 7));
    assert_eq!(gate.pick(10, 1000).len(), 2);
}

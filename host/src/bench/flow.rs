//! `sluice bench --flow`: the cost of a concurrency key on every message.
//! The same backlog is drained on the embedded queue by the same handler
//! twice per run: without flow rules (the baseline), and with
//! `concurrency_key = "/id"`, `per_key_concurrency = 1` (the default
//! workload's ids are distinct, so every message has a key of its own and
//! the limit never holds a job back: what is priced is the gate, its
//! reads of the due jobs and the claims by id). Target: >= 0.5x.

use std::path::Path;
use std::sync::Arc;

use super::drive::{self, Host, Mode, RunReport};
use super::report::Report;
use super::stats::{rate, ratio};
use crate::config::Config;
use crate::flow::{Concurrency, FlowSpec, KeySource};
use crate::store::Store;
use crate::transport::Embedded;

/// Throughput with a key on every message against without, at least.
pub const FLOW_VS_NONE_TARGET: f64 = 0.5;

fn median(runs: &[RunReport]) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(|r| rate(r.handled, r.drain)).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Drains `messages` `runs` times without and with a key on every message
/// (alternating, so drift hits both alike), and reports the ratio.
pub(super) async fn run(
    host_of: impl Fn(Store, Arc<Config>) -> Host,
    config: &Arc<Config>,
    handler: &str,
    work: &Path,
    (messages, runs): (usize, usize),
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut keyed = (**config).clone();
    keyed.flows.insert(
        handler.to_owned(),
        FlowSpec {
            concurrency: Some(Concurrency {
                key: KeySource::Pointer("/id".into()),
                limit: 1,
            }),
            rate: None,
        },
    );
    let keyed = Arc::new(keyed);
    let drain = Mode::Drain { messages };
    let mut results: [Vec<RunReport>; 2] = [Vec::new(), Vec::new()];
    for i in 0..runs {
        for (j, (tag, cfg)) in [
            ("embedded:no key", config),
            ("embedded:key per message", &keyed),
        ]
        .into_iter()
        .enumerate()
        {
            let store = super::open(cfg, &work.join(format!("flow-{j}-{i}")), false)?;
            let transport = Embedded::new(store.clone(), cfg.poll_interval);
            let r = drive::run(&host_of(store, cfg.clone()), transport, drain).await?;
            report.run(tag, drain, &r);
            results[j].push(r);
        }
    }
    let (none, ours) = (median(&results[0]), median(&results[1]));
    println!(
        "[embedded] flow      {ours:.0} jobs/s with a concurrency key on every message vs {none:.0} without = {}",
        ratio(ours, none)
    );
    report.figure(
        format!("embedded drain, a concurrency key on every message (median of {runs})"),
        format!("{ours:.0} jobs/s"),
        format!("{none:.0} jobs/s without flow rules"),
        ratio(ours, none),
        format!(">= {FLOW_VS_NONE_TARGET}x"),
        none > 0.0 && ours / none >= FLOW_VS_NONE_TARGET,
    );
    Ok(())
}

//! `sluice bench --state MODES --hosts N`: state shared across hosts on
//! JetStream (`[nats] shared_state`), on one host and on N hosts competing
//! for the same messages, each with shared state off and on, in one run:
//! so "N hosts against 1" and "shared against not" are ratios measured
//! side by side (issue 17).
//!
//! The hosts run in this process, each as `sluice run` builds one: its own
//! SQLite store (writer thread), JetStream connection, outbox relay,
//! ledger and pump, all pulling from the one durable consumer. They share
//! the plugin (one runtime), as hosts on one box share its cores. Without
//! shared state each host counts its own share of a hot key (the split the
//! check prints); with it the one store must hold exactly what one host
//! would. Each shared run starts with no key of `test-state` in the state
//! stream, which is why it runs only on a nats-server the bench started.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::drive::{self, Host, Mode, RunReport};
use super::report::Report;
use super::state::{PLUGIN, StateMode, Tally};
use super::workload::Workload;
use crate::config::Config;
use crate::store::Store;
use crate::transport::{JetStream, JetStreamSettings};

/// The four configurations of each mode, in the order `Report::shared`
/// takes them: (hosts, shared).
fn configurations(hosts: usize) -> [(usize, bool); 4] {
    [(1, false), (1, true), (hosts, false), (hosts, true)]
}

/// What the matrix runs.
pub struct Matrix<'a> {
    /// Settings and policies.
    pub config: &'a Arc<Config>,
    /// The server.
    pub url: &'a str,
    /// Where each run's stores go.
    pub dir: &'a Path,
    /// Builds a host on a store (the plugins and subscription of the run).
    pub host: &'a dyn Fn(Store, Workload) -> Host,
    /// Hosts of the many-host runs.
    pub hosts: usize,
    /// Runs of each configuration.
    pub runs: usize,
    /// Messages per run.
    pub messages: usize,
}

impl Matrix<'_> {
    /// Runs every mode (with `none` first) in the four configurations.
    pub async fn run(&self, modes: &[StateMode], report: &mut Report) -> anyhow::Result<()> {
        let drain = Mode::Drain {
            messages: self.messages,
        };
        for mode in StateMode::with_baseline(modes) {
            let mut results: [Vec<RunReport>; 4] = Default::default();
            for (slot, (hosts, shared)) in configurations(self.hosts).into_iter().enumerate() {
                let tag = format!(
                    "{}:{hosts}h:{}",
                    mode.name(),
                    if shared { "shared" } else { "local" }
                );
                for i in 0..self.runs {
                    let dir = self.dir.join(format!("{tag}-{i}").replace(':', "-"));
                    let (run, check) = self.once(mode, hosts, shared, &dir, drain).await?;
                    report.run(&tag, drain, &run);
                    report.state_check(&tag, check);
                    results[slot].push(run);
                }
            }
            report.shared(mode, self.hosts, &results);
        }
        Ok(())
    }

    /// One run of `mode` on `hosts` hosts, and its state check.
    async fn once(
        &self,
        mode: StateMode,
        hosts: usize,
        shared: bool,
        dir: &Path,
        drain: Mode,
    ) -> anyhow::Result<(RunReport, Result<String, String>)> {
        let settings = JetStreamSettings {
            url: self.url.to_owned(),
            shared_state: shared,
            ..self.config.nats.clone().unwrap_or_default()
        };
        let mut members = Vec::with_capacity(hosts);
        let mut transports = Vec::with_capacity(hosts);
        let mut stores = Vec::with_capacity(hosts);
        for h in 0..hosts {
            let store = super::open(self.config, &dir.join(format!("host{h}")), true)?;
            let js = JetStream::connect(settings.clone(), store.clone())
                .await
                .with_context(|| format!("connecting to JetStream at {}", self.url))?;
            if shared && h == 0 {
                // On the bench's own server only (`bench::run` refuses a
                // configured one).
                js.purge_shared_keys(PLUGIN).await?;
            }
            let remote = js.shared_state();
            members.push((self.host)(store.clone(), Workload::State(mode)));
            transports.push((js, remote));
            stores.push(store);
        }
        let stop = CancellationToken::new();
        let relays: Vec<_> = transports
            .iter()
            .map(|(js, _)| {
                let (js, stop) = (js.clone(), stop.clone());
                tokio::spawn(async move { js.relay(stop).await })
            })
            .collect();
        let first = transports.first().cloned();
        let run = drive::run_hosts(&members, transports, drain).await;
        stop.cancel();
        for relay in relays {
            let _ = tokio::time::timeout(Duration::from_secs(10), relay).await;
        }
        let run = run?;
        let tally = match first {
            Some((js, Some(remote))) => {
                let stored = js.shared_keys(PLUGIN).await?;
                Tally::of_shared(remote.as_ref(), mode, self.messages, stored).await?
            }
            _ => Tally::of_stores(&stores).await?,
        };
        Ok((run, mode.judge(&tally, self.messages)))
    }
}

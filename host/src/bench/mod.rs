//! `sluice bench`: drives messages through a real in-process host (the
//! store, runtime, registry and pumps `sluice run` uses) on the embedded
//! queue and on JetStream, and measures, in the same run, the baselines its
//! figures are judged against. In the spirit of `nats bench`: one command,
//! a few lines of numbers, each next to its target.
//!
//! Why in-process rather than driving the `sluice` binary: timestamps can
//! then be taken where the work happens (see `probe.rs`), and the host's
//! memory is this process's memory. What runs is the production code path;
//! only the transport is wrapped to time its `settle`.
//!
//! Files, one concept each: `workload.rs` (the messages and how a run
//! proves each was handled once), `state.rs` (`--state`: the same messages
//! with and without state), `drive.rs` (backlog drain and
//! steady-state runs, with or without spans), `otlp.rs` (the receiver
//! traced drains export to), `pages.rs` (the dashboard's requests on a
//! big store), `channels.rs` (several busy channels at once: RSS
//! and throughput), `probe.rs` (post -> handled timestamps),
//! `shared.rs` (`--state --hosts N`: state shared by several hosts on
//! JetStream against one host, on and off), `baseline.rs` (raw JetStream publish and consume + ack, sandbox vs
//! native call), `post.rs` (the `sluice post` command from stdin),
//! `swap.rs` (hot reload swap latency), `natsd.rs` (a throwaway
//! nats-server), `stats.rs` (percentiles, RSS), `report.rs` (the
//! printed lines and the table of figures).
//!
//! This is an edge like `cli`, so errors are `anyhow`.

mod baseline;
mod channels;
mod drive;
mod flow;
mod natsd;
mod otlp;
mod pages;
mod post;
mod probe;
mod report;
mod shared;
mod state;
mod stats;
mod swap;
mod workload;

pub use state::StateMode;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::message::{Message, MessageKind, new_id};
use crate::registry;
use crate::runtime::{PluginKind, Runtime};
use crate::store::{Store, StoreOptions};
use crate::telemetry::{OtelSettings, Spans};
use crate::transport::{Embedded, JetStream, JetStreamSettings, Subscription};

use drive::{Host, Mode, RunReport};
use report::Report;
use workload::{AMOUNTS_PLUGIN, PY_AMOUNTS_PLUGIN, Workload};

/// Which transports to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// The embedded SQLite queue only.
    Embedded,
    /// JetStream only.
    Jetstream,
    /// Both (JetStream is skipped, with a note, when no server is at hand).
    Both,
}

/// `sluice bench` options. `--data DIR` (global) keeps the run's databases
/// there instead of a temp dir; `--nats URL` (global) uses that server
/// instead of starting a throwaway `nats-server -js`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Handler plugin: a .wasm path, or a name looked up in --plugins and
    /// target/plugins/test.
    #[arg(long, default_value = AMOUNTS_PLUGIN, value_name = "PATH_OR_NAME")]
    pub plugin: String,
    /// The same request body for every message [default: for bench-amounts
    /// and py-bench-amounts message i is {"id": i, "amount": i % 100, "note": "hello"}; for
    /// test-counter {"amount":1}; else {}].
    #[arg(long, value_name = "JSON")]
    pub body: Option<String>,
    /// Messages per backlog drain (and for the raw JetStream baseline).
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub messages: usize,
    /// Backlog drains (and raw baselines) per transport; the table shows
    /// their medians.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub runs: usize,
    /// Transports to drive.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    pub transport: Which,
    /// Steady-state phase after the drains: this many messages/s offered
    /// for --duration (0: skip).
    #[arg(long, default_value_t = 10_000, value_name = "MSGS_PER_S")]
    pub rate: u32,
    /// How long the steady-state phase offers messages.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Jobs of the handler running at once (overrides the config's policy).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Sandboxed calls timed for the sandbox-cost baseline (0: skip).
    #[arg(long, default_value_t = 5_000, value_name = "N")]
    pub sandbox_calls: usize,
    /// Hot reload swaps timed (0: skip).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub swaps: usize,
    /// Skip the traced drains (by default each embedded drain is followed
    /// by one with spans exported over OTLP to a receiver in this process,
    /// pricing `[otel]` on against off in the same run).
    #[arg(long)]
    pub no_traces: bool,
    /// Price every dashboard page with this many jobs in the store (filled
    /// straight through SQL), against the same pages with 1,000 (0: skip).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub dashboard_jobs: usize,
    /// Also time the `sluice post` command piping --messages lines from
    /// stdin, on each transport (to channel `bench.post`, which nothing
    /// consumes; purged from JetStream afterwards).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub post: bool,
    /// Instead of the usual figures: drain the same messages through
    /// `test-state` doing this with state (comma separated: hot, spread,
    /// add), each against a run without state (`none`) in the same run.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "MODES")]
    pub state: Vec<StateMode>,
    /// With --state on JetStream: run each mode on one host and on this
    /// many hosts competing for the same messages, with `[nats]
    /// shared_state` off and on (four configurations), and print the
    /// ratios (1: one host, shared state as the config says).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub hosts: usize,
    /// Instead of the runs above: drain --messages on the first channel of
    /// each of these handler plugins at once (comma-separated paths or
    /// names; `default`: bench-amounts,test-flaky,test-lanes,test-spin),
    /// then the first alone; prints throughput, peak and idle RSS.
    #[arg(long, value_name = "PLUGINS")]
    pub channels: Option<String>,
    /// Instead of the usual figures: drain --messages on the embedded
    /// queue without flow rules and with a concurrency key on every
    /// message (`/id`, one job per key at once), --runs each, and print
    /// the ratio (bench/flow.rs).
    #[arg(long)]
    pub flow: bool,
}

/// Where the `sluice post` runs post: a channel nothing handles.
const POST_CHANNEL: &str = "bench.post";

/// Runs the benchmark and prints its report. `data`: the `--data` flag.
pub async fn run(mut config: Config, data: Option<PathBuf>, args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.messages > 0, "--messages must be at least 1");
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    if let Some(n) = args.concurrency {
        anyhow::ensure!(n > 0, "--concurrency must be at least 1");
        config.policy.concurrency = n;
        for p in config.plugins.values_mut() {
            p.policy.concurrency = n;
        }
    }
    anyhow::ensure!(args.hosts > 0, "--hosts must be at least 1");
    anyhow::ensure!(
        args.hosts == 1 || (!args.state.is_empty() && args.transport != Which::Embedded),
        "--hosts compares hosts sharing state on JetStream: it needs --state and a --transport with jetstream"
    );
    let mut args = args;
    if !args.state.is_empty() {
        anyhow::ensure!(args.body.is_none(), "--state makes the bodies; drop --body");
        if args.plugin == AMOUNTS_PLUGIN {
            args.plugin = "test-state".into();
        }
    }
    let work = WorkDir::new(data)?;
    let runtime = Runtime::with_cache(config.runtime.clone(), work.path.join("cache"))?;
    if let Some(list) = &args.channels {
        let list = if list == "default" {
            channels::DEFAULT_PLUGINS
        } else {
            list.as_str()
        };
        let paths = list
            .split(',')
            .map(|name| find_plugin(name.trim(), &config.plugins_dir))
            .collect::<anyhow::Result<Vec<_>>>()?;
        return channels::run(
            Arc::new(config),
            &runtime,
            &paths,
            args.messages,
            &work.path,
        )
        .await;
    }
    let path = find_plugin(&args.plugin, &config.plugins_dir)?;
    // Cold load: the cache dir is new, so this compiles.
    let compile_started = std::time::Instant::now();
    let plugin = registry::load_file(&runtime, &config, &path)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let load = load_times(
        &config,
        &path,
        &work.path.join("cache"),
        compile_started.elapsed(),
    )
    .await?;
    let info = plugin.info().clone();
    if info.kind != PluginKind::Handler {
        bail!("{} is a mapper; bench needs a handler", path.display());
    }
    let Some(channel) = info.channels.first().cloned() else {
        bail!("{} handles no channel", path.display());
    };
    if !args.state.is_empty() {
        anyhow::ensure!(
            info.name == "test-state",
            "--state drives the test-state plugin, not {}",
            info.name
        );
    }
    let workload = match &args.body {
        Some(body) => Workload::Fixed(body.clone()),
        None if !args.state.is_empty() => Workload::State(StateMode::None),
        None if [AMOUNTS_PLUGIN, PY_AMOUNTS_PLUGIN].contains(&info.name.as_str()) => {
            Workload::Amounts
        }
        None if info.name == "test-counter" => Workload::Fixed(r#"{"amount":1}"#.into()),
        None => Workload::Fixed("{}".into()),
    };
    let set = registry::compose(&[registry::Entry {
        path: path.clone(),
        plugin: Some(plugin.clone()),
        error: None,
    }]);
    let policy = config.policy_for(&info.name);
    let config = Arc::new(config);
    let mut report = Report::new();
    report.header(
        &info,
        &channel,
        &workload.describe(),
        &args,
        &policy,
        &config,
    );
    report.load(&load);
    let host_with = |store: Store, workload: Workload| Host {
        store,
        set: set.clone(),
        sub: Subscription {
            channel: channel.clone(),
            consumer: info.name.clone(),
        },
        config: config.clone(),
        workload,
        spans: None,
    };
    let host = |store: Store| host_with(store, workload.clone());
    if args.flow {
        let host_of = |store: Store, config: Arc<Config>| Host {
            config,
            ..host(store)
        };
        flow::run(
            host_of,
            &config,
            &info.name,
            &work.path,
            (args.messages, args.runs),
            &mut report,
        )
        .await?;
        drop(plugin);
        return report.finish();
    }
    if !args.state.is_empty() {
        let drain = Mode::Drain {
            messages: args.messages,
        };
        let modes = StateMode::with_baseline(&args.state);
        let mut transports = Vec::new();
        if args.transport != Which::Jetstream {
            transports.push(("embedded", None));
        }
        let mut server = None;
        if args.transport != Which::Embedded {
            match nats_url(&config, &work.path, args.transport) {
                Ok((_, None)) if args.hosts > 1 => bail!(
                    "--hosts empties plugin test-state's keys in the shared state stream (SLUICE_STATE) between runs, so it runs only on a nats-server it starts itself, never on the configured [nats] server: run it without [nats] and --nats"
                ),
                Ok((url, s)) => {
                    server = s;
                    transports.push(("jetstream", Some(url)));
                }
                Err(why) if args.transport == Which::Both => report.skipped("jetstream", &why),
                Err(why) => return Err(why),
            }
        }
        // Several hosts: JetStream runs as the matrix below instead.
        let shared_url = match transports.last() {
            Some((_, Some(_))) if args.hosts > 1 => transports.pop().and_then(|(_, url)| url),
            _ => None,
        };
        for (transport, url) in transports {
            let mut baseline: Vec<RunReport> = Vec::new();
            for mode in &modes {
                let tag = format!("{transport}:{}", mode.name());
                let mut runs = Vec::new();
                for i in 0..args.runs {
                    let dir = work.path.join(format!("{transport}-{}-{i}", mode.name()));
                    let store = open(&config, &dir, url.is_some())?;
                    let host = host_with(store.clone(), Workload::State(*mode));
                    let run = match &url {
                        None => {
                            let transport = Embedded::new(store.clone(), config.poll_interval);
                            drive::run(&host, transport, drain).await?
                        }
                        Some(url) => {
                            jetstream_run(&config, url, &host, store.clone(), drain).await?
                        }
                    };
                    report.run(&tag, drain, &run);
                    report.state_check(&tag, mode.check(&store, args.messages).await?);
                    runs.push(run);
                }
                if *mode == StateMode::None {
                    baseline = runs;
                } else {
                    report.state(transport, *mode, &runs, &baseline);
                }
            }
        }
        if let Some(url) = shared_url {
            let matrix = shared::Matrix {
                config: &config,
                url: &url,
                dir: &work.path.join("shared"),
                host: &host_with,
                hosts: args.hosts,
                runs: args.runs,
                messages: args.messages,
            };
            matrix.run(&args.state, &mut report).await?;
        }
        drop(server);
        drop(plugin);
        return report.finish();
    }
    let steady = (args.rate > 0).then_some(Mode::Steady {
        rate: args.rate,
        duration: args.duration,
    });
    let drain = Mode::Drain {
        messages: args.messages,
    };
    let modes = || std::iter::repeat_n(drain, args.runs).chain(steady);

    if args.transport != Which::Jetstream {
        let mut drains = Vec::new();
        let mut steady_run = None;
        let traced = match args.no_traces {
            true => None,
            false => Some(Traced::start().await?),
        };
        let mut traced_drains = Vec::new();
        for (i, mode) in modes().enumerate() {
            let store = open(&config, &work.path.join(format!("embedded-{i}")), false)?;
            let transport = Embedded::new(store.clone(), config.poll_interval);
            let run = drive::run(&host(store), transport, mode).await?;
            report.run("embedded", mode, &run);
            match mode {
                Mode::Drain { .. } => drains.push(run),
                Mode::Steady { rate, .. } => steady_run = Some((rate, run)),
            }
            // Right after its untraced twin, so drift hits both alike.
            if let (Mode::Drain { .. }, Some(t)) = (mode, &traced) {
                let store = open(&config, &work.path.join(format!("traced-{i}")), false)?;
                let transport = Embedded::new(store.clone(), config.poll_interval);
                let traced_host = Host {
                    spans: Some(t.spans.clone()),
                    ..host(store)
                };
                let run = drive::run(&traced_host, transport, mode).await?;
                report.run("traced", mode, &run);
                traced_drains.push(run);
            }
        }
        report.drains("embedded", &drains);
        if let Some(t) = traced {
            let exported = t.finish().await;
            report.traced(&drains, &traced_drains, exported);
        }
        if let Some((rate, run)) = steady_run {
            report.steady("embedded", rate, &run);
        }
        if args.post {
            let dir = work.path.join("post-embedded");
            let r = post::run(&dir, None, POST_CHANNEL, &workload, args.messages).await?;
            report.post("embedded", &r);
        }
    }

    if args.transport != Which::Embedded {
        match nats_url(&config, &work.path, args.transport) {
            Ok((url, server)) => {
                let mut drains = Vec::new();
                let mut steady_run = None;
                for (i, mode) in modes().enumerate() {
                    let store = open(&config, &work.path.join(format!("jetstream-{i}")), true)?;
                    let run =
                        jetstream_run(&config, &url, &host(store.clone()), store, mode).await?;
                    report.run("jetstream", mode, &run);
                    match mode {
                        Mode::Drain { .. } => drains.push(run),
                        Mode::Steady { rate, .. } => steady_run = Some((rate, run)),
                    }
                }
                report.drains("jetstream", &drains);
                let mut raws = Vec::new();
                for _ in 0..args.runs {
                    let r = baseline::raw_jetstream(&url, &workload, args.messages).await?;
                    report.raw(args.messages, &r);
                    raws.push(r);
                }
                report.raws(args.messages, &raws);
                if let Some((rate, run)) = steady_run {
                    report.steady("JetStream", rate, &run);
                }
                if args.post {
                    let dir = work.path.join("post-jetstream");
                    let r =
                        post::run(&dir, Some(&url), POST_CHANNEL, &workload, args.messages).await;
                    post::purge(&url, POST_CHANNEL).await?;
                    report.post("jetstream", &r?);
                }
                drop(server);
            }
            Err(why) if args.transport == Which::Both => report.skipped("jetstream", &why),
            Err(why) => return Err(why),
        }
    }

    if args.dashboard_jobs > 0 {
        let mut stores = Vec::new();
        for jobs in [pages::BASELINE_JOBS, args.dashboard_jobs] {
            let dir = work.path.join(format!("pages-{jobs}"));
            let r = pages::run(&config, &dir, jobs, 20).await?;
            report.pages_run(&r);
            stores.push(r);
        }
        report.pages(&stores[0], &stores[1]);
    }

    if args.sandbox_calls > 0 {
        let request = crate::pump::passthrough(&Message {
            id: new_id(),
            channel: channel.clone(),
            kind: MessageKind::Command,
            headers: Vec::new(),
            body: workload.body(0),
        })
        .map_err(|e| anyhow::anyhow!("the request body: {e:?}"))?;
        let r = baseline::sandbox(&plugin, &channel, &request, &workload, args.sandbox_calls).await;
        report.sandbox(&r);
    }

    if args.swaps > 0 {
        let dir = path.parent().unwrap_or(Path::new("."));
        let builds = ["test-version-1", "test-version-2"]
            .map(|n| find_plugin(n, dir).or_else(|_| find_plugin(n, &config.plugins_dir)));
        match builds {
            [Ok(v1), Ok(v2)] => {
                let r = swap::run(
                    &runtime,
                    &config,
                    &work.path.join("swap"),
                    &v1,
                    &v2,
                    args.swaps,
                )
                .await?;
                report.swap(args.swaps, &r);
            }
            _ => report.skipped(
                "reload",
                &anyhow::anyhow!("test-version-1/2.wasm not found (scripts/build-plugins)"),
            ),
        }
    }
    drop(plugin);
    report.finish()
}

/// Cold-load figures: the file's size, the compile that just happened, and
/// a load from the compile cache by a second runtime (what a daemon restart
/// or a swap back to a known version costs).
async fn load_times(
    config: &Config,
    path: &Path,
    cache: &Path,
    compiled: Duration,
) -> anyhow::Result<report::LoadReport> {
    let bytes = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let runtime = Runtime::with_cache(config.runtime.clone(), cache.to_path_buf())?;
    let started = std::time::Instant::now();
    registry::load_file(&runtime, config, path)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(report::LoadReport {
        bytes,
        compiled,
        cached: started.elapsed(),
    })
}

/// The traced drains' exporter and the receiver it sends to.
struct Traced {
    sink: otlp::Sink,
    spans: Arc<Spans>,
}

impl Traced {
    async fn start() -> anyhow::Result<Traced> {
        let sink = otlp::Sink::start().await?;
        let settings = OtelSettings {
            endpoint: sink.endpoint.clone(),
            service_name: "sluice-bench".into(),
        };
        // Its HTTP client runs a runtime of its own: built off this one.
        let spans = tokio::task::spawn_blocking(move || Spans::start(&settings)).await??;
        Ok(Traced {
            sink,
            spans: Arc::new(spans),
        })
    }

    /// Flushes the exporter; the spans the receiver got.
    async fn finish(self) -> u64 {
        let spans = self.spans;
        let _ = tokio::task::spawn_blocking(move || spans.shutdown()).await;
        self.sink.spans()
    }
}

/// One JetStream run: connect the transport to `store`, run the outbox
/// relay alongside, drive, stop the relay.
async fn jetstream_run(
    config: &Config,
    url: &str,
    host: &Host,
    store: Store,
    mode: Mode,
) -> anyhow::Result<drive::RunReport> {
    let settings = JetStreamSettings {
        url: url.to_owned(),
        // This run keeps state in the host's SQLite (`--hosts` measures
        // the shared store, off and on).
        shared_state: false,
        ..config.nats.clone().unwrap_or_default()
    };
    let js = JetStream::connect(settings, store)
        .await
        .with_context(|| format!("connecting to JetStream at {url}"))?;
    let stop = CancellationToken::new();
    let relay = tokio::spawn({
        let (js, stop) = (js.clone(), stop.clone());
        async move { js.relay(stop).await }
    });
    let run = drive::run(host, js, mode).await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), relay).await;
    run
}

/// The server to use: `--nats`, else a throwaway one.
fn nats_url(
    config: &Config,
    dir: &Path,
    which: Which,
) -> anyhow::Result<(String, Option<natsd::NatsServer>)> {
    if let Some(n) = &config.nats {
        return Ok((n.url.clone(), None));
    }
    let server = natsd::NatsServer::start(&dir.join("nats")).with_context(|| match which {
        Which::Both => "no --nats URL given and cannot start nats-server",
        _ => "no --nats URL given",
    })?;
    Ok((server.url(), Some(server)))
}

fn open(config: &Config, dir: &Path, outbox: bool) -> anyhow::Result<Store> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let options = StoreOptions {
        outbox,
        ..config.store.clone()
    };
    Ok(Store::open(&dir.join("sluice.db"), &options)?)
}

/// A path as given, else `<dir>/<name>.wasm`, else
/// `target/plugins/test/<name>.wasm`.
fn find_plugin(name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let file = format!("{name}.wasm");
    let candidates = [
        PathBuf::from(name),
        dir.join(&file),
        Path::new("target/plugins/test").join(&file),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "no plugin {name:?} (looked for {}); build them with scripts/build-plugins",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Where a run keeps its databases, caches and server: `--data` (kept), or
/// a temp dir removed at the end.
struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl WorkDir {
    fn new(data: Option<PathBuf>) -> anyhow::Result<WorkDir> {
        let (path, remove) = match data {
            Some(d) => (d.join(format!("bench-{}", new_id())), false),
            None => (
                std::env::temp_dir().join(format!("sluice-bench-{}", new_id())),
                true,
            ),
        };
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir { path, remove })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

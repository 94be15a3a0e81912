//! `sluice run`: open the store, load the plugins, start one pump per
//! subscription, and on shutdown drain them.
//!
//! Shutdown is two tokens passed in by the caller (`main` wires them to
//! signals): `shutdown` stops pulling and starts the drain period;
//! `hard_stop` (the drain period ran out, or a second signal) interrupts the
//! guests still running and hands their jobs back unrun. Nothing in flight is
//! dropped silently.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::cron;
use crate::message::now_ms;
use crate::pump::{self, Control, Deps};
use crate::registry::{PluginSet, Registry};
use crate::reload;
use crate::runtime::{Runtime, RuntimeError};
use crate::store::{Store, StoreError, StoreOptions};
use crate::supervise::supervised;
use crate::transport::{Embedded, JetStream, Subscription, Transport, TransportError};

/// How long a start waits to apply the cancels other hosts made before
/// its pumps take deliveries.
const CANCEL_CATCH_UP: Duration = Duration::from_secs(10);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Another daemon holds the data directory.
    #[error(
        "data directory {dir} is in use by another sluice daemon ({holder}); stop it or use --data"
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// What the lock file says about its holder.
        holder: String,
    },
    /// The data directory cannot be created or locked.
    #[error("cannot use data directory {dir}: {reason}")]
    DataDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine could not be built.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The plugins directory is unusable.
    #[error("{0}")]
    Plugins(String),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The span exporter could not start.
    #[error(transparent)]
    Otel(#[from] crate::telemetry::OtelError),
    /// The HTTP API could not start.
    #[error(transparent)]
    Api(#[from] crate::api::ServeError),
    /// A `[[cron]]` entry cannot run with the loaded plugins.
    #[error("{0}")]
    Cron(String),
    /// A task the daemon cannot restart in place ended while it ran; the
    /// daemon drained and stopped so its supervisor (systemd, ...) starts
    /// it afresh rather than leaving it running half-dead.
    #[error("the {0} stopped while the daemon ran; the daemon stopped too (see the log above)")]
    TaskFailed(&'static str),
}

/// Holds the data directory for one daemon; released when dropped (and by
/// the OS if the process dies).
pub struct DataLock {
    _file: File,
}

impl DataLock {
    /// Locks `dir/sluice.lock`, creating `dir` if needed.
    pub fn acquire(dir: &Path) -> Result<DataLock, RunError> {
        let err = |reason: String| RunError::DataDir {
            dir: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        let path = dir.join("sluice.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| err(format!("{}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(RunError::Locked {
                    dir: dir.to_path_buf(),
                    holder: holder.trim().to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(err(e.to_string())),
        }
        file.set_len(0).map_err(|e| err(e.to_string()))?;
        let _ = write!(file, "pid {}", std::process::id());
        Ok(DataLock { _file: file })
    }
}

/// Refuses a data directory that is the plugins directory or inside it:
/// the database and the compile cache would sit where deploy tools (and
/// whoever may drop plugins) write, and the watcher would scan them.
fn check_dirs(config: &Config) -> Result<(), RunError> {
    let Ok(plugins) = config.plugins_dir.canonicalize() else {
        // A missing plugins dir is reported when it is read.
        return Ok(());
    };
    let data = resolve(&config.data_dir);
    if data.starts_with(&plugins) {
        return Err(RunError::DataDir {
            dir: config.data_dir.clone(),
            reason: format!(
                "it is inside the plugins directory {}; put the data directory elsewhere",
                plugins.display()
            ),
        });
    }
    Ok(())
}

/// `path` made absolute with its symlinks resolved as far as it exists
/// (the rest, not created yet, appended as written).
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (
            existing.file_name().map(ToOwned::to_owned),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = if parent.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    parent.to_path_buf()
                };
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Runs the daemon until `shutdown`, then drains: on JetStream when the
/// config names a NATS server, else on the embedded queue.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) -> Result<(), RunError> {
    check_dirs(&config)?;
    let _lock = DataLock::acquire(&config.data_dir)?;
    let store_options = StoreOptions {
        // Off the embedded queue, posts leave through the outbox.
        outbox: config.nats.is_some(),
        ..config.store.clone()
    };
    let store = Store::open(&config.database_path(), &store_options)?;
    let recovered = store.recover_running().await?;
    if recovered > 0 {
        tracing::warn!(
            recovered,
            "requeued jobs left running by a previous host that stopped abruptly"
        );
    }
    // Hot reload: the watcher does the first load (logging each plugin) and
    // later swaps; compiled components are cached in DATA_DIR/cache.
    let runtime = Runtime::with_cache(config.runtime.clone(), reload::cache_dir(&config))?;
    let (watcher, set) = reload::Watcher::load(runtime, &config)
        .await
        .map_err(RunError::Plugins)?;
    let config = Arc::new(config);
    // The API's address is bound before anything may wait (a taken port
    // fails the start); until the daemon can serve, the API answers
    // `/healthz` (alive) and `/readyz` (not ready) and 503 to the rest.
    let api = match &config.http {
        Some(http) => Some(crate::api::listen(http, shutdown.clone()).await?),
        None => None,
    };
    let subscriptions = set.subscriptions();
    check_cron_channels(&config.cron, &subscriptions)?;
    let Some(settings) = config.nats.clone() else {
        let transport = Embedded::new(store.clone(), config.poll_interval);
        transport.register(&subscriptions).await?;
        let ticks = Ticks::Embedded(cron::StoreLedger::new(
            store.clone(),
            Some(transport.clone()),
        ));
        let stopped = serve(
            transport, None, ticks, api, store, config, watcher, set, shutdown, hard_stop,
        )
        .await;
        tracing::info!("sluice stopped");
        return stopped;
    };
    let set_up = connect(&settings, &store, &subscriptions, api.as_ref(), &shutdown).await?;
    let Some((js, cluster)) = set_up else {
        tracing::info!("sluice stopped before JetStream was set up");
        if let Some(api) = api {
            api.finish().await;
        }
        return Ok(());
    };
    // The relay outlives the pumps so the last commits' posts go out too.
    let relay_stop = CancellationToken::new();
    let relay = tokio::spawn({
        let (js, stop) = (js.clone(), relay_stop.clone());
        supervised("outbox relay".into(), stop.clone(), move || {
            let (js, stop) = (js.clone(), stop.clone());
            async move { js.relay(stop).await }
        })
    });
    let shared = Some((js.clone(), cluster));
    let ticks = Ticks::JetStream(js.clone(), settings.replicas);
    let stopped = serve(
        js, shared, ticks, api, store, config, watcher, set, shutdown, hard_stop,
    )
    .await;
    relay_stop.cancel();
    if tokio::time::timeout(Duration::from_secs(10), relay)
        .await
        .is_err()
    {
        tracing::warn!("outbox relay did not finish in 10s; unsent rows go out on the next start");
    }
    tracing::info!("sluice stopped");
    stopped
}

/// A `[[cron]]` entry whose channel no loaded handler lists is refused at
/// start (a typo would otherwise post ticks nobody runs), naming the entry.
fn check_cron_channels(
    entries: &[cron::CronEntry],
    subscriptions: &[Subscription],
) -> Result<(), RunError> {
    for e in entries {
        if !subscriptions.iter().any(|s| s.channel == e.channel) {
            return Err(RunError::Cron(format!(
                "[[cron]] {}: channel {} is not listed by any loaded handler (loaded handlers list: {})",
                crate::names::quote(&e.name),
                crate::names::quote(&e.channel),
                {
                    let mut channels: Vec<&str> =
                        subscriptions.iter().map(|s| s.channel.as_str()).collect();
                    channels.dedup();
                    if channels.is_empty() {
                        "none".to_owned()
                    } else {
                        channels.join(", ")
                    }
                }
            )));
        }
    }
    Ok(())
}

/// Where the cron ticker keeps its records (see `crate::cron`).
#[derive(Clone)]
enum Ticks {
    /// In the store, a tick's jobs in the same transaction.
    Embedded(cron::StoreLedger),
    /// In the `SLUICE_CRON` bucket (opened by the ticker: replicas).
    JetStream(JetStream, usize),
}

/// The cron ticker until `stop`; on JetStream it first opens its bucket,
/// trying again while NATS cannot.
async fn tick(ticks: Ticks, config: Arc<Config>, control: Arc<Control>, stop: CancellationToken) {
    let entries = Arc::new(config.cron.clone());
    match ticks {
        Ticks::Embedded(ledger) => cron::run(entries, ledger, control, stop).await,
        Ticks::JetStream(js, replicas) => {
            let ledger = loop {
                match cron::JetStreamLedger::open(js.clone(), replicas).await {
                    Ok(ledger) => break ledger,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot open the cron bucket yet; trying again");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            () = stop.cancelled() => return,
                        }
                    }
                }
            };
            cron::run(entries, ledger, control, stop).await;
        }
    }
}

/// Longest pause between two attempts at setting up JetStream.
const CONNECT_PAUSE_MAX: Duration = Duration::from_secs(10);

/// Connects to JetStream and sets up what this host needs there (the
/// streams, its consumers, the shared buckets). While the failure may heal
/// (nats-server not up yet, a cluster electing leaders, a stream
/// unavailable for a while) it tries again after a pause that doubles up
/// to [`CONNECT_PAUSE_MAX`], one log line per attempt; an error that cannot
/// heal (credentials refused, a stream whose settings conflict) ends the
/// start. None: `shutdown` came first.
async fn connect(
    settings: &crate::transport::JetStreamSettings,
    store: &Store,
    subscriptions: &[Subscription],
    api: Option<&crate::api::Serving>,
    shutdown: &CancellationToken,
) -> Result<Option<(JetStream, Cluster)>, RunError> {
    let mut pause = Duration::from_millis(250);
    for attempt in 1u32.. {
        let (step, tried) = {
            let mut step = "connecting to NATS";
            let tried = tokio::select! {
                tried = async {
                    let js = JetStream::connect(settings.clone(), store.clone())
                        .await
                        .map_err(TransportError::from)?;
                    if settings.shared_state {
                        // Before any pump: no job reads the shared store
                        // before this host's keys are in it.
                        step = "moving this host's plugin state to the shared store";
                        js.move_local_state().await.map_err(TransportError::from)?;
                    }
                    step = "creating consumers";
                    js.register(subscriptions).await?;
                    step = "opening the shared buckets";
                    // The work stream's own max_age, which may not be the config's.
                    let cluster = Cluster::open(&js, settings.replicas, js.max_age(), settings.shared_state)
                        .await
                        .map_err(crate::api::ServeError::Cluster)?;
                    Ok::<_, RunError>((js, cluster))
                } => tried,
                () = shutdown.cancelled() => return Ok(None),
            };
            (step, tried)
        };
        let error = match tried {
            Ok(set_up) => {
                if attempt > 1 {
                    tracing::info!(attempts = attempt, "JetStream set up");
                }
                return Ok(Some(set_up));
            }
            Err(e) => e,
        };
        let heals = match &error {
            RunError::Transport(TransportError::JetStream(e)) => e.heals(),
            RunError::Api(crate::api::ServeError::Cluster(_)) => true,
            _ => false,
        };
        if !heals {
            return Err(error);
        }
        tracing::warn!(attempt, retry_in = ?pause, error = %error, "cannot set up JetStream yet ({step}); trying again");
        if let Some(api) = api {
            api.waiting_for(&format!(
                "{step} (attempt {attempt} failed, see the daemon log)"
            ));
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return Ok(None),
        }
        pause = (pause * 2).min(CONNECT_PAUSE_MAX);
    }
    Ok(None)
}

/// Runs one pump per subscription (registered with the transport
/// already) plus the watcher, pruning and the idle memory release, and on
/// JetStream the shared job view (`shared`: the connection and the
/// cluster's buckets); installs the HTTP API's routes when configured; and
/// on `shutdown` drains them.
#[allow(clippy::too_many_arguments)]
async fn serve<T: Transport>(
    transport: T,
    shared: Option<(JetStream, Cluster)>,
    ticks: Ticks,
    api: Option<crate::api::Serving>,
    store: Store,
    config: Arc<Config>,
    watcher: reload::Watcher,
    set: PluginSet,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) -> Result<(), RunError> {
    let subscriptions = set.subscriptions();
    // A previous run's handler version may have listed channels this one
    // does not.
    let handlers: Vec<String> = set.handlers.keys().cloned().collect();
    transport.retire(&handlers, &subscriptions).await?;
    let (js, cluster) = shared.unzip();
    let runtime = watcher.runtime().clone();
    let deps = Arc::new(Deps {
        store: store.clone(),
        state: crate::state::Ledger::with_remote(
            store.clone(),
            crate::state::DEFAULT_CACHE_BYTES,
            js.as_ref().and_then(JetStream::shared_state),
        ),
        transport,
        registry: Arc::new(Registry::new(set)),
        config: config.clone(),
        control: Arc::new(Control::with_sandbox(runtime.clone())),
    });
    // Spans, when [otel] is set. Built off the async threads: its HTTP
    // client runs a runtime of its own.
    if let Some(otel) = config.otel.clone() {
        let spans = tokio::task::spawn_blocking(move || crate::telemetry::Spans::start(&otel))
            .await
            .map_err(|e| RunError::Plugins(format!("cannot start the span exporter: {e}")))??;
        deps.control.set_spans(Arc::new(spans));
    }
    if let (Some(api), Some(http)) = (&api, &config.http) {
        let state = crate::api::ApiState {
            deps: deps.clone(),
            jetstream: js,
            cluster: cluster.clone(),
        };
        api.ready(Arc::new(state), http);
    }
    // The status board outlives the pumps so the last outcomes are shared.
    let board_stop = CancellationToken::new();
    if cluster.is_some() {
        // A previous process may have been killed between ending a job and
        // sharing it: share what ended lately again (one bounded read).
        let changes = deps.control.subscribe_changes();
        let since = now_ms().saturating_sub(RESHARE_MS);
        match store.recently_ended(since, RESHARE_SCAN).await {
            Ok(ids) => changes.put_back(ids),
            Err(e) => tracing::warn!(error = %e, "cannot read recent outcomes to share them again"),
        }
    }
    let board = cluster.as_ref().map(|c| {
        let changes = deps.control.subscribe_changes();
        let (board, store, stop) = (c.board.clone(), store.clone(), board_stop.clone());
        tokio::spawn(supervised("status board".into(), stop.clone(), move || {
            board
                .clone()
                .run(store.clone(), changes.clone(), stop.clone())
        }))
    });
    tracing::info!(
        plugins_dir = %config.plugins_dir.display(), data_dir = %config.data_dir.display(),
        pumps = subscriptions.len(),
        transport = if config.nats.is_some() { "jetstream" } else { "embedded" },
        "sluice running"
    );
    let tracker = TaskTracker::new();
    // Every long-lived task is supervised: one that ends or panics while
    // the daemon runs is logged and started again (see `supervise`).
    let spawn_pump = {
        let (tracker, deps) = (tracker.clone(), deps.clone());
        let (shutdown, hard_stop) = (shutdown.clone(), hard_stop.clone());
        move |sub: Subscription| {
            let name = format!("pump {} / {}", sub.channel, sub.consumer);
            let (deps, stop, hard_stop) = (deps.clone(), shutdown.child_token(), hard_stop.clone());
            tracker.spawn(supervised(name, stop.clone(), move || {
                pump::run(sub.clone(), deps.clone(), stop.clone(), hard_stop.clone())
            }));
        }
    };
    if let Some(cluster) = &cluster {
        // Cancels made while this host was down apply before it takes a
        // delivery (the watcher below then keeps up with new ones). If the
        // bucket cannot be read now, the watcher catches up shortly after.
        let catch_up = cluster.cancels.catch_up(&store, &deps.control);
        match tokio::time::timeout(CANCEL_CATCH_UP, catch_up).await {
            Ok(Ok(n)) => tracing::debug!(cancels = n, "cancels made elsewhere applied"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot apply the cancels made elsewhere before starting; the cancel watcher applies them shortly")
            }
            Err(_) => {
                tracing::warn!(after = ?CANCEL_CATCH_UP, "reading the cancels made elsewhere took too long; the cancel watcher applies them shortly")
            }
        }
    }
    for sub in subscriptions {
        spawn_pump(sub);
    }
    // Hot reload: a new subscription gets its pump here; existing pumps
    // keep running across swaps. The watcher owns the plugin files' state
    // and cannot be restarted in place: if it ends or panics, the daemon
    // drains and exits non-zero instead of serving without hot reload.
    let watcher_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tracker.spawn({
        let watching = tokio::spawn(watcher.run(deps.clone(), spawn_pump, shutdown.clone()));
        let (failed, shutdown) = (watcher_failed.clone(), shutdown.clone());
        async move {
            let ended = watching.await;
            if !shutdown.is_cancelled() {
                tracing::error!(panicked = ended.is_err(), "the plugin watcher stopped; shutting down (a daemon without it would miss every plugin change)");
                failed.store(true, std::sync::atomic::Ordering::SeqCst);
                shutdown.cancel();
            }
        }
    });
    if let Some(cluster) = &cluster {
        tracker.spawn(supervised("job reconciler".into(), shutdown.clone(), {
            let (board, store, stop) = (cluster.board.clone(), store.clone(), shutdown.clone());
            move || crate::cluster::reconcile(board.clone(), store.clone(), stop.clone())
        }));
        tracker.spawn(supervised("cancel watcher".into(), shutdown.clone(), {
            let (cancels, store, stop) = (cluster.cancels.clone(), store.clone(), shutdown.clone());
            let control = deps.control.clone();
            move || {
                cancels
                    .clone()
                    .watch(store.clone(), control.clone(), stop.clone())
            }
        }));
        // Presence, so a split of state between hosts is never silent.
        tracker.spawn(supervised("host presence".into(), shutdown.clone(), {
            let (hosts, store, stop) = (cluster.hosts.clone(), store.clone(), shutdown.clone());
            let registry = deps.registry.clone();
            move || {
                hosts
                    .clone()
                    .run(store.clone(), registry.clone(), stop.clone())
            }
        }));
    }
    if !config.cron.is_empty() {
        tracker.spawn(supervised("cron ticker".into(), shutdown.clone(), {
            let (config, control, stop) = (config.clone(), deps.control.clone(), shutdown.clone());
            move || tick(ticks.clone(), config.clone(), control.clone(), stop.clone())
        }));
    }
    tracker.spawn(supervised("pruning".into(), shutdown.clone(), {
        let (store, retention, stop) = (store.clone(), config.retention, shutdown.clone());
        move || prune(store.clone(), retention, stop.clone())
    }));
    tracker.spawn(supervised(
        "idle memory release".into(),
        shutdown.clone(),
        {
            let (runtime, stop) = (runtime.clone(), shutdown.clone());
            let quiet = config.runtime.idle_release;
            move || crate::idle::release_when_idle(runtime.clone(), quiet, stop.clone())
        },
    ));
    tracker.close();

    shutdown.cancelled().await;
    tracing::info!(drain_timeout = ?config.drain_timeout, "shutting down: no new work; draining in-flight jobs");
    tokio::select! {
        _ = tracker.wait() => {}
        _ = tokio::time::sleep(config.drain_timeout) => {
            tracing::warn!("drain period over: interrupting in-flight jobs and handing them back");
            hard_stop.cancel();
            tracker.wait().await;
        }
        _ = hard_stop.cancelled() => tracker.wait().await,
    }
    if let Some(api) = api {
        api.finish().await;
    }
    if let Some(board) = board {
        board_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(10), board)
            .await
            .is_err()
        {
            tracing::warn!("job statuses not all shared within 10s");
        }
    }
    // The last jobs' spans go out before exit (bounded).
    if let Some(spans) = deps.control.spans().cloned() {
        let _ = tokio::task::spawn_blocking(move || spans.shutdown()).await;
    }
    if watcher_failed.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(RunError::TaskFailed("plugin watcher"));
    }
    Ok(())
}

/// At start on JetStream, outcomes of the last this many ms are shared
/// with the other hosts again...
const RESHARE_MS: i64 = 15 * 60 * 1000;
/// ... among this many most recently recorded jobs.
const RESHARE_SCAN: usize = 10_000;

/// Deletes finished jobs older than `retention`, once a minute.
async fn prune(store: Store, retention: Duration, shutdown: CancellationToken) {
    loop {
        let cutoff =
            now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        match store.prune(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "pruned finished jobs past retention"),
            Err(e) => tracing::warn!(error = %e, "pruning failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

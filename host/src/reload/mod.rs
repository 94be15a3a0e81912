//! Hot reload: watch the plugins directory and swap plugin versions in
//! while the pumps keep running.
//!
//! Why a polling watcher rather than inotify: a stat of a handful of files
//! every [`POLL`] costs microseconds, works the same on every filesystem a
//! plugins directory ends up on (bind mounts, overlay, NFS, where inotify
//! misses writes made elsewhere), has no event queue to overflow, and the
//! question that matters, "is this write complete?", needs a second look
//! at the file anyway (see `scan.rs`). SIGHUP forces a full rescan at once.
//!
//! What happens to a changed file, all on this module's own task (never on
//! a pump's path):
//! 1. its stat settles, then it is read and hashed; identical content (a
//!    `touch`, a rebuild that produced the same bytes) is not reloaded;
//! 2. it is compiled (or read from the compile cache), linked, described
//!    and validated;
//! 3. a new `PluginSet` is built from every path's plugin by the
//!    registry's rules (unique names, one mapper per channel: a name two
//!    files claim serves from neither) and swapped in with one atomic store
//!    (`Registry::swap`). Calls in flight hold the `Plugin` they started
//!    with and finish on it; the next message gets the new version, and
//!    each job records the version (and content hash) that ran it.
//!
//! A file that fails is logged in one line (path + reason) and recorded as
//! that path's last load error; the version loaded from the same path
//! before keeps serving. A deleted file removes its plugin: a handler's
//! pumps stay alive but idle and the messages stay queued; a mapper's
//! channels pause the same way. Putting the file back resumes them. A
//! handler with a new subscription gets it registered with the transport
//! and a new pump, through the `spawn` callback the daemon passes in;
//! existing pumps are never restarted. The daemon's view (per file: the
//! version serving, the last error) is written to the store after every
//! change for `sluice plugins`.

mod compile;
mod scan;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::message::now_ms;
use crate::pump::Deps;
use crate::registry::{self, FileStatus, PluginSet};
use crate::runtime::{Runtime, sha256_hex};
use crate::store::{PluginFile, ServingPlugin};
use crate::transport::{Subscription, Transport};

use compile::{Done, InFlight};
use scan::{Changes, Slot, Stamp, Step};

/// How often the plugins directory is looked at when nothing is changing.
pub const POLL: Duration = Duration::from_millis(200);

/// Compile cache entries unused for this long (and not in use) are removed
/// at startup.
const CACHE_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where the compile cache lives: `DATA_DIR/cache`.
pub fn cache_dir(config: &Config) -> PathBuf {
    config.data_dir.join("cache")
}

/// Watches one plugins directory and keeps the registry in step with it.
pub struct Watcher {
    runtime: Runtime,
    config: Arc<Config>,
    dir: PathBuf,
    /// Files being compiled (compile.rs).
    loads: InFlight,
    files: BTreeMap<PathBuf, Slot>,
    changes: Changes,
    /// SIGHUP, installed before the first load so a reload request during
    /// startup cannot kill the daemon (SIGHUP's default action).
    hup: Option<Signal>,
    /// Subscriptions that have a pump.
    started: BTreeSet<Subscription>,
    /// Of those, the ones the current set does not list (a handler's new
    /// version dropped the channel, or the handler is gone).
    unlisted: BTreeSet<Subscription>,
    /// The directory could not be read last time (logged once).
    unreadable: bool,
}

/// What one scan did.
#[derive(Debug, Default)]
struct Scan {
    /// The set of serving plugins (or a file's status) changed.
    changed: bool,
}

impl Watcher {
    /// The runtime every version it loads shares.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Loads every plugin file of `config.plugins_dir` and returns the
    /// watcher with the set to serve first. A missing directory is an
    /// error; a bad file is not (it is logged and recorded).
    pub async fn load(runtime: Runtime, config: &Config) -> Result<(Watcher, PluginSet), String> {
        let hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot install the SIGHUP handler; rescans happen by polling only");
                None
            }
        };
        let mut watcher = Watcher {
            runtime,
            config: Arc::new(config.clone()),
            dir: config.plugins_dir.clone(),
            loads: InFlight::default(),
            files: BTreeMap::new(),
            changes: Changes::default(),
            hup,
            started: BTreeSet::new(),
            unlisted: BTreeSet::new(),
            unreadable: false,
        };
        let started = Instant::now();
        let before = watcher.runtime.cache_stats();
        let listing = scan::list(&watcher.dir)?;
        watcher.apply(listing, true).await;
        // Every file compiles at once; each is done or past compile_timeout.
        while watcher.loads.any() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            watcher.collect().await;
        }
        let set = watcher.compose(&PluginSet::default());
        let after = watcher.runtime.cache_stats();
        let keep: Vec<&str> = watcher
            .files
            .values()
            .filter_map(|s| s.hash.as_deref())
            .collect();
        let pruned = watcher.runtime.prune_cache(&keep, CACHE_MAX_AGE);
        tracing::info!(
            dir = %watcher.dir.display(),
            files = watcher.files.len(),
            loaded = watcher.files.values().filter(|s| s.plugin.is_some()).count(),
            rejected = set.errors().len(),
            compiled = after.misses - before.misses,
            from_cache = after.hits - before.hits,
            cache_pruned = pruned,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "plugins directory loaded"
        );
        watcher.started = set.subscriptions().into_iter().collect();
        Ok((watcher, set))
    }

    /// Watches until `shutdown`. `spawn` starts the pump of a subscription
    /// that appeared after startup (it is registered with the transport
    /// first); the subscriptions of the first set are taken to have pumps.
    pub async fn run<T: Transport>(
        mut self,
        deps: Arc<Deps<T>>,
        spawn: impl Fn(Subscription) + Send + Sync + 'static,
        shutdown: CancellationToken,
    ) {
        self.record(&deps, &deps.registry.current()).await;
        tracing::info!(dir = %self.dir.display(), poll_ms = POLL.as_millis() as u64, "watching the plugins directory (SIGHUP: rescan now)");
        loop {
            let wait = if self.changes.any() || self.loads.any() {
                scan::SETTLE
            } else {
                POLL
            };
            let force = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => false,
                _ = recv(&mut self.hup) => {
                    tracing::info!(dir = %self.dir.display(), "SIGHUP: rescanning every plugin file");
                    true
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.tick(&deps, &spawn, force) => {}
            }
        }
    }

    /// One look at the directory; swaps, records and starts pumps as needed.
    async fn tick<T: Transport>(
        &mut self,
        deps: &Deps<T>,
        spawn: &impl Fn(Subscription),
        force: bool,
    ) {
        let listing = match scan::list(&self.dir) {
            Ok(l) => {
                if self.unreadable {
                    tracing::info!(dir = %self.dir.display(), "plugins directory readable again");
                    self.unreadable = false;
                }
                l
            }
            Err(error) => {
                // Most likely a mount hiccup or a directory being replaced:
                // keep serving what is loaded rather than drop everything.
                if !self.unreadable {
                    tracing::error!(%error, "keeping the loaded plugins until the directory is back");
                    self.unreadable = true;
                }
                return;
            }
        };
        let scan = self.apply(listing, force).await;
        if scan.changed {
            let set = self.compose(&deps.registry.current());
            let subs = set.subscriptions();
            let handlers: Vec<String> = set.handlers.keys().cloned().collect();
            deps.registry.swap(set);
            if let Err(e) = deps.transport.retire(&handlers, &subs).await {
                tracing::error!(error = %e, "cannot record which channels the handlers dropped; tried again at the next change");
            }
            self.record(deps, &deps.registry.current()).await;
            self.start_pumps(deps, spawn, subs).await;
        } else if force {
            tracing::info!("rescan done: nothing changed");
        }
    }

    /// Registers and starts the pumps of subscriptions that have none, and
    /// registers again those listed anew after a version had dropped them
    /// (their pump is there; the transport may have retired them).
    async fn start_pumps<T: Transport>(
        &mut self,
        deps: &Deps<T>,
        spawn: &impl Fn(Subscription),
        subs: Vec<Subscription>,
    ) {
        let new: Vec<Subscription> = subs
            .iter()
            .filter(|s| !self.started.contains(*s))
            .cloned()
            .collect();
        let back = subs.iter().filter(|s| self.unlisted.contains(*s)).cloned();
        let register: Vec<Subscription> = new.iter().cloned().chain(back).collect();
        if !register.is_empty()
            && let Err(e) = deps.transport.register(&register).await
        {
            // Not marked started: the next change tries again.
            tracing::error!(error = %e, subscriptions = ?register, "cannot register new subscriptions; their pumps wait for the next change");
            return;
        }
        for sub in new {
            tracing::info!(channel = %sub.channel, handler = %sub.consumer, "new subscription: starting its pump");
            self.started.insert(sub.clone());
            spawn(sub);
        }
        self.unlisted = self
            .started
            .iter()
            .filter(|s| !subs.contains(*s))
            .cloned()
            .collect();
    }

    /// Acts on a listing: removals, then starts loading each changed file,
    /// then takes in the loads that finished (or ran out of time).
    /// `force`: load every file whose content changed or that failed last
    /// time, without waiting for it to settle (startup, SIGHUP).
    async fn apply(&mut self, listing: BTreeMap<PathBuf, Stamp>, force: bool) -> Scan {
        let mut scan = Scan::default();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !listing.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            if let Some(Slot {
                plugin: Some(p), ..
            }) = self.files.remove(&path)
            {
                tracing::warn!(
                    path = %path.display(), plugin = %p.info().name, version = %p.info().version,
                    channels = ?p.info().channels,
                    "plugin file removed: its channels are paused (messages stay queued) until a file provides it again"
                );
            }
            scan.changed = true;
        }
        self.changes.retain(|p| listing.contains_key(p));
        self.loads.retain(|p| listing.contains_key(p));
        let now = Instant::now();
        for (path, stamp) in listing {
            let slot = self.files.get(&path);
            let unchanged = slot.is_some_and(|s| s.stamp == Some(stamp));
            let retry = force && slot.is_some_and(|s| s.error.is_some());
            if unchanged && !retry {
                self.changes.done(&path);
                continue;
            }
            if !force && self.changes.observe(&path, stamp, now) == Step::Wait {
                continue;
            }
            if self.loads.loading(&path, stamp) {
                continue;
            }
            scan.changed |= self.start_load(&path, stamp, force).await;
        }
        scan.changed |= self.collect().await;
        scan
    }

    /// Reads one changed file and starts loading it, unless its bytes are
    /// the ones loaded already. True if a file's status changed (it could
    /// not be read).
    async fn start_load(&mut self, path: &Path, stamp: Stamp, force: bool) -> bool {
        let bytes = match registry::read_plugin_async(path).await {
            Ok(Some(b)) => b,
            // Gone since the listing: the next scan sees it removed.
            Ok(None) => return false,
            Err(e) => return self.reject(path, stamp, None, e, force),
        };
        let hash = sha256_hex(&bytes);
        let slot = self.files.get(path);
        let same = slot.is_some_and(|s| s.hash.as_deref() == Some(hash.as_str()));
        if same && !(force && slot.is_some_and(|s| s.error.is_some())) {
            // Same bytes as before (a touch, an identical rebuild).
            if let Some(s) = self.files.get_mut(path) {
                s.stamp = Some(stamp);
            }
            self.changes.done(path);
            return false;
        }
        let (runtime, config) = (self.runtime.clone(), Arc::clone(&self.config));
        self.loads
            .start(&runtime, &config, path, (stamp, hash, force), bytes);
        false
    }

    /// Takes in the loads that ended. True if the set or a file's status
    /// changed.
    async fn collect(&mut self) -> bool {
        let mut changed = false;
        for done in self.loads.take_done(self.config.compile_timeout).await {
            changed |= self.finish_load(done);
        }
        changed
    }

    /// Records one ended load: the new version for its path, or why not.
    fn finish_load(&mut self, done: Done) -> bool {
        let Done {
            path,
            stamp,
            hash,
            force,
            load_ms,
            result,
        } = done;
        let path = path.as_path();
        let plugin = match result {
            Ok(p) => p,
            Err(e) => return self.reject(path, stamp, Some(hash), e, force),
        };
        let info = plugin.info();
        let previous = self.files.get(path).and_then(|s| s.plugin.clone());
        match &previous {
            Some(old) => tracing::info!(
                path = %path.display(), plugin = %info.name, version = %info.version,
                previous = %old.info().version, hash = short(plugin.hash()),
                load_ms, since_write_ms = stamp.age_ms(), "plugin reloaded: new version serving"
            ),
            None => tracing::info!(
                path = %path.display(), plugin = %info.name, version = %info.version,
                kind = info.kind.as_str(), channels = ?info.channels, hash = short(plugin.hash()),
                load_ms, since_write_ms = stamp.age_ms(), "plugin loaded"
            ),
        }
        self.files.insert(
            path.to_path_buf(),
            Slot {
                stamp: Some(stamp),
                hash: Some(hash),
                plugin: Some(plugin),
                loaded_at: now_ms(),
                error: None,
            },
        );
        self.changes.done(path);
        true
    }

    /// Records a rejected file, unless it may still be being written (then
    /// it is retried later and nothing is logged). Keeps the version that
    /// served from the same path. True if the file's status changed.
    fn reject(
        &mut self,
        path: &Path,
        stamp: Stamp,
        hash: Option<String>,
        error: String,
        force: bool,
    ) -> bool {
        if !force && !self.changes.failed(path, Instant::now()) {
            return false;
        }
        self.changes.done(path);
        let slot = self.files.entry(path.to_path_buf()).or_default();
        slot.stamp = Some(stamp);
        slot.hash = hash;
        match &slot.plugin {
            Some(kept) => tracing::error!(
                path = %path.display(), %error, kept = %format!("{} {}", kept.info().name, kept.info().version),
                "plugin file rejected; the version loaded before keeps serving"
            ),
            None => tracing::error!(path = %path.display(), %error, "plugin rejected"),
        }
        slot.error = Some(error);
        true
    }

    /// The set to serve: every path's plugin and last error, composed by
    /// the registry's rules (a name or mapped channel claimed by two files
    /// serves from neither), plus the channels that lost their mapper since
    /// `previous`. Conflicts are logged when they appear.
    fn compose(&self, previous: &PluginSet) -> PluginSet {
        let entries: Vec<registry::Entry> = self
            .files
            .iter()
            .map(|(path, slot)| registry::Entry {
                path: path.clone(),
                plugin: slot.plugin.clone(),
                error: slot.error.clone(),
            })
            .collect();
        let mut set = registry::compose(&entries);
        for (path, status) in &set.files {
            let conflicted = matches!(status, FileStatus::Failed { .. })
                && self.files.get(path).is_some_and(|s| s.plugin.is_some());
            let new = previous.files.get(path).map(FileStatus::error) != Some(status.error());
            if conflicted && new {
                tracing::error!(path = %path.display(), error = status.error().unwrap_or_default(), "plugin not served");
            }
        }
        set.carry_pauses(previous);
        for channel in &set.paused_channels {
            if !previous.paused_channels.contains(channel) {
                tracing::warn!(%channel, "the channel's mapper was removed: its handlers pause until a mapper is back");
            }
        }
        set
    }

    /// Writes the daemon's view (what `set` serves from each file, and
    /// each file's error) for `sluice plugins`.
    async fn record<T: Transport>(&self, deps: &Deps<T>, set: &PluginSet) {
        let view = self
            .files
            .iter()
            .map(|(path, slot)| PluginFile {
                path: path.display().to_string(),
                serving: slot
                    .plugin
                    .as_ref()
                    .filter(|_| set.files.get(path).and_then(FileStatus::name).is_some())
                    .map(|p| {
                        let (info, limits) = (p.info(), p.limits());
                        ServingPlugin {
                            name: info.name.clone(),
                            version: info.version.clone(),
                            kind: info.kind.as_str().to_owned(),
                            channels: info.channels.clone(),
                            hash: p.hash().to_owned(),
                            fuel: limits.fuel,
                            memory_bytes: limits.memory_bytes,
                            timeout_ms: limits.timeout_ms,
                            asked_fuel: info.limits.fuel,
                            asked_memory_bytes: info.limits.memory_bytes,
                            asked_timeout_ms: info.limits.timeout_ms,
                            loaded_at: slot.loaded_at,
                        }
                    }),
                error: set
                    .files
                    .get(path)
                    .and_then(FileStatus::error)
                    .map(str::to_owned),
                updated_at: 0,
            })
            .collect();
        if let Err(e) = deps.store.record_plugin_files(view).await {
            tracing::warn!(error = %e, "cannot record the plugins view for `sluice plugins`");
        }
    }
}

/// The first 12 hex digits of a content hash, for log lines.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// The next SIGHUP; never, if there is no handler.
async fn recv(hup: &mut Option<Signal>) {
    match hup {
        Some(s) => {
            if s.recv().await.is_none() {
                *hup = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

//! The current set of plugins, behind an `ArcSwap`.
//!
//! Pumps load the current set per message and never wait for a swap; a
//! call that started on one version finishes on it, because it holds that
//! version's [`Plugin`] (an `Arc`). Loading compiles off the pump path, and
//! hot reload (`reload`) builds a whole new set and swaps it in at once, so
//! a pump sees either the old set or the new one, never a mix.
//!
//! Rules checked when a set is built ([`compose`]), each rejection naming
//! the files: plugin names are unique, a channel has at most one mapper. A
//! name (or a mapped channel) claimed by two files is an error for *both*:
//! neither serves until one is removed or renamed. Letting one win would
//! make the winner depend on file names or on which file arrived first, so
//! a new file could take over another plugin's name and its state, and a
//! restart could hand the name to the other file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::Config;
use crate::runtime::{Plugin, PluginKind, Runtime};
use crate::transport::Subscription;

/// What became of one `.wasm` file.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum FileStatus {
    /// Serving as the plugin `name`.
    Loaded {
        /// `describe()` name.
        name: String,
    },
    /// Rejected; `error` says why in one line.
    Failed {
        /// Why.
        error: String,
    },
    /// The file now on disk was rejected (`error`), and the plugin `name`
    /// loaded from this path before keeps serving.
    Kept {
        /// `describe()` name of the version still serving.
        name: String,
        /// Why the new file was rejected.
        error: String,
    },
}

impl FileStatus {
    /// The plugin serving from this file, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            FileStatus::Loaded { name } | FileStatus::Kept { name, .. } => Some(name),
            FileStatus::Failed { .. } => None,
        }
    }

    /// The last load error of this file, if any.
    pub fn error(&self) -> Option<&str> {
        match self {
            FileStatus::Failed { error } | FileStatus::Kept { error, .. } => Some(error),
            FileStatus::Loaded { .. } => None,
        }
    }
}

/// One consistent set of plugins.
#[derive(Default, Clone)]
pub struct PluginSet {
    /// Handlers by name.
    pub handlers: BTreeMap<String, Plugin>,
    /// Mappers by the channel they map.
    pub mappers: BTreeMap<String, Plugin>,
    /// Every file looked at, and what became of it.
    pub files: BTreeMap<PathBuf, FileStatus>,
    /// Channels whose mapper was removed while the host ran: their pumps
    /// wait for it rather than fall back to JSON passthrough, which would
    /// hand the handler messages in a format it does not expect.
    pub paused_channels: BTreeSet<String>,
}

impl PluginSet {
    /// Every (channel, handler) pair: one durable subscription each.
    pub fn subscriptions(&self) -> Vec<Subscription> {
        let mut subs: Vec<Subscription> = self
            .handlers
            .values()
            .flat_map(|p| {
                p.info().channels.iter().map(|c| Subscription {
                    channel: c.clone(),
                    consumer: p.info().name.clone(),
                })
            })
            .collect();
        subs.sort();
        subs.dedup();
        subs
    }

    /// Whether the pump of `sub` may take work: its handler is loaded, the
    /// loaded version still lists the channel (a new version that dropped
    /// it does not serve it), and the channel is not waiting for a removed
    /// mapper.
    pub fn serves(&self, sub: &Subscription) -> bool {
        self.handlers
            .get(&sub.consumer)
            .is_some_and(|p| p.info().channels.contains(&sub.channel))
            && !self.paused_channels.contains(&sub.channel)
    }

    /// Carries over from `previous` the channels that lost their mapper:
    /// those it mapped (or had paused) that have no mapper here.
    pub fn carry_pauses(&mut self, previous: &PluginSet) {
        let lost: Vec<String> = previous
            .mappers
            .keys()
            .chain(previous.paused_channels.iter())
            .filter(|c| !self.mappers.contains_key(*c))
            .cloned()
            .collect();
        self.paused_channels.extend(lost);
    }

    /// The handlers of `channel`.
    pub fn handlers_of(&self, channel: &str) -> Vec<&Plugin> {
        self.handlers
            .values()
            .filter(|p| p.info().channels.iter().any(|c| c == channel))
            .collect()
    }

    /// Rejected files with their reasons.
    pub fn errors(&self) -> Vec<(&Path, &str)> {
        self.files
            .iter()
            .filter_map(|(path, st)| st.error().map(|e| (path.as_path(), e)))
            .collect()
    }

    /// Records that the file at `path` was rejected for `error`. If a
    /// plugin from that path is in this set, it is marked as kept.
    pub fn reject(&mut self, path: &Path, error: String) {
        let status = match self.files.remove(path) {
            Some(FileStatus::Loaded { name } | FileStatus::Kept { name, .. }) => {
                FileStatus::Kept { name, error }
            }
            _ => FileStatus::Failed { error },
        };
        self.files.insert(path.to_path_buf(), status);
    }

    /// Adds a loaded plugin, or says why it cannot join this set (a
    /// safety net: [`compose`] only admits plugins that fit).
    fn admit(&mut self, path: &Path, plugin: Plugin) -> Result<(), String> {
        let info = plugin.info();
        let taken_by = |name: &str| {
            self.files
                .iter()
                .find_map(|(p, st)| (st.name() == Some(name)).then(|| p.display().to_string()))
        };
        if let Some(other) = taken_by(&info.name) {
            return Err(format!(
                "plugin name {:?} is already loaded from {other}",
                info.name
            ));
        }
        match info.kind {
            PluginKind::Handler => {
                self.handlers.insert(info.name.clone(), plugin.clone());
            }
            PluginKind::Mapper => {
                if let Some(c) = info.channels.iter().find(|c| self.mappers.contains_key(*c)) {
                    return Err(format!("channel {c:?} already has a mapper"));
                }
                for c in &info.channels {
                    self.mappers.insert(c.clone(), plugin.clone());
                }
            }
        }
        self.files.insert(
            path.to_path_buf(),
            FileStatus::Loaded {
                name: info.name.clone(),
            },
        );
        Ok(())
    }
}

/// One plugin file as [`compose`] sees it: the plugin loaded from it (the
/// current content, or the last good one), and the last load error.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The file.
    pub path: PathBuf,
    /// The plugin that would serve from it.
    pub plugin: Option<Plugin>,
    /// Why its current content was rejected, if it was.
    pub error: Option<String>,
}

/// Builds a consistent set from every file's plugin. A plugin whose name,
/// or (for a mapper) one of whose channels, another file's plugin claims
/// too is left out with an error that names the other files; the rest are
/// admitted. The outcome never depends on the order of `entries`.
pub fn compose(entries: &[Entry]) -> PluginSet {
    let mut by_name: BTreeMap<&str, Vec<&Path>> = BTreeMap::new();
    let mut by_mapped: BTreeMap<&str, Vec<&Path>> = BTreeMap::new();
    for e in entries {
        let Some(p) = &e.plugin else { continue };
        by_name.entry(&p.info().name).or_default().push(&e.path);
        if p.info().kind == PluginKind::Mapper {
            for c in &p.info().channels {
                by_mapped.entry(c).or_default().push(&e.path);
            }
        }
    }
    let others = |claims: &[&Path], me: &Path| -> String {
        let list: Vec<String> = claims
            .iter()
            .filter(|p| **p != me)
            .map(|p| p.display().to_string())
            .collect();
        list.join(", ")
    };
    let mut set = PluginSet::default();
    for e in entries {
        let Some(plugin) = &e.plugin else {
            if let Some(error) = &e.error {
                set.files.insert(
                    e.path.clone(),
                    FileStatus::Failed {
                        error: error.clone(),
                    },
                );
            }
            continue;
        };
        let info = plugin.info();
        let mut conflict = None;
        if let Some(claims) = by_name.get(info.name.as_str()).filter(|c| c.len() > 1) {
            conflict = Some(format!(
                "plugin name {:?} is also declared by {}: neither file serves until one is removed or renamed",
                info.name,
                others(claims, &e.path)
            ));
        } else if info.kind == PluginKind::Mapper {
            conflict = info.channels.iter().find_map(|c| {
                let claims = by_mapped.get(c.as_str()).filter(|c| c.len() > 1)?;
                Some(format!(
                    "channel {c:?} is also mapped by {}: neither mapper serves until one is removed",
                    others(claims, &e.path)
                ))
            });
        }
        let outcome = match conflict {
            Some(c) => Err(c),
            None => set.admit(&e.path, plugin.clone()),
        };
        match (outcome, &e.error) {
            (Err(conflict), _) => {
                set.files
                    .insert(e.path.clone(), FileStatus::Failed { error: conflict });
            }
            (Ok(()), Some(error)) => set.reject(&e.path, error.clone()),
            (Ok(()), None) => {}
        }
    }
    set
}

/// The live plugin set.
pub struct Registry {
    current: ArcSwap<PluginSet>,
    /// Swaps since start (hot reloads), for `GET /metrics`.
    swaps: std::sync::atomic::AtomicU64,
}

impl Registry {
    /// A registry serving `set`.
    pub fn new(set: PluginSet) -> Registry {
        Registry {
            current: ArcSwap::from_pointee(set),
            swaps: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The set in force now (cheap; call per message).
    pub fn current(&self) -> Arc<PluginSet> {
        self.current.load_full()
    }

    /// Replaces the set; in-flight calls keep the versions they hold.
    pub fn swap(&self, set: PluginSet) {
        self.current.store(Arc::new(set));
        self.swaps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many times a new set was swapped in since start.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Largest plugin file read, in bytes (a component is rarely above a few
/// MiB; this bounds both the read and what the compiler is given).
pub const MAX_PLUGIN_FILE: u64 = 64 << 20;

/// The plugin files of `dir`, sorted: `*.wasm` entries whose name does not
/// start with a dot (editors and copy tools write their temporary files as
/// dot files) and that exist and are not directories. Symlinks are
/// followed: a link whose target is missing counts as a missing file, and
/// one to something other than a regular file is listed so that reading
/// it reports why. A missing directory is an error.
pub fn plugin_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read plugins directory {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| is_plugin_file(p) && std::fs::metadata(p).is_ok_and(|m| !m.is_dir()))
        .collect();
    paths.sort();
    Ok(paths)
}

/// Reads a plugin file: a regular file (after following symlinks) of at
/// most [`MAX_PLUGIN_FILE`] bytes. `Ok(None)`: it is gone. Opened without
/// blocking, so a FIFO put in its place cannot stall the caller; the size
/// is checked on the open file and the read stops past the cap, so a file
/// that grows while read cannot get past it either. Blocking: call it off
/// the async workers.
pub fn read_plugin(path: &Path) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file (a symlink must point at one)".into());
    }
    let too_big = |len: u64| {
        format!("the file is {len} bytes; a plugin file may be at most {MAX_PLUGIN_FILE} bytes")
    };
    if meta.len() > MAX_PLUGIN_FILE {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_PLUGIN_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_PLUGIN_FILE {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(Some(bytes))
}

/// [`read_plugin`] on a blocking thread.
pub async fn read_plugin_async(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || read_plugin(&path))
        .await
        .map_err(|e| format!("cannot read: the reading thread failed: {e}"))?
}

/// `*.wasm`, not a dot file.
pub fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|x| x == "wasm")
        && path
            .file_name()
            .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
}

/// Loads every plugin file of `dir` (see [`plugin_files`]) and builds the
/// set ([`compose`]). A file that fails, or compiles for longer than
/// `compile_timeout`, is recorded with its reason and logged; the rest
/// still load. A missing directory is an error.
pub async fn load_dir(runtime: &Runtime, config: &Config, dir: &Path) -> Result<PluginSet, String> {
    let mut entries = Vec::new();
    for path in plugin_files(dir)? {
        let load = tokio::time::timeout(config.compile_timeout, load_file(runtime, config, &path));
        let loaded = load.await.unwrap_or_else(|_| {
            Err(format!(
                "compiling took longer than compile_timeout ({})",
                humantime::format_duration(config.compile_timeout)
            ))
        });
        let (plugin, error) = match loaded {
            Ok(plugin) => (Some(plugin), None),
            Err(error) => (None, Some(error)),
        };
        entries.push(Entry {
            path,
            plugin,
            error,
        });
    }
    let set = compose(&entries);
    for (path, error) in set.errors() {
        tracing::error!(path = %path.display(), %error, "plugin rejected");
    }
    Ok(set)
}

/// Reads, compiles, validates one file and applies its config overrides.
pub async fn load_file(runtime: &Runtime, config: &Config, path: &Path) -> Result<Plugin, String> {
    let bytes = read_plugin_async(path)
        .await?
        .ok_or_else(|| "cannot read: the file is gone".to_owned())?;
    load_bytes(runtime, config, bytes).await
}

/// Compiles and validates the bytes of one file under the operator's
/// ceiling for it (`[plugin.NAME]`, else `[limits]`). The error is one line.
pub async fn load_bytes(
    runtime: &Runtime,
    config: &Config,
    bytes: Vec<u8>,
) -> Result<Plugin, String> {
    let plugin = runtime.load(bytes).await.map_err(|e| e.to_string())?;
    let info = plugin.info();
    let ceiling = config.ceiling_for(&info.name);
    let plugin = if ceiling == runtime.config().ceiling {
        plugin
    } else {
        plugin
            .with_ceiling(ceiling)
            .map_err(|e| format!("config [plugin.{}]: {e}", info.name))?
    };
    let capped = plugin.limits().capped(plugin.info().limits);
    if !capped.is_empty() {
        let (info, limits) = (plugin.info(), plugin.limits());
        tracing::warn!(
            plugin = %info.name, version = %info.version, capped = ?capped,
            asked = ?info.limits, in_force = ?limits,
            "the plugin asked for more than the operator's ceiling; the ceiling applies"
        );
    }
    Ok(plugin)
}

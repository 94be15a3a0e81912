//! The current set of plugins, behind an `ArcSwap`.
//!
//! Pumps load the current set per message and never wait for a swap; a
//! call that started on one version finishes on it, because it holds that
//! version's [`Plugin`] (an `Arc`). Loading compiles off the pump path.
//!
//! Rules checked when a directory is loaded, each rejection naming the file:
//! plugin names are unique, a channel has at most one mapper.

use std::collections::BTreeMap;
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
            .filter_map(|(path, st)| match st {
                FileStatus::Failed { error } => Some((path.as_path(), error.as_str())),
                FileStatus::Loaded { .. } => None,
            })
            .collect()
    }

    /// Adds a loaded plugin, or says why it cannot join this set.
    fn admit(&mut self, path: &Path, plugin: Plugin) -> Result<(), String> {
        let info = plugin.info();
        let taken_by = |name: &str| {
            self.files.iter().find_map(|(p, st)| match st {
                FileStatus::Loaded { name: n } if n == name => Some(p.display().to_string()),
                _ => None,
            })
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
                    let other = self.mappers.get(c).map(|p| p.info().name.clone());
                    return Err(format!(
                        "channel {c:?} already has a mapper ({})",
                        other.unwrap_or_default()
                    ));
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

/// The live plugin set.
pub struct Registry {
    current: ArcSwap<PluginSet>,
}

impl Registry {
    /// A registry serving `set`.
    pub fn new(set: PluginSet) -> Registry {
        Registry {
            current: ArcSwap::from_pointee(set),
        }
    }

    /// The set in force now (cheap; call per message).
    pub fn current(&self) -> Arc<PluginSet> {
        self.current.load_full()
    }

    /// Replaces the set; in-flight calls keep the versions they hold.
    pub fn swap(&self, set: PluginSet) {
        self.current.store(Arc::new(set));
    }
}

/// Loads every `*.wasm` file of `dir` (sorted by name). A file that fails is
/// recorded with its reason and logged; the rest still load. A missing
/// directory is an error.
pub async fn load_dir(runtime: &Runtime, config: &Config, dir: &Path) -> Result<PluginSet, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read plugins directory {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
        .collect();
    paths.sort();
    let mut set = PluginSet::default();
    for path in paths {
        let outcome = match load_file(runtime, config, &path).await {
            Ok(plugin) => set.admit(&path, plugin),
            Err(e) => Err(e),
        };
        if let Err(error) = outcome {
            tracing::error!(path = %path.display(), %error, "plugin rejected");
            set.files.insert(path, FileStatus::Failed { error });
        }
    }
    Ok(set)
}

/// Reads, compiles, validates one file and applies its config overrides.
pub async fn load_file(runtime: &Runtime, config: &Config, path: &Path) -> Result<Plugin, String> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read: {e}"))?;
    let plugin = runtime
        .load(bytes, Default::default())
        .await
        .map_err(|e| e.to_string())?;
    let overrides = config.limits_for(&plugin.info().name);
    if overrides == Default::default() {
        return Ok(plugin);
    }
    plugin
        .with_overrides(overrides)
        .map_err(|e| format!("config [plugin.{}]: {e}", plugin.info().name))
}

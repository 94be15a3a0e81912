//! Loads in flight: each changed file compiles in its own task, under a
//! deadline, while the watcher keeps watching.
//!
//! Why: compiling is the one slow step of a reload (seconds of CPU for a
//! big component), and a file can be made to compile for minutes (a
//! "compile bomb": a huge function, within the file size cap). Loaded one
//! after the other on the watcher's task, such a file would hold up every
//! other reload and the daemon's start. Here it holds up nothing: other
//! files load beside it, and at `compile_timeout` it is rejected with that
//! reason. Its compile cannot be stopped (Cranelift runs on a blocking
//! thread), so it finishes in the background; if it does, the compile
//! cache keeps the result, and a SIGHUP (or restart) then loads it at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::scan::Stamp;
use crate::config::Config;
use crate::registry;
use crate::runtime::{Plugin, Runtime};

/// One file being loaded.
struct Load {
    stamp: Stamp,
    hash: String,
    force: bool,
    started: Instant,
    task: JoinHandle<Result<Plugin, String>>,
}

/// A load that ended (or ran out of time).
pub(super) struct Done {
    pub(super) path: PathBuf,
    pub(super) stamp: Stamp,
    pub(super) hash: String,
    pub(super) force: bool,
    pub(super) load_ms: f64,
    pub(super) result: Result<Plugin, String>,
}

/// The loads in flight, by path.
#[derive(Default)]
pub(super) struct InFlight {
    loads: BTreeMap<PathBuf, Load>,
}

impl InFlight {
    /// Whether any load is in flight.
    pub(super) fn any(&self) -> bool {
        !self.loads.is_empty()
    }

    /// Whether `path` is being loaded from content that stats as `stamp`.
    pub(super) fn loading(&self, path: &Path, stamp: Stamp) -> bool {
        self.loads.get(path).is_some_and(|l| l.stamp == stamp)
    }

    /// Forgets the load of `path`, if any (the file changed again or went).
    pub(super) fn cancel(&mut self, path: &Path) {
        if let Some(load) = self.loads.remove(path) {
            load.task.abort();
        }
    }

    /// Forgets the loads of paths `keep` says no to (files gone).
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Path) -> bool) {
        let gone: Vec<PathBuf> = self.loads.keys().filter(|p| !keep(p)).cloned().collect();
        for path in gone {
            self.cancel(&path);
        }
    }

    /// Starts loading `bytes` (read from `path` when it stat'ed as `stamp`).
    pub(super) fn start(
        &mut self,
        runtime: &Runtime,
        config: &Arc<Config>,
        path: &Path,
        (stamp, hash, force): (Stamp, String, bool),
        bytes: Vec<u8>,
    ) {
        self.cancel(path);
        let (runtime, config) = (runtime.clone(), Arc::clone(config));
        let task =
            tokio::spawn(async move { registry::load_bytes(&runtime, &config, bytes).await });
        self.loads.insert(
            path.to_path_buf(),
            Load {
                stamp,
                hash,
                force,
                started: Instant::now(),
                task,
            },
        );
    }

    /// The loads that finished, and those past `timeout` (rejected as
    /// such); the rest stay in flight. Never waits for a compile.
    pub(super) async fn take_done(&mut self, timeout: Duration) -> Vec<Done> {
        let ready: Vec<PathBuf> = self
            .loads
            .iter()
            .filter(|(_, l)| l.task.is_finished() || l.started.elapsed() >= timeout)
            .map(|(p, _)| p.clone())
            .collect();
        let mut out = Vec::new();
        for path in ready {
            let Some(load) = self.loads.remove(&path) else {
                continue;
            };
            let load_ms = load.started.elapsed().as_secs_f64() * 1000.0;
            let result = if load.task.is_finished() {
                match load.task.await {
                    Ok(result) => result,
                    Err(e) => Err(format!("the load task failed: {e}")),
                }
            } else {
                load.task.abort();
                Err(format!(
                    "compiling took longer than compile_timeout ({}); rejected (a compile that \
                     finishes later is cached: SIGHUP or a restart then loads it at once)",
                    humantime::format_duration(timeout)
                ))
            };
            out.push(Done {
                path,
                stamp: load.stamp,
                hash: load.hash,
                // A timeout is reported at once: waiting longer is what failed.
                force: load.force || load_ms >= timeout.as_secs_f64() * 1000.0,
                load_ms,
                result,
            });
        }
        out
    }
}

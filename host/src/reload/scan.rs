//! What the watcher knows about each file, and deciding when a change is
//! complete enough to load.
//!
//! A file is identified by its path. For each path we keep the stat
//! ([`Stamp`]) and content hash of the bytes we last looked at, the plugin
//! version serving from it (the last good one) and the file's last load
//! error. A file that fails to load never takes down the version that
//! served from the same path before.
//!
//! **When is a write complete?** An atomic rename is complete at once, but
//! an in-place overwrite (`cp new.wasm plugins/x.wasm`) is seen half
//! written. So a changed stat must hold still for [`SETTLE`] before the
//! file is read, and if the file then fails to load while it changed less
//! than [`QUIET`] ago, the writer may merely have paused: the watcher
//! waits for the file to stay quiet that long and tries once more before it
//! reports the file as bad. A good file is thus live about `SETTLE` after
//! its last write; a bad one is reported after `QUIET`.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::runtime::Plugin;

/// How long a changed file's stat must hold still before it is read.
pub(super) const SETTLE: Duration = Duration::from_millis(50);

/// How long a file that failed to load must stay unchanged before the
/// failure is reported (a slow writer may pause mid-file).
pub(super) const QUIET: Duration = Duration::from_secs(1);

/// What a stat says about a file's content: any write, truncation, rename
/// over it or `touch` changes at least one field. The change time (ctime)
/// cannot be set by tools, so even `cp -p` over a file of the same size is
/// seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
}

impl Stamp {
    pub(super) fn of(meta: &std::fs::Metadata) -> Stamp {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Stamp {
            len: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }

    /// Milliseconds from the file's last write to now (0 if the clock
    /// disagrees): the latency a swap logs.
    pub(super) fn age_ms(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        u64::try_from((now - self.mtime_ns) / 1_000_000).unwrap_or(0)
    }
}

/// The plugin files of `dir` with their stats. Files that vanish while
/// listed are skipped (the next scan sees them gone).
pub(super) fn list(dir: &Path) -> Result<BTreeMap<PathBuf, Stamp>, String> {
    let mut out = BTreeMap::new();
    for path in crate::registry::plugin_files(dir)? {
        if let Ok(meta) = std::fs::metadata(&path) {
            out.insert(path, Stamp::of(&meta));
        }
    }
    Ok(out)
}

/// One path of the plugins directory.
#[derive(Default, Clone)]
pub(super) struct Slot {
    /// Stat of the content last looked at.
    pub(super) stamp: Option<Stamp>,
    /// Its SHA-256.
    pub(super) hash: Option<String>,
    /// The version serving from this path (the last good one).
    pub(super) plugin: Option<Plugin>,
    /// When that version was swapped in (ms).
    pub(super) loaded_at: i64,
    /// Why the content last looked at was rejected.
    pub(super) error: Option<String>,
}

/// A change seen but not acted on yet.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    stamp: Stamp,
    /// When the stat last changed.
    since: Instant,
    /// Set after a failed load: retry (and then report) from then on.
    retry_at: Option<Instant>,
}

/// What to do about a path whose stat differs from its slot's.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Still changing or settling: look again later.
    Wait,
    /// Read and load it now.
    Load,
}

/// The changes in progress, by path.
#[derive(Default)]
pub(super) struct Changes {
    pending: BTreeMap<PathBuf, Pending>,
}

impl Changes {
    /// Whether any change is waiting (the watcher then looks sooner).
    pub(super) fn any(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Forgets `path` (loaded, rejected, unchanged or gone).
    pub(super) fn done(&mut self, path: &Path) {
        self.pending.remove(path);
    }

    /// Keeps only the paths `keep` says yes to.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Path) -> bool) {
        self.pending.retain(|p, _| keep(p));
    }

    /// `path` now stats as `stamp`, which differs from what was loaded.
    pub(super) fn observe(&mut self, path: &Path, stamp: Stamp, now: Instant) -> Step {
        match self.pending.get(path) {
            Some(p) if p.stamp == stamp => {
                let due = match p.retry_at {
                    Some(at) => now >= at,
                    None => now.duration_since(p.since) >= SETTLE,
                };
                if due { Step::Load } else { Step::Wait }
            }
            _ => {
                self.pending.insert(
                    path.to_path_buf(),
                    Pending {
                        stamp,
                        since: now,
                        retry_at: None,
                    },
                );
                Step::Wait
            }
        }
    }

    /// Loading `path` failed. True: report it now. False: the file changed
    /// recently and may still be being written; it is retried once it has
    /// been quiet for [`QUIET`].
    pub(super) fn failed(&mut self, path: &Path, now: Instant) -> bool {
        match self.pending.get_mut(path) {
            Some(p) if p.retry_at.is_none() && now.duration_since(p.since) < QUIET => {
                p.retry_at = Some(p.since + QUIET);
                false
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(len: u64) -> Stamp {
        Stamp {
            len,
            mtime_ns: 1,
            ctime_ns: 1,
            ino: 1,
            dev: 1,
        }
    }

    #[test]
    fn a_change_loads_once_its_stat_held_still_for_the_settle_time() {
        let mut c = Changes::default();
        let p = Path::new("/p/a.wasm");
        let t0 = Instant::now();
        assert_eq!(c.observe(p, stamp(10), t0), Step::Wait);
        // Still growing: the clock restarts.
        assert_eq!(c.observe(p, stamp(20), t0 + SETTLE), Step::Wait);
        assert_eq!(c.observe(p, stamp(20), t0 + SETTLE), Step::Wait);
        assert_eq!(c.observe(p, stamp(20), t0 + SETTLE * 2), Step::Load);
        assert!(c.any());
        c.done(p);
        assert!(!c.any());
    }

    #[test]
    fn a_fresh_failure_is_retried_after_a_quiet_period_then_reported() {
        let mut c = Changes::default();
        let p = Path::new("/p/a.wasm");
        let t0 = Instant::now();
        c.observe(p, stamp(10), t0);
        assert_eq!(c.observe(p, stamp(10), t0 + SETTLE), Step::Load);
        assert!(!c.failed(p, t0 + SETTLE), "may still be being written");
        assert_eq!(c.observe(p, stamp(10), t0 + SETTLE * 2), Step::Wait);
        assert_eq!(c.observe(p, stamp(10), t0 + QUIET), Step::Load);
        assert!(c.failed(p, t0 + QUIET), "quiet for long enough: report");
        // A file that was already quiet is reported at once.
        let q = Path::new("/p/b.wasm");
        c.observe(q, stamp(1), t0);
        assert!(c.failed(q, t0 + QUIET * 2));
        // A failure with no change in progress (startup, SIGHUP): at once.
        assert!(c.failed(Path::new("/p/c.wasm"), t0));
    }
}

//! The compile cache: a compiled component on disk, so a restart (or a
//! swap back to a version seen before) does not recompile it.
//!
//! Compiling a plugin costs hundreds of milliseconds to seconds of CPU;
//! loading its compiled image costs a few milliseconds. An entry is named
//! `<content sha256>-<engine digest>.cwasm`: the content hash of the `.wasm`
//! bytes and a digest of wasmtime's `precompile_compatibility_hash()` (the
//! wasmtime version, target and every compiler and tunable setting that
//! changes the code). Another engine (another sluice build, other limits)
//! therefore looks for other names and never sees a stale image.
//!
//! **Why loading an entry is sound.** `Component::deserialize` is `unsafe`
//! because wasmtime trusts the image to be its own output: it checks the
//! header, version and engine settings, but not the machine code itself.
//! We only deserialize files that
//! 1. this module wrote (from `Component::serialize` of a component that
//!    wasmtime itself compiled from the bytes whose hash names the file),
//! 2. inside the host's own data directory (same trust as its database),
//! 3. atomically (temp file, fsync, rename: a crash never leaves half an
//!    entry under a real name), and
//! 4. that still carry their own SHA-256 in front of the image: a file
//!    damaged on disk (a torn sector, a bit flip, a truncation) fails that
//!    check and is never handed to wasmtime. This is why we read the file
//!    and use `deserialize` on the verified bytes rather than mmapping it
//!    with `deserialize_file`: the checksum covers exactly the bytes that
//!    become code.
//!
//! Anything wrong with an entry (unreadable, bad checksum, refused by
//! wasmtime) is a cache miss: the entry is removed, the component is
//! compiled from source and the entry is written again.

use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// File name suffix of an entry.
const EXT: &str = "cwasm";

/// Bytes of the checksum in front of the image.
const SUM: usize = 32;

/// Counters, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Components loaded from an entry.
    pub hits: u64,
    /// Components compiled (no usable entry).
    pub misses: u64,
    /// Entries found damaged or refused by wasmtime (counted as misses too).
    pub corrupt: u64,
}

/// A directory of compiled components for one engine.
pub(super) struct CompileCache {
    dir: PathBuf,
    /// Hex digest of the engine's compatibility hash (16 chars).
    engine_key: String,
    hits: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
}

/// Feeds a `Hash` impl into SHA-256: a digest that is stable across runs
/// (std's `DefaultHasher` promises no such thing).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl CompileCache {
    /// A cache in `dir` (created on first write) for `engine`.
    pub(super) fn new(dir: PathBuf, engine: &Engine) -> CompileCache {
        let mut h = ShaHasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
        let engine_key = hex(&h.0.finalize())[..16].to_owned();
        CompileCache {
            dir,
            engine_key,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
        }
    }

    pub(super) fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
        }
    }

    /// The entry for the component whose bytes hash to `content_hash`.
    pub(super) fn path_for(&self, content_hash: &str) -> PathBuf {
        self.dir
            .join(format!("{content_hash}-{}.{EXT}", self.engine_key))
    }

    /// The cached component, or the freshly compiled one (then cached).
    /// Runs on a blocking thread: it reads, compiles and writes files.
    pub(super) fn get_or_compile(
        &self,
        engine: &Engine,
        content_hash: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<Component> {
        let path = self.path_for(content_hash);
        match self.read(engine, &path) {
            Ok(Some(component)) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                // Recently used entries survive `prune`.
                if let Ok(f) = std::fs::File::options().write(true).open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
                return Ok(component);
            }
            Ok(None) => {}
            Err(reason) => {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(entry = %path.display(), %reason, "compile cache entry unusable; recompiling");
                let _ = std::fs::remove_file(&path);
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let component = Component::new(engine, bytes)?;
        match component.serialize() {
            Ok(image) => {
                if let Err(e) = self.write(&path, &image) {
                    tracing::warn!(entry = %path.display(), error = %e, "cannot write compile cache entry; the next start compiles again");
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot serialize a compiled component")
            }
        }
        Ok(component)
    }

    /// `Ok(None)`: no entry. `Err`: an entry that must not be used.
    fn read(&self, engine: &Engine, path: &Path) -> Result<Option<Component>, String> {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read: {e}")),
        };
        if data.len() < SUM || Sha256::digest(&data[SUM..]).as_slice() != &data[..SUM] {
            return Err("checksum mismatch (damaged or truncated)".into());
        }
        // SAFETY: see the module docs. These bytes are exactly what
        // `Component::serialize` produced for this engine's settings (the
        // file name carries the engine digest) in a file only this module
        // writes, and the checksum just verified they are unchanged since.
        let component = unsafe { Component::deserialize(engine, &data[SUM..]) }
            .map_err(|e| format!("wasmtime refused it: {e:#}"))?;
        Ok(Some(component))
    }

    /// Checksum + image -> temp file, fsync, rename over the entry.
    fn write(&self, path: &Path, image: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.dir.join(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            fastrand::u64(..)
        ));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&Sha256::digest(image))?;
            f.write_all(image)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Removes entries of other engines, leftover temp files, and entries
    /// not used for `max_age` unless `keep` lists their content hash.
    /// Returns how many files were removed.
    pub(super) fn prune(&self, keep: &[&str], max_age: Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale_tmp = name.starts_with('.') && name.ends_with(".tmp");
            let Some(stem) = name.strip_suffix(&format!(".{EXT}")) else {
                if stale_tmp && older_than(&entry, now, Duration::from_secs(3600)) {
                    removed += usize::from(std::fs::remove_file(entry.path()).is_ok());
                }
                continue;
            };
            let Some((content, engine)) = stem.split_once('-') else {
                continue;
            };
            let other_engine = engine != self.engine_key;
            let unused = !keep.contains(&content) && older_than(&entry, now, max_age);
            if other_engine || unused {
                removed += usize::from(std::fs::remove_file(entry.path()).is_ok());
            }
        }
        removed
    }
}

fn older_than(entry: &std::fs::DirEntry, now: SystemTime, age: Duration) -> bool {
    entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|d| d > age)
}

/// Lower-case hex.
pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

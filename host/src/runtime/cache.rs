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
//! header, version and engine settings, but not the machine code itself,
//! so a planted image is arbitrary native code. We only deserialize files
//! that
//! 1. this module wrote (from `Component::serialize` of a component that
//!    wasmtime itself compiled from the bytes whose hash names the file),
//! 2. inside the host's own data directory, in a directory of mode 0700
//!    (files 0600),
//! 3. atomically (temp file, fsync, rename: a crash never leaves half an
//!    entry under a real name), and
//! 4. that carry in front of the image its HMAC-SHA256 under this
//!    install's secret key (`cache/key`, 32 random bytes, 0600, made on
//!    first use). A file damaged on disk fails that check, and so does one
//!    planted by anyone who cannot read the key (another user, a copy from
//!    another install, a file dropped by a plugin deploy): it is never
//!    handed to wasmtime. This is why we read the file and use
//!    `deserialize` on the verified bytes rather than mmapping it with
//!    `deserialize_file`: the tag covers exactly the bytes that become
//!    code. Deleting the key invalidates every entry (they are recompiled).
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

/// Bytes of the authentication tag in front of the image.
const SUM: usize = 32;

/// The per-install secret's file, inside the cache directory.
const KEY_FILE: &str = "key";

type Mac = hmac::Hmac<Sha256>;

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
    /// The secret entries are authenticated with; made (with the
    /// directory) on first use. `Err`: the cache is off for this process.
    key: std::sync::OnceLock<Result<[u8; 32], String>>,
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
            key: std::sync::OnceLock::new(),
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
        let key = match self.key() {
            Ok(key) => key,
            // Without a key nothing on disk can be trusted: compile.
            Err(_) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                return Component::new(engine, bytes);
            }
        };
        let path = self.path_for(content_hash);
        match self.read(engine, &key, &path) {
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
                if let Err(e) = self.write(&key, &path, &image) {
                    tracing::warn!(entry = %path.display(), error = %e, "cannot write compile cache entry; the next start compiles again");
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot serialize a compiled component")
            }
        }
        Ok(component)
    }

    /// The install's key, reading or making it (and the directory) once.
    fn key(&self) -> Result<[u8; 32], String> {
        self.key
            .get_or_init(|| {
                let key = open_key(&self.dir);
                if let Err(e) = &key {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "compile cache off: every plugin is compiled");
                }
                key
            })
            .clone()
    }

    /// `Ok(None)`: no entry. `Err`: an entry that must not be used.
    fn read(
        &self,
        engine: &Engine,
        key: &[u8; 32],
        path: &Path,
    ) -> Result<Option<Component>, String> {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read: {e}")),
        };
        use hmac::Mac as _;
        let verified = data.len() >= SUM
            && mac(key, &data[SUM..]).is_some_and(|m| m.verify_slice(&data[..SUM]).is_ok());
        if !verified {
            return Err("not written by this install, damaged or truncated (tag mismatch)".into());
        }
        // SAFETY: see the module docs. These bytes are exactly what
        // `Component::serialize` produced for this engine's settings (the
        // file name carries the engine digest) in a file only this module
        // writes: the tag just verified was made with this install's secret
        // over these very bytes.
        let component = unsafe { Component::deserialize(engine, &data[SUM..]) }
            .map_err(|e| format!("wasmtime refused it: {e:#}"))?;
        Ok(Some(component))
    }

    /// Tag + image -> temp file (0600), fsync, rename over the entry.
    fn write(&self, key: &[u8; 32], path: &Path, image: &[u8]) -> std::io::Result<()> {
        use hmac::Mac as _;
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
            let mut f = private_file(&tmp)?;
            let tag =
                mac(key, image).ok_or_else(|| std::io::Error::other("HMAC refused the key"))?;
            f.write_all(&tag.finalize().into_bytes())?;
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

/// HMAC-SHA256 of `data` under `key`, ready to finalize or verify (`None`
/// only if HMAC refused the key, which it never does for 32 bytes).
fn mac(key: &[u8; 32], data: &[u8]) -> Option<Mac> {
    use hmac::Mac as _;
    let mut m = <Mac as hmac::Mac>::new_from_slice(key).ok()?;
    m.update(data);
    Some(m)
}

/// A new file only this user can read or write; fails if it exists.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Makes `dir` (0700, tightened if it exists looser) and reads or makes the
/// key file in it.
fn open_key(dir: &Path) -> Result<[u8; 32], String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create it: {e}"))?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("it is not a directory".into());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot make it private (0700): {e}"))?;
    }
    let path = dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let meta = std::fs::symlink_metadata(&path).map_err(|e| e.to_string())?;
            if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
                return Err(format!("{} is not a private file (0600)", path.display()));
            }
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| format!("{} is not 32 bytes", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| format!("no randomness for the key: {e}"))?;
            let tmp = dir.join(format!(".key.{}.tmp", std::process::id()));
            let written = (|| {
                let mut f = private_file(&tmp)?;
                f.write_all(&key)?;
                f.sync_all()?;
                // Another process may have made one meanwhile: keep theirs.
                std::fs::hard_link(&tmp, &path)
            })();
            let _ = std::fs::remove_file(&tmp);
            match written {
                Ok(()) => Ok(key),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => open_key(dir),
                Err(e) => Err(format!("cannot write {}: {e}", path.display())),
            }
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
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

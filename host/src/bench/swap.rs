//! Hot reload swap latency: from a plugin file written (renamed into
//! place, the way a deploy does it) to the new version serving, through
//! the real watcher (`reload::Watcher`) and registry.
//!
//! Why poll the registry: the moment the watcher swaps the set is the
//! moment the next message gets the new version (in-flight calls finish on
//! theirs), so that is "serving". Swaps alternate between two real builds
//! of the same handler (test-version-1 and -2); each write lands at a
//! random point of the watcher's 200 ms poll, so the figures are a fair
//! sample rather than in step with it. Both versions are compiled once
//! beforehand (the compile cache then has them): what is timed is
//! detecting, reading, hashing, loading from the cache, describing,
//! validating and swapping.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;

use super::stats::Percentiles;
use crate::config::Config;
use crate::pump::Deps;
use crate::registry::Registry;
use crate::reload::Watcher;
use crate::runtime::Runtime;
use crate::store::{Store, StoreOptions};
use crate::transport::Embedded;

/// The handler both builds provide.
const NAME: &str = "test-version";

/// What the swap benchmark measured.
#[derive(Debug, Clone, Copy)]
pub struct SwapReport {
    /// File renamed into place -> new version in the registry.
    pub latency: Percentiles,
}

/// Swaps `swaps` times between `v1` and `v2` (paths of the two builds) in
/// a plugins dir under `dir`.
pub async fn run(
    runtime: &Runtime,
    config: &Config,
    dir: &Path,
    v1: &Path,
    v2: &Path,
    swaps: usize,
) -> anyhow::Result<SwapReport> {
    let builds = [
        std::fs::read(v1).with_context(|| format!("reading {}", v1.display()))?,
        std::fs::read(v2).with_context(|| format!("reading {}", v2.display()))?,
    ];
    let mut versions = Vec::new();
    for bytes in &builds {
        // Compiles each build once, so the swaps load from the cache.
        let plugin = runtime
            .load(bytes.clone())
            .await
            .map_err(|e| anyhow::anyhow!("loading the test-version plugin: {e}"))?;
        versions.push(plugin.info().version.clone());
    }
    if versions[0] == versions[1] {
        bail!("the two test-version builds report the same version");
    }
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).with_context(|| format!("creating {}", plugins.display()))?;
    let target = plugins.join(format!("{NAME}.wasm"));
    deploy(&builds[0], &target)?;
    let config = Config {
        plugins_dir: plugins,
        data_dir: dir.to_path_buf(),
        ..config.clone()
    };
    let store = Store::open(&config.database_path(), &StoreOptions::default())?;
    let (watcher, set) = Watcher::load(runtime.clone(), &config)
        .await
        .map_err(|e| anyhow::anyhow!("loading the plugins dir: {e}"))?;
    let deps = Arc::new(Deps {
        store: store.clone(),
        state: crate::state::Ledger::new(store.clone(), crate::state::DEFAULT_CACHE_BYTES),
        transport: Embedded::new(store, config.poll_interval),
        registry: Arc::new(Registry::new(set)),
        config: Arc::new(config),
        control: Default::default(),
    });
    let stop = CancellationToken::new();
    let watching = tokio::spawn(watcher.run(deps.clone(), |_| {}, stop.clone()));
    let mut samples = Vec::with_capacity(swaps);
    let mut result = Ok(());
    for i in 0..swaps {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(50..250))).await;
        let next = (i + 1) % 2;
        deploy(&builds[next], &target)?;
        let written = Instant::now();
        loop {
            if serving(&deps.registry).as_deref() == Some(versions[next].as_str()) {
                samples.push(u64::try_from(written.elapsed().as_nanos()).unwrap_or(u64::MAX));
                break;
            }
            if written.elapsed() > Duration::from_secs(30) {
                result = Err(anyhow::anyhow!(
                    "version {} was not serving 30 s after its file was written",
                    versions[next]
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if result.is_err() {
            break;
        }
    }
    stop.cancel();
    let _ = watching.await;
    result?;
    Ok(SwapReport {
        latency: Percentiles::of_nanos(&mut samples),
    })
}

fn serving(registry: &Registry) -> Option<String> {
    registry
        .current()
        .handlers
        .get(NAME)
        .map(|p| p.info().version.clone())
}

/// Writes `bytes` to a dot file next to `target` and renames it over it.
fn deploy(bytes: &[u8], target: &Path) -> anyhow::Result<()> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = target.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, target).with_context(|| format!("renaming onto {}", target.display()))?;
    Ok(())
}

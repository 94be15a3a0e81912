//! `sluice dev`: the inner loop of writing a plugin. It builds the plugin
//! project in a directory, runs a local daemon on `.sluice/` in it, and on
//! every change to the sources rebuilds and swaps the new build into the
//! daemon's plugins directory (temp file + rename, the careful deploy, so
//! the daemon's hot reload never reads half a file). The daemon logs each
//! job's outcome; a build that fails leaves the last good build serving.
//!
//! Why `notify` (inotify on Linux) rather than polling like the daemon's
//! plugins watcher: a source tree has many files in nested directories,
//! and editors save in bursts; events plus a short quiet period (debounce)
//! rebuild once per save, at once. Events under `target/`, `.sluice/`,
//! `.git/` and `__pycache__/`, and the Python build's own output, are
//! ignored so a build never triggers the next one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use notify::Watcher as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Quiet time after the last change before a rebuild starts.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// `sluice dev` arguments. `--plugins` and `--data` (global) default to
/// `DIR/.sluice/plugins` and `DIR/.sluice/data`; `--http ADDR` serves the
/// API too.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// The plugin project (a `sluice new` project, Rust or Python).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

/// How to build the project in `dir`.
#[derive(Debug, Clone)]
enum Project {
    /// A cargo project; the artifact is the `.wasm` cargo reports.
    Rust,
    /// A componentize-py project, as `[tool.sluice]` in pyproject.toml says.
    Python {
        world: String,
        app: String,
        output: PathBuf,
    },
}

impl Project {
    fn detect(dir: &Path) -> anyhow::Result<Project> {
        if dir.join("Cargo.toml").is_file() {
            return Ok(Project::Rust);
        }
        let pyproject = dir.join("pyproject.toml");
        if pyproject.is_file() || dir.join("app.py").is_file() {
            let table: toml::Table = match std::fs::read_to_string(&pyproject) {
                Ok(text) => text
                    .parse()
                    .with_context(|| format!("reading {}", pyproject.display()))?,
                Err(_) => toml::Table::new(),
            };
            let sluice = table
                .get("tool")
                .and_then(|t| t.get("sluice"))
                .and_then(|t| t.as_table());
            let get = |k: &str| sluice.and_then(|t| t.get(k)).and_then(|v| v.as_str());
            let name = dir
                .canonicalize()
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "plugin".into());
            return Ok(Project::Python {
                world: get("world").unwrap_or("handler-plugin").to_owned(),
                app: get("app").unwrap_or("app").to_owned(),
                output: PathBuf::from(get("output").map_or(format!("{name}.wasm"), str::to_owned)),
            });
        }
        bail!(
            "{} is not a plugin project (no Cargo.toml, pyproject.toml or app.py); create one with `sluice new NAME`",
            dir.display()
        )
    }

    /// Whether a change at `path` (inside `dir`) calls for a rebuild.
    fn is_source(&self, dir: &Path, path: &Path) -> bool {
        let Ok(rel) = path.strip_prefix(dir) else {
            return false;
        };
        let ignored = ["target", ".sluice", ".git", "__pycache__"];
        if rel
            .components()
            .any(|c| ignored.iter().any(|i| c.as_os_str() == *i))
        {
            return false;
        }
        let name = rel.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.as_deref().is_some_and(|n| n.starts_with('.')) {
            return false; // editor swap and temp files
        }
        let ext = rel.extension().and_then(|e| e.to_str()).unwrap_or("");
        match self {
            Project::Rust => {
                matches!(ext, "rs" | "toml" | "wit") || name.as_deref() == Some("Cargo.lock")
            }
            Project::Python { output, .. } => rel != output && matches!(ext, "py" | "toml" | "wit"),
        }
    }

    /// Builds; returns the component's path. The build's own output goes
    /// to this terminal.
    async fn build(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        match self {
            Project::Rust => {
                let out = tokio::process::Command::new("cargo")
                    .args([
                        "build",
                        "--release",
                        "--target",
                        "wasm32-wasip2",
                        "--message-format=json-render-diagnostics",
                    ])
                    .current_dir(dir)
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .await
                    .context("running cargo")?;
                if !out.status.success() {
                    bail!("cargo build failed");
                }
                wasm_artifact(&out.stdout).context(
                    "cargo built no .wasm: is the crate a cdylib (crate-type = [\"cdylib\"])?",
                )
            }
            Project::Python { world, app, output } => {
                let status = tokio::process::Command::new(componentize_py())
                    .args([
                        "-q",
                        "-d",
                        "sluice_sdk/wit",
                        "-w",
                        world,
                        "componentize",
                        app,
                        "-o",
                    ])
                    .arg(output)
                    .current_dir(dir)
                    .status()
                    .await
                    .context("running componentize-py (pip install componentize-py==0.25.1)")?;
                if !status.success() {
                    bail!("componentize-py failed");
                }
                Ok(dir.join(output))
            }
        }
    }
}

/// `componentize-py` from PATH, or `SLUICE_COMPONENTIZE_PY`.
fn componentize_py() -> PathBuf {
    std::env::var_os("SLUICE_COMPONENTIZE_PY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("componentize-py"))
}

/// The last cdylib `.wasm` in cargo's JSON messages.
fn wasm_artifact(stdout: &[u8]) -> Option<PathBuf> {
    let mut found = None;
    for line in stdout.split(|b| *b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_cdylib = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "cdylib"));
        if !is_cdylib {
            continue;
        }
        if let Some(files) = msg["filenames"].as_array() {
            for f in files.iter().filter_map(|f| f.as_str()) {
                if f.ends_with(".wasm") {
                    found = Some(PathBuf::from(f));
                }
            }
        }
    }
    found
}

/// Copies `built` into `plugins` as `<stem>.wasm` the careful way: a dot
/// temp file in the same directory, then a rename over the target. An
/// identical file is left alone. Returns whether it changed.
fn deploy(built: &Path, plugins: &Path) -> anyhow::Result<Option<PathBuf>> {
    let bytes = std::fs::read(built).with_context(|| format!("reading {}", built.display()))?;
    let name = built
        .file_name()
        .context("the build output has no file name")?
        .to_string_lossy()
        .into_owned();
    let target = plugins.join(&name);
    if std::fs::read(&target).is_ok_and(|old| old == bytes) {
        return Ok(None);
    }
    std::fs::create_dir_all(plugins).with_context(|| format!("creating {}", plugins.display()))?;
    let tmp = plugins.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, &target) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("renaming into {}", target.display()));
    }
    Ok(Some(target))
}

pub(super) async fn run(
    mut config: Config,
    explicit: (bool, bool),
    args: DevArgs,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) -> anyhow::Result<()> {
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("no project directory {}", args.dir.display()))?;
    let project = Project::detect(&dir)?;
    let (plugins_given, data_given) = explicit;
    if !plugins_given {
        config.plugins_dir = dir.join(".sluice/plugins");
    }
    if !data_given {
        config.data_dir = dir.join(".sluice/data");
    }
    std::fs::create_dir_all(&config.plugins_dir)
        .with_context(|| format!("creating {}", config.plugins_dir.display()))?;

    // Watch before the first build, so a save during it is not missed.
    let (tx, mut changes) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (Access) and metadata changes are not edits; a build reads
        // the sources and must not trigger the next one.
        use notify::EventKind;
        use notify::event::ModifyKind;
        let Ok(event) = event else { return };
        let edit = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
        );
        if edit {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })
    .context("starting the file watcher")?;
    watcher
        .watch(&dir, notify::RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", dir.display()))?;

    eprintln!("sluice dev: building {}", dir.display());
    rebuild(&project, &dir, &config.plugins_dir).await;
    eprintln!(
        "sluice dev: daemon on {} (plugins in {}); post to it with\n  sluice --data {} post CHANNEL '{{...}}'",
        config.data_dir.display(),
        config.plugins_dir.display(),
        config.data_dir.display(),
    );
    let daemon_stop = CancellationToken::new();
    let daemon = tokio::spawn(crate::daemon::run(
        config.clone(),
        daemon_stop.clone(),
        hard_stop.clone(),
    ));
    let mut daemon = std::pin::pin!(daemon);

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            ended = &mut daemon => {
                // The daemon stopped by itself: its error is the answer.
                return match ended {
                    Ok(result) => result.map_err(anyhow::Error::from),
                    Err(e) => Err(anyhow::anyhow!("the daemon task failed: {e}")),
                };
            }
            Some(path) = changes.recv() => {
                if !project.is_source(&dir, &path) {
                    continue;
                }
                // Let a burst of saves settle, then build once.
                let mut changed = vec![path];
                while let Ok(Some(p)) = tokio::time::timeout(DEBOUNCE, changes.recv()).await {
                    if project.is_source(&dir, &p) {
                        changed.push(p);
                    }
                }
                let first = changed[0].strip_prefix(&dir).unwrap_or(&changed[0]).display().to_string();
                eprintln!("sluice dev: {first} changed; rebuilding");
                rebuild(&project, &dir, &config.plugins_dir).await;
            }
        }
    }
    drop(watcher);
    daemon_stop.cancel();
    match daemon.await {
        Ok(result) => Ok(result?),
        Err(e) => Err(anyhow::anyhow!("the daemon task failed: {e}")),
    }
}

/// Builds and deploys; reports the outcome in one line either way.
async fn rebuild(project: &Project, dir: &Path, plugins: &Path) {
    let started = std::time::Instant::now();
    match project
        .build(dir)
        .await
        .and_then(|built| deploy(&built, plugins))
    {
        Ok(Some(target)) => eprintln!(
            "sluice dev: built in {:.1} s; deployed {}",
            started.elapsed().as_secs_f64(),
            target.display()
        ),
        Ok(None) => eprintln!(
            "sluice dev: built in {:.1} s; unchanged, nothing to deploy",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => eprintln!(
            "sluice dev: {e:#}; the last good build keeps serving (fix and save to retry)"
        ),
    }
}

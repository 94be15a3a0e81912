//! Fixtures: real plugins (built once per test run by scripts/build-plugins),
//! a temp data dir with a real SQLite file, and the real `sluice` binary run
//! as a user would. A daemon is killed when its fixture drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sluice::store::{JobFilter, JobRecord, JobState, Store, StoreOptions};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Directory holding every compiled test and example plugin.
pub fn built_plugins() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = repo_root();
        let out = Command::new("bash")
            .arg(root.join("scripts/build-plugins"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/build-plugins: {e}"));
        assert!(
            out.status.success(),
            "scripts/build-plugins failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        root.join("target/plugins/test")
    })
}

/// One test's world: a plugins dir with chosen plugins, a data dir, a config.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub plugins: PathBuf,
    pub data: PathBuf,
    pub config: PathBuf,
    rt: tokio::runtime::Runtime,
    store: OnceLock<Store>,
}

impl Env {
    /// `plugins`: names of built plugins to copy in (e.g. "test-counter").
    /// `config`: TOML for the config file.
    pub fn new(plugins: &[&str], config: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir_all(&plugin_dir).expect("mkdir");
        for name in plugins {
            let src = built_plugins().join(format!("{name}.wasm"));
            std::fs::copy(&src, plugin_dir.join(format!("{name}.wasm")))
                .unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        }
        let config_path = dir.path().join("sluice.toml");
        std::fs::write(&config_path, config).expect("write config");
        Env {
            plugins: plugin_dir,
            data: dir.path().join("data"),
            config: config_path,
            dir,
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime"),
            store: OnceLock::new(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("--plugins")
            .arg(&self.plugins)
            .arg("--data")
            .arg(&self.data)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("SLUICE_LOG")
            .env_remove("SLUICE_CONFIG");
        cmd
    }

    /// Runs a CLI command to completion.
    pub fn sluice(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run sluice")
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.sluice(args);
        assert!(
            out.status.success(),
            "sluice {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a CLI command with `input` on stdin.
    pub fn sluice_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write stdin");
        drop(stdin);
        child.wait_with_output().expect("wait sluice")
    }

    /// Posts one message; returns its job id.
    pub fn post(&self, channel: &str, body: &str) -> String {
        self.ok(&["post", channel, body]).trim().to_owned()
    }

    /// Starts `sluice run`; its log goes to a file in the temp dir.
    pub fn start(&self) -> Daemon {
        self.start_with_env(&[])
    }

    /// Starts `sluice run` with extra environment variables (e.g.
    /// libfaketime's `LD_PRELOAD` and `FAKETIME`: set on the daemon itself,
    /// not through the `faketime` wrapper, which forks, so that killing the
    /// daemon kills `sluice` and nothing outlives the test).
    pub fn start_with_env(&self, vars: &[(&str, &str)]) -> Daemon {
        let log = self.dir.path().join(format!("daemon-{}.log", now_nanos()));
        let file = std::fs::File::create(&log).expect("log file");
        let child = self
            .command(&["run"])
            .envs(vars.iter().copied())
            .env("SLUICE_LOG", "info")
            // Plain log lines: tests read fields like `version=2.0.0`.
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn daemon");
        Daemon {
            child: Some(child),
            log,
        }
    }

    /// Puts built plugin `built` (e.g. "test-version-1") into the plugins
    /// dir as `file` the way a careful deploy does: a temp file renamed over
    /// the target.
    pub fn deploy(&self, built: &str, file: &str) {
        let tmp = self.plugins.join(format!(".{file}.tmp"));
        std::fs::copy(built_plugins().join(format!("{built}.wasm")), &tmp).expect("copy plugin");
        std::fs::rename(&tmp, self.plugins.join(file)).expect("rename plugin");
    }

    /// Overwrites `file` in the plugins dir in place (truncate, then write),
    /// the way `cp` over an existing file does.
    pub fn overwrite(&self, file: &str, bytes: &[u8]) {
        std::fs::write(self.plugins.join(file), bytes).expect("overwrite plugin");
    }

    fn store(&self) -> &Store {
        self.store.get_or_init(|| {
            let path = self.data.join("sluice.db");
            self.rt
                .block_on(async { Store::open(&path, &StoreOptions::default()) })
                .expect("open store")
        })
    }

    /// Runs a future on this env's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Jobs on `channel` (any state), read from the real database.
    pub fn jobs(&self, channel: &str) -> Vec<JobRecord> {
        self.block_on(self.store().jobs(JobFilter {
            channel: Some(channel.to_owned()),
            limit: 1_000_000,
            ..JobFilter::default()
        }))
        .expect("jobs")
    }

    /// One job.
    pub fn job(&self, id: &str) -> JobRecord {
        self.block_on(self.store().job(id))
            .expect("job")
            .unwrap_or_else(|| panic!("no job {id}"))
    }

    /// One job, if this host has a record of it.
    pub fn try_job(&self, id: &str) -> Option<JobRecord> {
        self.block_on(self.store().job(id)).expect("job")
    }

    /// A plugin's committed state value, as UTF-8, where this host keeps
    /// it: on JetStream with `[nats] shared_state` (the default) the store
    /// every host shares, else this host's SQLite.
    pub fn state(&self, plugin: &str, key: &str) -> Option<String> {
        match self.shared_settings() {
            Some(settings) => self.shared_state(&settings, plugin, key),
            None => self.local_state(plugin, key),
        }
    }

    /// The `[nats]` settings when this env's config shares state.
    fn shared_settings(&self) -> Option<sluice::transport::JetStreamSettings> {
        let text = std::fs::read_to_string(&self.config).ok()?;
        let config: toml::Value = toml::from_str(&text).ok()?;
        let nats = config.get("nats")?;
        let shared = nats.get("shared_state").and_then(toml::Value::as_bool);
        if shared == Some(false) {
            return None;
        }
        Some(sluice::transport::JetStreamSettings {
            url: nats.get("url")?.as_str()?.to_owned(),
            ..Default::default()
        })
    }

    fn shared_state(
        &self,
        settings: &sluice::transport::JetStreamSettings,
        plugin: &str,
        key: &str,
    ) -> Option<String> {
        use sluice::state::Remote as _;
        self.block_on(async {
            // No state stream yet: no host has committed state.
            let remote = sluice::transport::SharedState::connect(settings)
                .await
                .ok()?;
            let (value, _) = remote.get(plugin, key).await.expect("shared state read");
            value.map(|v| String::from_utf8_lossy(&v).into_owned())
        })
    }

    /// A plugin's committed state value in this host's SQLite, as UTF-8.
    pub fn local_state(&self, plugin: &str, key: &str) -> Option<String> {
        self.block_on(self.store().state_get(plugin, key))
            .expect("state")
            .value
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// Waits until every job on `channel` is in a final state; returns them.
    pub fn wait_settled(&self, channel: &str, count: usize, timeout: Duration) -> Vec<JobRecord> {
        let mut last = Vec::new();
        let ok = wait_until(timeout, || {
            last = self.jobs(channel);
            last.len() == count && last.iter().all(|j| is_final(j.state))
        });
        assert!(
            ok,
            "jobs on {channel} did not settle in {timeout:?}; states: {:?}",
            last.iter().map(|j| j.state).collect::<Vec<_>>()
        );
        last
    }
}

/// Succeeded, dead, expired, cancelled.
pub fn is_final(s: JobState) -> bool {
    matches!(
        s,
        JobState::Succeeded | JobState::Dead | JobState::Expired | JobState::Cancelled
    )
}

/// A running `sluice run`; killed on drop.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    /// Sends a signal (e.g. "TERM", "KILL") to the daemon.
    pub fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// SIGTERM, then wait for exit (up to `timeout`).
    pub fn stop(mut self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "daemon did not stop within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the host dies on the spot.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// What the daemon logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines containing every one of `parts`.
    pub fn log_lines(&self, parts: &[&str]) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until at least `n` log lines contain every one of `parts`;
    /// panics with the log if that takes longer than `timeout`.
    pub fn wait_log(&self, parts: &[&str], n: usize, timeout: Duration) {
        let ok = wait_until(timeout, || self.log_lines(parts).len() >= n);
        assert!(
            ok,
            "no {n} log line(s) with {parts:?} within {timeout:?}; log:\n{}",
            self.log_text()
        );
    }
}

/// The value of `field=...` in a log line (quotes stripped).
pub fn log_field<'a>(line: &'a str, field: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {field}="))? + field.len() + 2;
    let rest = &line[at..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `f` every 20 ms until it is true or `timeout` passes.
/// A loopback port no other caller in this test process has been given,
/// free when handed out. Ports come from 20000..32000, below Linux's
/// ephemeral range (32768..), so an outgoing connection's local port or a
/// `bind(":0")` cannot take one between our check and the server's bind
/// (CI once saw a nats-server's route port equal a client port handed out
/// by `bind(":0")` a moment before). Each call moves to the next port, so
/// one process never hands out a port twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Start at a place that depends on the process id, so two test
    // processes at once (a helper's run beside CI's) rarely walk together.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN)
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A config with fast retries, for tests. test-spin's long calls need a
/// higher ceiling than the defaults (it asks for more in `describe()`).
pub const FAST: &str = r#"
poll_interval = "20ms"
drain_timeout = "10s"
[plugin.test-spin]
fuel = 10_000_000_000_000
timeout = "120s"
[policy]
backoff_initial = "20ms"
backoff_max = "100ms"
"#;

//! A throwaway `nats-server -js` for `sluice bench --transport jetstream`
//! when no `--nats URL` is given: a free loopback port, its store in a temp
//! dir, killed (by its pid) when dropped.
//!
//! Why start one rather than require it: a benchmark anyone can run with
//! one command, the same way on every box that has the binary on PATH.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A running server; stopped on drop.
pub struct NatsServer {
    child: Child,
    port: u16,
}

impl NatsServer {
    /// Starts `nats-server` from PATH with JetStream, storing under `dir`.
    pub fn start(dir: &Path) -> anyhow::Result<NatsServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .context("finding a free loopback port for nats-server")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = std::fs::File::create(dir.join("nats.log")).context("nats-server log file")?;
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("js"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting nats-server (is it on PATH? or pass --nats URL)")?;
        let mut server = NatsServer { child, port };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("nats.log")).unwrap_or_default();
                bail!("nats-server exited ({status}): {}", log.trim());
            }
            if started.elapsed() > Duration::from_secs(20) {
                server.stop();
                bail!("nats-server did not listen on port {port} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// Its client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

//! A real `nats-server` with JetStream on a free loopback port, its store in
//! a temp dir, `sync_interval: always` so a restart loses nothing it acked.
//! Killed on drop. `.ci/run` installs the binary when none is on PATH.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::wait_until;

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    let on_path = Command::new("nats-server").arg("--version").output();
    if on_path.is_ok_and(|o| o.status.success()) {
        return PathBuf::from("nats-server");
    }
    // Where scripts/test installs it, then Debian's package.
    let venv = crate::util::repo_root().join("target/nats-venv/bin/nats-server");
    let debian = PathBuf::from("/usr/sbin/nats-server");
    [venv, debian]
        .into_iter()
        .find(|p| p.exists())
        .expect("no nats-server on PATH, in target/nats-venv or /usr/sbin: run scripts/test once")
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut server = NatsServer {
            child: None,
            port,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let config = self.dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{}\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
                self.port,
                self.dir.path().join("js").display()
            ),
        )
        .expect("write nats.conf");
        let log = std::fs::File::create(self.dir.path().join("nats.log")).expect("log");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(20), || TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "nats-server did not start: {}",
            std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
        );
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and
    /// store directory.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

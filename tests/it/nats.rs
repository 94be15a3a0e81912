//! A real `nats-server` with JetStream on a free loopback port, its store in
//! a temp dir, `sync_interval: always` so a restart loses nothing it acked.
//! Killed on drop. `.ci/run` installs the binary when none is on PATH.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::{free_port, wait_until};

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// In a cluster: this node's name, its route port and its peers'.
    cluster: Option<(String, u16, Vec<u16>)>,
    /// More of the server's config file (e.g. an `authorization` block).
    extra: String,
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
        NatsServer::start_with("")
    }

    /// A server whose config file also holds `extra`.
    pub fn start_with(extra: &str) -> NatsServer {
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            cluster: None,
            extra: extra.to_owned(),
        };
        server.spawn();
        server
    }

    /// `n` servers routed into one JetStream cluster on loopback.
    pub fn cluster(n: usize) -> Vec<NatsServer> {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut nodes: Vec<NatsServer> = (0..n)
            .map(|i| NatsServer {
                child: None,
                port: free_port(),
                dir: tempfile::tempdir().expect("tempdir"),
                cluster: Some((
                    format!("n{i}"),
                    routes[i],
                    routes.iter().copied().filter(|p| *p != routes[i]).collect(),
                )),
                extra: String::new(),
            })
            .collect();
        for node in &mut nodes {
            node.spawn();
        }
        nodes
    }

    fn spawn(&mut self) {
        let config = self.dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{}\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n{}\n{}",
                self.port,
                self.dir.path().join("js").display(),
                self.cluster.as_ref().map_or(String::new(), |(name, port, peers)| {
                    let routes: Vec<String> = peers
                        .iter()
                        .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                        .collect();
                    format!(
                        "server_name: {name}\ncluster {{\n  name: sluice\n  listen: 127.0.0.1:{port}\n  routes: [{}]\n}}\n",
                        routes.join(", ")
                    )
                }),
                self.extra
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

    /// A sluice config for tests (fast retries) on this server; `extra` goes
    /// before the `[nats]` table.
    pub fn config(&self, ack_wait: &str, extra: &str) -> String {
        format!(
            "{}\n{extra}\n[nats]\nurl = \"{}\"\nack_wait = \"{ack_wait}\"\n",
            crate::util::FAST,
            self.url()
        )
    }

    /// Messages stored in `stream` on subjects matching `filter`.
    pub fn count(&self, stream: &str, filter: &str) -> usize {
        self.with_js(|js| async move {
            use futures_util::TryStreamExt;
            let Ok(stream) = js.get_stream(stream).await else {
                return 0;
            };
            let Ok(info) = stream.info_with_subjects(filter).await else {
                return 0;
            };
            let subjects: Vec<(String, usize)> = info.try_collect().await.unwrap_or_default();
            subjects.into_iter().map(|(_, n)| n).sum()
        })
    }

    /// Every message still stored in `stream`, oldest first.
    pub fn messages(&self, stream: &str) -> Vec<async_nats::jetstream::message::StreamMessage> {
        self.with_js(|js| async move {
            let Ok(mut stream) = js.get_stream(stream).await else {
                return Vec::new();
            };
            let Ok(info) = stream.info().await else {
                return Vec::new();
            };
            let (first, last) = (info.state.first_sequence, info.state.last_sequence);
            let mut out = Vec::new();
            for seq in first..=last {
                if let Ok(m) = stream.get_raw_message(seq).await {
                    out.push(m);
                }
            }
            out
        })
    }

    /// Runs `f` with a JetStream context on this server, on a throwaway
    /// runtime.
    pub fn with_js<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce(async_nats::jetstream::Context) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let url = self.url();
        rt.block_on(async move {
            let client = async_nats::connect(url).await.expect("connect");
            f(async_nats::jetstream::new(client)).await
        })
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and
    /// store directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Kills the server (SIGKILL); `start_again` brings it back on the same
    /// port and store directory.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed server again.
    pub fn start_again(&mut self) {
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

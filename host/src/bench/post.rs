//! `sluice post` as users run it: this very binary as a child process,
//! the run's N workload messages as lines on its stdin, into a fresh data
//! dir (embedded) or onto JetStream (`--nats`).
//!
//! Why the binary and not `Transport::publish`: the command is what an
//! operator pipes a backlog into, and its own work (reading and checking
//! lines, its pipelining, printing one id per line) is what issue 13's
//! figure is about. Timed from spawn to exit, so process start and opening
//! the store (or connecting) are included: a few milliseconds against the
//! fraction of a second 20,000 lines take.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::workload::Workload;

/// One `sluice post` run.
pub struct PostReport {
    /// From spawn to exit.
    pub elapsed: Duration,
    /// Ids it printed (one per queued message).
    pub queued: usize,
}

/// Runs `sluice [--nats URL] post CHANNEL` with `count` workload lines on
/// stdin, data dir `data`. Fails unless it exits 0 having printed one id
/// per line.
pub async fn run(
    data: &Path,
    nats: Option<&str>,
    channel: &str,
    workload: &Workload,
    count: usize,
) -> anyhow::Result<PostReport> {
    let mut input = Vec::with_capacity(count * 48);
    for i in 0..count {
        input.extend_from_slice(&workload.body(i));
        input.push(b'\n');
    }
    let exe = std::env::current_exe().context("finding the sluice binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("--data").arg(data);
    if let Some(url) = nats {
        cmd.args(["--nats", url]);
    }
    cmd.args(["post", channel])
        .env_remove("SLUICE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting sluice post")?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        bail!("sluice post: no pipes");
    };
    let write = async move {
        stdin.write_all(&input).await?;
        stdin.shutdown().await
    };
    let mut out = Vec::new();
    let mut err = Vec::new();
    let (written, read_out, read_err) = tokio::join!(
        write,
        stdout.read_to_end(&mut out),
        stderr.read_to_end(&mut err)
    );
    let status = child.wait().await.context("waiting for sluice post")?;
    let elapsed = started.elapsed();
    written.context("writing to sluice post")?;
    read_out.context("reading sluice post's output")?;
    read_err.context("reading sluice post's errors")?;
    let queued = out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
    if !status.success() || queued != count {
        bail!(
            "sluice post ({status}) printed {queued} ids for {count} lines: {}",
            String::from_utf8_lossy(&err).trim()
        );
    }
    Ok(PostReport { elapsed, queued })
}

/// Removes what a JetStream post run left on `channel`'s subject (nothing
/// consumes the bench's post channel), so a `--nats` server is left as it
/// was.
pub async fn purge(url: &str, channel: &str) -> anyhow::Result<()> {
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(crate::transport::STREAM)
        .await
        .context("finding the stream")?;
    stream
        .purge()
        .filter(crate::transport::wire::subject(channel))
        .await
        .context("purging the post channel")?;
    Ok(())
}

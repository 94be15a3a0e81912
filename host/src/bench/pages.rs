//! `sluice bench --dashboard-jobs N`: what each dashboard page costs with
//! N jobs in the store, against the same page with a thousand, in the same
//! run.
//!
//! A store is filled with N jobs straight through SQL (one statement over a
//! generated series: a million rows in seconds, where posting them through
//! the pump would take minutes and measure the pump), spread over eight
//! channels and every terminal and waiting state, with results, errors and
//! posts linked by `parent_id`, then the real HTTP API serves it and every
//! request a page makes is timed over loopback (connect to last byte), the
//! median and the slowest of a few rounds. The queries are index-bounded
//! (`store::listing`); this shows it holds at the size an operator has.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::stats::Percentiles;
use crate::api::client::call;
use crate::config::{Config, HttpSettings};
use crate::pump::Deps;
use crate::registry::{PluginSet, Registry};
use crate::store::{Store, StoreOptions};
use crate::transport::Embedded;

/// The small store each page is set against.
pub const BASELINE_JOBS: usize = 1_000;

/// One request's cost.
#[derive(Debug, Clone)]
pub struct Request {
    /// The page that makes it.
    pub page: &'static str,
    /// Method and path.
    pub path: String,
    /// Median and slowest, connect to last byte.
    pub p50: Duration,
    /// The slowest round.
    pub max: Duration,
    /// Response body size.
    pub bytes: usize,
}

/// One store's figures.
#[derive(Debug, Clone)]
pub struct PagesReport {
    /// Jobs in the store.
    pub jobs: usize,
    /// Time to fill it.
    pub fill: Duration,
    /// The database file's size.
    pub db_bytes: u64,
    /// Every request of every page.
    pub requests: Vec<Request>,
}

/// Fills a store under `dir` with `jobs` jobs and times every page's
/// requests `rounds` times.
pub async fn run(
    config: &Arc<Config>,
    dir: &Path,
    jobs: usize,
    rounds: usize,
) -> anyhow::Result<PagesReport> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("sluice.db");
    let store = Store::open(
        &path,
        &StoreOptions {
            outbox: false,
            ..config.store.clone()
        },
    )?;
    let began = Instant::now();
    let fill_path = path.clone();
    tokio::task::spawn_blocking(move || fill(&fill_path, jobs)).await??;
    let fill = began.elapsed();
    let db_bytes = std::fs::metadata(&path).map_or(0, |m| m.len());

    let deps = Arc::new(Deps {
        store: store.clone(),
        transport: Embedded::new(store.clone(), config.poll_interval),
        registry: Arc::new(Registry::new(PluginSet::default())),
        config: config.clone(),
        control: Default::default(),
        state: crate::state::Ledger::new(store.clone(), crate::state::DEFAULT_CACHE_BYTES),
    });
    let settings = HttpSettings {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        token: None,
        body_limit: 1 << 20,
        allowed_hosts: Vec::new(),
    };
    let stop = CancellationToken::new();
    let api = crate::api::start(&settings, deps, None, None, stop.clone()).await?;
    let addr = api.addr;
    let result = pages(addr, jobs, rounds).await;
    stop.cancel();
    api.finish().await;
    Ok(PagesReport {
        jobs,
        fill,
        db_bytes,
        requests: result?,
    })
}

/// Every request the pages make (see `api/dashboard/assets/app.js`).
async fn pages(addr: SocketAddr, jobs: usize, rounds: usize) -> anyhow::Result<Vec<Request>> {
    let get = |path: String| async move {
        let (status, body) = call(addr, "GET", &path, None).await?;
        anyhow::ensure!(status == 200, "GET {path}: {status} {body}");
        Ok::<_, anyhow::Error>(body)
    };
    // The second page of the job list, as its "Older" link asks for it.
    let first: serde_json::Value = serde_json::from_str(&get("/v1/jobs?limit=50".into()).await?)?;
    let older = first["next"]
        .as_str()
        .unwrap_or("/v1/jobs?limit=50")
        .to_owned();
    let middle = format!("job-{:08}", jobs / 2);
    let requests: Vec<(&'static str, String)> = vec![
        ("overview", "/v1/dashboard/overview?minutes=15".into()),
        ("overview", "/v1/cron".into()),
        ("jobs", "/v1/jobs?limit=50".into()),
        ("jobs", "/v1/dashboard/channels".into()),
        ("jobs", older),
        ("jobs", "/v1/jobs?limit=50&state=succeeded".into()),
        ("jobs", "/v1/jobs?limit=50&channel=bench.c3".into()),
        (
            "jobs",
            "/v1/jobs?limit=50&state=retrying&channel=bench.c3".into(),
        ),
        ("job", format!("/v1/dashboard/jobs/{middle}")),
        ("dead letters", "/v1/dead-letters?limit=50".into()),
        ("plugins", "/v1/plugins".into()),
        ("channels", "/v1/dashboard/overview?minutes=1".into()),
    ];
    let mut out = Vec::new();
    for (page, path) in requests {
        let mut nanos = Vec::with_capacity(rounds);
        let mut bytes = 0;
        for _ in 0..rounds.max(1) {
            let t = Instant::now();
            bytes = get(path.clone()).await?.len();
            nanos.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        let p = Percentiles::of_nanos(&mut nanos);
        out.push(Request {
            page,
            path,
            p50: p.p50,
            max: p.max,
            bytes,
        });
    }
    Ok(out)
}

/// `jobs` rows over eight channels: per 100, 90 succeeded, 3 dead, 2
/// queued, 2 scheduled, 1 retrying, 1 cancelled, 1 expired; one in ten
/// posted by the job before it (`parent_id`), so job pages list posts.
fn fill(path: &Path, jobs: usize) -> anyhow::Result<()> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let tx = conn.transaction()?;
    let now = crate::message::now_ms();
    let n = i64::try_from(jobs)?;
    tx.execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1)
         INSERT INTO jobs (id, message_id, channel, consumer, kind, headers, body, state,
             attempts, slices, visible_at, result, last_error, plugin_version, plugin_hash,
             fuel_used, created_at, started_at, finished_at, updated_at, parent_id)
         SELECT printf('job-%08d', i), printf('msg-%08d', i), 'bench.c' || (i % 8),
             'bench-handler-' || (i % 8), 'command',
             '[[\"traceparent\",\"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\"]]',
             CAST('{\"id\": ' || i || ', \"amount\": ' || (i % 100) || ', \"note\": \"hello\"}' AS BLOB),
             s.state, CASE WHEN s.state IN ('queued', 'scheduled') THEN 0 ELSE 1 END, 0,
             ?2 - (?1 - i) * 10,
             CASE WHEN s.state = 'succeeded' THEN '{\"amount\": ' || (i % 100) || '}' END,
             CASE WHEN s.state IN ('dead', 'retrying') THEN 'trap: amount must be a number' END,
             '0.1.0', 'sha256:0123456789abcdef', 120000 + i % 1000,
             ?2 - (?1 - i) * 10, ?2 - (?1 - i) * 10 + 1, ?2 - (?1 - i) * 10 + 2,
             ?2 - (?1 - i) * 10 + 2,
             CASE WHEN i % 10 = 1 THEN printf('job-%08d', i - 1) END
         FROM (SELECT i, CASE
                 WHEN i % 100 < 90 THEN 'succeeded'
                 WHEN i % 100 < 93 THEN 'dead'
                 WHEN i % 100 < 95 THEN 'queued'
                 WHEN i % 100 < 97 THEN 'scheduled'
                 WHEN i % 100 = 97 THEN 'retrying'
                 WHEN i % 100 = 98 THEN 'cancelled'
                 ELSE 'expired' END AS state FROM n) AS s",
        rusqlite::params![n, now],
    )?;
    tx.execute(
        "INSERT OR IGNORE INTO consumers (channel, consumer, created_at)
         SELECT 'bench.c' || value, 'bench-handler-' || value, ?1
         FROM json_each('[0,1,2,3,4,5,6,7]')",
        [now],
    )?;
    tx.commit()?;
    Ok(())
}

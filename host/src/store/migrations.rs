//! Opening the database and bringing its schema up to date.
//!
//! Migrations are an append-only list; each runs in its own transaction and
//! bumps `PRAGMA user_version`. A database newer than this code is refused
//! rather than guessed at. WAL and `synchronous` are connection pragmas and
//! are set outside any transaction.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::{StoreError, StoreOptions, Synchronous};

/// Append-only. Never edit a shipped entry: add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: jobs (the embedded queue is the jobs table), consumers, state.
    r#"
    CREATE TABLE jobs (
        id             TEXT PRIMARY KEY,
        message_id     TEXT NOT NULL,
        channel        TEXT NOT NULL,
        -- handler plugin name; '' while no handler is known for the channel
        consumer       TEXT NOT NULL,
        kind           TEXT NOT NULL,
        headers        TEXT NOT NULL,          -- JSON [[k, v], ...]
        body           BLOB NOT NULL,
        state          TEXT NOT NULL,
        attempts       INTEGER NOT NULL DEFAULT 0, -- attempts at the current slice
        slices         INTEGER NOT NULL DEFAULT 0, -- continuations committed
        visible_at     INTEGER NOT NULL,        -- ms; claimable from then on
        expires_at     INTEGER,                 -- ms; not started after this -> expired
        cursor         TEXT,
        progress       INTEGER,
        progress_note  TEXT,
        result         TEXT,
        last_error     TEXT,
        plugin_version TEXT,
        plugin_hash    TEXT,
        fuel_used      INTEGER NOT NULL DEFAULT 0, -- summed over every call
        replays        INTEGER NOT NULL DEFAULT 0,
        created_at     INTEGER NOT NULL,
        started_at     INTEGER,
        finished_at    INTEGER,
        updated_at     INTEGER NOT NULL,
        UNIQUE (message_id, consumer)
    );
    CREATE INDEX jobs_ready ON jobs (channel, consumer, visible_at)
        WHERE state IN ('queued', 'scheduled', 'retrying');
    CREATE INDEX jobs_by_state ON jobs (state, channel);
    CREATE INDEX jobs_unrouted ON jobs (channel) WHERE consumer = '';

    -- Which handler consumes which channel; survives restarts so a message
    -- posted while a handler is away still gets its copy.
    CREATE TABLE consumers (
        channel    TEXT NOT NULL,
        consumer   TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (channel, consumer)
    ) WITHOUT ROWID;

    -- Per-plugin key-value state; `version` drives optimistic concurrency.
    CREATE TABLE state (
        plugin  TEXT NOT NULL,
        key     TEXT NOT NULL,
        value   BLOB NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (plugin, key)
    ) WITHOUT ROWID;
    "#,
    // 2: the outbox, for transports that live outside this database
    // (JetStream): posts and continuations are written here in the job's
    // transaction and published by the relay after commit.
    r#"
    CREATE TABLE outbox (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT, -- publish order
        id         TEXT NOT NULL UNIQUE,  -- the broker's dedupe id (Nats-Msg-Id)
        message_id TEXT NOT NULL,
        -- NULL: a post to the channel (every handler gets it); else a
        -- continuation addressed to that handler only
        consumer   TEXT,
        channel    TEXT NOT NULL,
        kind       TEXT NOT NULL,
        headers    TEXT NOT NULL,         -- JSON [[k, v], ...]
        body       BLOB NOT NULL,
        cursor     TEXT,                  -- set on continuations
        visible_at INTEGER NOT NULL,      -- ms; published from then on
        expires_at INTEGER,
        created_at INTEGER NOT NULL,
        sent_at    INTEGER
    );
    CREATE INDEX outbox_due ON outbox (visible_at) WHERE sent_at IS NULL;
    "#,
    // 3: the daemon's view of its plugins directory (store/plugins.rs), for
    // `sluice plugins` in another process.
    r#"
    CREATE TABLE plugin_files (
        path         TEXT PRIMARY KEY,
        -- the version serving from this file; all NULL if none
        name         TEXT,
        version      TEXT,
        kind         TEXT,
        channels     TEXT,                  -- JSON array
        hash         TEXT,
        fuel         INTEGER,
        memory_bytes INTEGER,
        timeout_ms   INTEGER,
        loaded_at    INTEGER,               -- ms; when it was swapped in
        error        TEXT,                  -- why the file on disk was rejected
        updated_at   INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 4: one row the daemon rewrites for `GET /readyz`: proof that the
    // store can still commit a write (store/control.rs).
    r#"
    CREATE TABLE health (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        checked_at INTEGER NOT NULL
    );
    "#,
    // 5: the claim query orders by (visible_at, id); with id in the index
    // it walks the index and stops at its LIMIT instead of sorting every
    // due job on each claim (a backlog drained in quadratic time).
    r#"
    DROP INDEX jobs_ready;
    CREATE INDEX jobs_ready ON jobs (channel, consumer, visible_at, id)
        WHERE state IN ('queued', 'scheduled', 'retrying');
    "#,
    // 6: what each serving plugin asked for in describe(), next to the
    // limits in force (the operator's ceiling caps the ask).
    r#"
    ALTER TABLE plugin_files ADD COLUMN asked_fuel INTEGER;
    ALTER TABLE plugin_files ADD COLUMN asked_memory_bytes INTEGER;
    ALTER TABLE plugin_files ADD COLUMN asked_timeout_ms INTEGER;
    "#,
    // 7: the dashboard's queries (store/listing.rs), each an index range
    // that stops at its LIMIT however many jobs the file holds: jobs newest
    // first per channel, and per (state, channel); which job posted a
    // message (embedded: the posted jobs; JetStream: the outbox rows).
    // `jobs_by_state` keeps its (state, channel) prefix, so the statements
    // that used it still do; the two new indexes change only on insert.
    r#"
    ALTER TABLE jobs ADD COLUMN parent_id TEXT;
    ALTER TABLE outbox ADD COLUMN job_id TEXT;
    DROP INDEX jobs_by_state;
    CREATE INDEX jobs_by_state ON jobs (state, channel, created_at, id);
    CREATE INDEX jobs_by_channel ON jobs (channel, created_at, id);
    CREATE INDEX jobs_by_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL;
    CREATE INDEX outbox_by_job ON outbox (job_id) WHERE job_id IS NOT NULL;
    "#,
    // 8: poison rows (store/outbox.rs). A row the broker refuses for a
    // reason of its own (too large, bad header or subject) is set aside
    // (`failed_at`, `error`) instead of being retried at the head of the
    // outbox forever; one refused for a reason that may pass is retried
    // later (`retry_at`), counting `attempts`.
    r#"
    ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE outbox ADD COLUMN retry_at INTEGER;
    ALTER TABLE outbox ADD COLUMN failed_at INTEGER;
    ALTER TABLE outbox ADD COLUMN error TEXT;
    DROP INDEX outbox_due;
    CREATE INDEX outbox_due ON outbox (visible_at) WHERE sent_at IS NULL AND failed_at IS NULL;
    CREATE INDEX outbox_poisoned ON outbox (failed_at) WHERE failed_at IS NOT NULL;
    "#,
    // 9: state tombstones and per-job conflict counts. A delete now keeps
    // the key's row with a NULL value and a new version, and versions come
    // from one counter for the file, so a key's version never repeats
    // (store/state.rs). `updated_at` lets old tombstones be pruned.
    r#"
    CREATE TABLE state_v9 (
        plugin     TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      BLOB,                       -- NULL: deleted (a tombstone)
        version    INTEGER NOT NULL,           -- never reused within the file
        updated_at INTEGER NOT NULL DEFAULT 0, -- ms
        PRIMARY KEY (plugin, key)
    ) WITHOUT ROWID;
    INSERT INTO state_v9 (plugin, key, value, version)
        SELECT plugin, key, value, version FROM state;
    DROP TABLE state;
    ALTER TABLE state_v9 RENAME TO state;
    -- how many times a job's commit met state another job had changed
    ALTER TABLE jobs ADD COLUMN conflicts INTEGER NOT NULL DEFAULT 0;
    "#,
    // 10: the last JetStream delivery a host took of a job's message (its
    // stream sequence and the server's delivery count), so deliveries made
    // to other hosts in between (which died, or lost the message) count as
    // attempts here (store/inbox.rs).
    r#"
    ALTER TABLE jobs ADD COLUMN delivery_seq INTEGER;
    ALTER TABLE jobs ADD COLUMN delivery_count INTEGER;
    "#,
    // 11: where each `[[cron]]` entry stands (crate::cron::Record as JSON),
    // moved by compare-and-set on `revision` (store/cron.rs).
    r#"
    CREATE TABLE cron (
        name       TEXT PRIMARY KEY,
        record     TEXT NOT NULL,
        revision   INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 12: uniqueness keys (`sluice-unique`): the message holding each, per
    // channel, until its jobs end or `expires_at` (store/unique.rs).
    r#"
    CREATE TABLE unique_keys (
        channel    TEXT NOT NULL,
        key        TEXT NOT NULL,
        message_id TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (channel, key)
    ) WITHOUT ROWID;
    "#,
    // 13: debounce keys (`sluice-debounce`): the message whose job waits
    // out the key's window, per channel (store/debounce.rs).
    r#"
    CREATE TABLE debounce_keys (
        channel    TEXT NOT NULL,
        key        TEXT NOT NULL,
        message_id TEXT NOT NULL,
        PRIMARY KEY (channel, key)
    ) WITHOUT ROWID;
    "#,
    // 14: message priorities (`sluice-priority`, 0-9) for the claim
    // order (store/priority.rs). Only jobs above 0 are in the index, so
    // the message path of a queue without priorities updates no index.
    r#"
    ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_urgent ON jobs (channel, consumer, priority DESC, visible_at, id)
        WHERE priority > 0 AND state IN ('queued', 'scheduled', 'retrying');
    "#,
    // 15: the retention prune of uniqueness and debounce keys (review
    // #11: one row per key ever used stayed forever): an expired unique
    // key is as good as none; a debounce key is dropped once it is older
    // than the retention and its message waits no more.
    r#"
    CREATE INDEX unique_keys_expiry ON unique_keys (expires_at);
    ALTER TABLE debounce_keys ADD COLUMN created_at INTEGER NOT NULL DEFAULT 0;
    UPDATE debounce_keys SET created_at = CAST(unixepoch('subsec') * 1000 AS INTEGER);
    CREATE INDEX debounce_keys_age ON debounce_keys (created_at);
    "#,
    // 16: plugins whose state this host moved to the shared store on
    // JetStream (`[nats] shared_state`), once each (store/state_moved.rs).
    r#"
    CREATE TABLE state_moved (
        plugin    TEXT PRIMARY KEY,
        moved_at  INTEGER NOT NULL, -- ms
        moved     INTEGER NOT NULL, -- keys stored in the shared store
        kept      INTEGER NOT NULL, -- keys it had already (its value kept)
        left_here INTEGER NOT NULL  -- keys too large to move (still here)
    ) WITHOUT ROWID;
    "#,
];

/// How many prepared statements a connection keeps (more than the store
/// has, so none is parsed twice).
pub(super) const STATEMENT_CACHE: usize = 128;

/// The schema version this build writes.
pub(super) fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

/// Opens the file, sets pragmas, migrates.
pub(super) fn open(path: &Path, options: &StoreOptions) -> Result<Connection, StoreError> {
    let open_err = |reason: String| StoreError::Open {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
    }
    let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
    conn.busy_timeout(options.busy_timeout)
        .map_err(|e| open_err(e.to_string()))?;
    let mode = switch_to_wal(&conn, options.busy_timeout)
        .map_err(|e| open_err(format!("not a usable SQLite database: {e}")))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(open_err(format!(
            "cannot switch to WAL (journal_mode is {mode})"
        )));
    }
    let sync = match options.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;"
    ))
    .map_err(|e| open_err(e.to_string()))?;
    // The writer runs some 60 distinct statements (claims, finishes, the
    // inbox, the outbox, state); rusqlite keeps 16 prepared by default, so
    // a JetStream round evicted and parsed statements again.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    migrate(&conn, path)?;
    Ok(conn)
}

/// `PRAGMA journal_mode = WAL`, retried while the file is busy, up to
/// `patience`. Two connections switching a new file to WAL at once (the
/// daemon starting while `sluice post` runs) would deadlock on the file
/// lock, so SQLite answers one of them SQLITE_BUSY at once instead of
/// calling the busy handler; that one waits a moment and asks again, by
/// which time the other has switched the file.
fn switch_to_wal(conn: &Connection, patience: Duration) -> rusqlite::Result<String> {
    let deadline = Instant::now() + patience;
    let mut pause = Duration::from_millis(1);
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)) {
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Applies the migrations the file lacks, one transaction each. The
/// version is read inside the write transaction, so two processes opening
/// a new file at once (the daemon starting while `sluice post` runs) do not
/// both apply the same migration: the second waits for the first's lock,
/// then sees its version.
fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    loop {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let step = next_migration(conn, path);
        let done = match step {
            Ok(None) => {
                conn.execute_batch("COMMIT")?;
                return Ok(());
            }
            Ok(Some(version)) => {
                let sql = MIGRATIONS[version as usize - 1];
                conn.execute_batch(&format!("{sql}; PRAGMA user_version = {version}; COMMIT;"))
                    .map_err(|e| StoreError::Sql(format!("migration {version} failed: {e}")))
            }
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
}

/// The next migration to apply (1-based), or `None` when up to date.
fn next_migration(conn: &Connection, path: &Path) -> Result<Option<i64>, StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > latest() {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: current,
            supported: latest(),
        });
    }
    Ok((current < latest()).then_some(current + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_a_new_file_and_reopens_it() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.db");
        let conn = open(&path, &StoreOptions::default())?;
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        assert_eq!(v, latest());
        drop(conn);
        let conn = open(&path, &StoreOptions::default())?;
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        assert_eq!(mode, "wal");
        Ok(())
    }

    #[test]
    fn refuses_a_database_newer_than_the_code() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.db");
        let conn = open(&path, &StoreOptions::default())?;
        conn.execute_batch(&format!("PRAGMA user_version = {}", latest() + 1))?;
        drop(conn);
        match open(&path, &StoreOptions::default()) {
            Err(StoreError::TooNew { found, .. }) => assert_eq!(found, latest() + 1),
            other => panic!("expected TooNew, got {:?}", other.map(|_| ())),
        }
        Ok(())
    }

    /// The daemon starting while `sluice post` runs: processes that open a
    /// new file at the same moment all get a migrated WAL database. (Two
    /// connections switching a new file to WAL at once make SQLite answer
    /// one of them "database is locked" without waiting.)
    #[test]
    fn concurrent_openers_of_a_new_file_all_succeed() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        for round in 0..20 {
            let path = dir.path().join(format!("s{round}.db"));
            let start = std::sync::Arc::new(std::sync::Barrier::new(4));
            let openers: Vec<_> = (0..4)
                .map(|_| {
                    let (path, start) = (path.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        open(&path, &StoreOptions::default()).map(|_| ())
                    })
                })
                .collect();
            for opener in openers {
                match opener.join() {
                    Ok(result) => result?,
                    Err(_) => return Err("an opener panicked".into()),
                }
            }
        }
        Ok(())
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_a_clear_error() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.db");
        std::fs::write(
            &path,
            b"this is not a database, just some text that is long enough",
        )?;
        let err = open(&path, &StoreOptions::default()).err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("s.db"), "{msg}");
        Ok(())
    }
}

//! The only code that speaks SQL.
//!
//! One SQLite file in WAL mode holds job state, per-plugin state, and (on the
//! embedded transport) the queue itself: a queued job *is* its message. All
//! access goes through one dedicated writer thread fed by a channel, never a
//! tokio worker: SQLite calls block, and one writer is what SQLite wants
//! anyway.
//!
//! **Group commit.** The thread takes whatever operations are waiting (up to
//! [`MAX_BATCH`]), runs each inside its own SAVEPOINT of ONE transaction, and
//! commits once; only then does it answer the callers. So a caller never acks
//! a message before its effects are durable, and durability costs one fsync
//! per batch, not per job. An operation that fails rolls back its own
//! savepoint only.
//!
//! Operations run in the order they were submitted, which the state ledger
//! relies on (`Store::submit_finish`).
//!
//! **Reads for operators** (job lists, a job, counts, the dashboard, the
//! outbox lag, the plugin view; not yet the outbox listing) and a state key
//! the ledger does not hold run on a second, read-only connection on its own
//! thread (`reader`), so they never wait for a group commit or hold one up,
//! and a CLI process reading the daemon's file never takes its write lock.
//! Every query behind them walks an
//! index and stops at a limit (`listing`), so they stay fast with millions
//! of jobs in the file.

mod cluster;
mod control;
mod cron;
mod debounce;
mod finish;
mod flow;
mod inbox;
mod jobs;
mod listing;
mod migrations;
mod outbox;
mod plugins;
mod priority;
mod reader;
mod records;
mod state;
mod state_moved;
mod unique;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

pub use cluster::{EndedElsewhere, RemoteCancel, Waiting};
pub use control::{Cancel, OutboxLag};
pub use finish::next_slice;
pub use flow::GatedReceipt;
pub use inbox::{Delivered, Received, ServerDelivery, is_job_id, job_id_for};
pub use jobs::{CallRecord, Commit, Finish, FinishResult, JobFilter, NewMessage, Published};
pub use listing::{CENSUS_BUDGET, COUNT_CAP, Census, ChannelCensus, Posted};
pub use outbox::{MAX_ATTEMPTS as OUTBOX_MAX_ATTEMPTS, OutboxFilter, OutboxRow, RelayOutcome};
pub use plugins::{PluginFile, ServingPlugin};
pub use records::{ClaimedJob, JobRecord, JobState};
pub use state::{StateChange, StateCommit, StateValue};
pub use state_moved::Moved;

use reader::Reader;
use writer::Writer;

/// How many operations one transaction may group.
pub const MAX_BATCH: usize = 512;

/// The writer thread's name (what `top -H` and `perf` show; the bench
/// reads its CPU time by it).
pub const WRITER_THREAD: &str = "sluice-store";

/// SQLite's `synchronous` level: how often it fsyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: a committed job survives power loss. The default,
    /// made cheap by group commit.
    #[default]
    Full,
    /// fsync at checkpoints only: survives a process crash, may lose the last
    /// commits on power loss.
    Normal,
}

/// Options for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// fsync policy.
    pub synchronous: Synchronous,
    /// How long a writer waits for another process's lock (e.g. `sluice post`
    /// while the daemon runs).
    pub busy_timeout: Duration,
    /// Where a committed call's posts go: `false`, straight into the jobs
    /// table (the embedded queue); `true`, into the outbox for a relay to
    /// publish on an external transport.
    pub outbox: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(10),
            outbox: false,
        }
    }
}

/// Everything that can go wrong in the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Opening or preparing the database file failed.
    #[error("cannot open database {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file was written by a newer Sluice.
    #[error(
        "database {path} has schema version {found}, newer than this sluice understands ({supported}); upgrade sluice"
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// A statement failed.
    #[error("database error: {0}")]
    Sql(String),
    /// A row held something this build cannot read.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The writer thread is gone (shutting down).
    #[error("the store is closed")]
    Closed,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sql(e.to_string())
    }
}

/// A handle on the database; cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Store {
    writer: Writer,
    reader: Reader,
    path: PathBuf,
    outbox: bool,
    /// The last state version handed out (see `state.rs`).
    versions: Arc<AtomicI64>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, migrates it, and
    /// starts the writer thread.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let conn = migrations::open(path, options)?;
        let versions = Arc::new(AtomicI64::new(state::max_version(&conn)?));
        Ok(Store {
            writer: Writer::spawn(conn, path)?,
            reader: Reader::spawn(path, options.busy_timeout)?,
            path: path.to_path_buf(),
            outbox: options.outbox,
            versions,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the writer thread inside a savepoint of the current group
    /// transaction, and answers once that transaction has committed.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.call(f).await
    }

    /// Runs the query `f` on the reader thread, in a read transaction of
    /// its own: it sees every committed write and never waits for (or holds
    /// up) the group commit. For operators' reads, and the state ledger's
    /// reads of keys it does not hold (quick, by primary key).
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.reader.call(f).await
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_keys;

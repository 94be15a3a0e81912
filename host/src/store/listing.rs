//! The reads operators page through: jobs newest first (filtered by state
//! and channel), a census of the jobs waiting, running and dead per
//! channel, and the messages a job posted. The CLI, the API, `/metrics` and the
//! dashboard all read through these.
//!
//! **Every query walks an index and stops at a limit**, so a page costs
//! the same with a thousand jobs in the file or with ten million. Each
//! statement names its index (`INDEXED BY`): a schema change that drops one
//! is an error in the tests, not a silent table scan in production.
//!
//! - A page of jobs is the newest `limit` of each channel's index range
//!   (`jobs_by_channel`, or `jobs_by_state` with a state), merged: at most
//!   channels x limit index entries, then `limit` row lookups. Without a
//!   channel filter the channels come from a skip scan of the same index
//!   (one seek per channel), so no index ordered by time alone is needed;
//!   the message path pays only for indexes it updates anyway or that
//!   change on insert only.
//! - Counts stop at a cap, meaning "at least": exact counts of a big
//!   backlog would read the whole backlog on every refresh, and the order
//!   of magnitude is what an operator acts on. `/metrics` caps each
//!   (channel, state) at [`COUNT_CAP`]. The dashboard's census has a
//!   budget instead ([`CENSUS_BUDGET`] index entries in all, whatever the
//!   number of channels): each count is exact up to a share of it, and the
//!   budget the small counts left is shared by the ones that reached their
//!   share (`at_least` names the counts that are floors). Per-job counters
//!   kept by triggers would be exact and free to read, but cost the
//!   message path two or three more row writes per job (measured: tens of
//!   microseconds on a writer that has ~40 per job), so they are not kept.
//!
//! All of it runs on the reader thread (`Store::read`), never the writer.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::jobs::{JobFilter, RECORD_COLUMNS, record};
use super::records::{JobRecord, JobState};
use super::{Store, StoreError};

/// Where counts stop: a count of exactly this many means "at least".
pub const COUNT_CAP: u64 = 10_000;

/// Most index entries a budgeted census ([`Store::census_within`]) counts,
/// over every channel and state: ~3 ms of the reader thread.
pub const CENSUS_BUDGET: u64 = 40_000;

/// A budgeted census counts each (channel, state) exactly up to at least
/// this many, however many channels there are (so at most
/// `MAX_CHANNELS` x 5 x this, which the budget covers).
const MIN_SHARE: u64 = 8;

/// Most channels a listing or census looks at.
const MAX_CHANNELS: usize = 1_000;

/// Most posts [`Store::posts_of`] returns for one job.
const MAX_POSTS: usize = 500;

/// The states a census counts: the ones an operator acts on. Finished
/// jobs are history; the dashboard plots their rate instead.
const CENSUS_STATES: [JobState; 5] = [
    JobState::Queued,
    JobState::Scheduled,
    JobState::Retrying,
    JobState::Running,
    JobState::Dead,
];

/// One channel's jobs by state, each count capped at [`COUNT_CAP`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChannelCensus {
    /// The channel.
    pub channel: String,
    /// Waiting to run now.
    pub queued: u64,
    /// Waiting for a launch time (a delay, or the next slice).
    pub scheduled: u64,
    /// Waiting for the next attempt after a failure.
    pub retrying: u64,
    /// Running (on this host, or claimed by a host that stopped).
    pub running: u64,
    /// Dead letters.
    pub dead: u64,
    /// The states whose count above is a floor ("at least"): it reached
    /// the cap the census had for it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub at_least: Vec<JobState>,
}

impl ChannelCensus {
    /// The count of `state` (one of the census's states; else dead).
    pub fn get(&self, state: JobState) -> u64 {
        match state {
            JobState::Queued => self.queued,
            JobState::Scheduled => self.scheduled,
            JobState::Retrying => self.retrying,
            JobState::Running => self.running,
            _ => self.dead,
        }
    }

    fn set(&mut self, state: JobState, n: u64) {
        match state {
            JobState::Queued => self.queued = n,
            JobState::Scheduled => self.scheduled = n,
            JobState::Retrying => self.retrying = n,
            JobState::Running => self.running = n,
            _ => self.dead = n,
        }
    }
}

/// The overview's numbers, read in one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Census {
    /// Every channel with jobs in the store, by name.
    pub channels: Vec<ChannelCensus>,
    /// More channels than the census looks at ([`MAX_CHANNELS`]).
    pub more_channels: bool,
    /// Outbox rows committed but not yet published, poison rows (set aside,
    /// see `sluice outbox list --poisoned`) not counted (capped).
    pub outbox_pending: u64,
    /// Unix ms of the oldest of them (among the first [`COUNT_CAP`]).
    pub outbox_oldest_ms: Option<i64>,
}

/// A message a job posted (or the next slice it scheduled), and what
/// became of it here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Posted {
    /// The posted message's id.
    pub message_id: String,
    /// Its channel.
    pub channel: String,
    /// The job it became on this host (one per handler); `None` on
    /// JetStream until this host receives it, or when another host does.
    pub job_id: Option<String>,
    /// That job's handler.
    pub handler: Option<String>,
    /// That job's state.
    pub state: Option<JobState>,
    /// True for the next slice of the posting job itself (JetStream).
    pub continuation: bool,
    /// On JetStream: when the outbox relay published it (`None`: pending).
    pub sent_at: Option<i64>,
    /// Unix ms.
    pub created_at: i64,
}

impl Store {
    /// Jobs matching `filter`, newest first, strictly older than the job
    /// `before` names as `(created_at, id)`: keyset paging, so a page is
    /// stable while new jobs arrive.
    pub async fn jobs_page(
        &self,
        filter: JobFilter,
        before: Option<(i64, String)>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        self.read(move |conn| page(conn, &filter, before)).await
    }

    /// Waiting, running and dead jobs per channel, each count capped at
    /// [`COUNT_CAP`], and the outbox lag.
    pub async fn census(&self) -> Result<Census, StoreError> {
        self.read(|conn| census(conn, None)).await
    }

    /// [`Store::census`] counting at most about `budget` index entries in
    /// all (twice that at worst), shared between the counts; what a count
    /// reached its share is in its channel's `at_least`.
    pub async fn census_within(&self, budget: u64) -> Result<Census, StoreError> {
        self.read(move |conn| census(conn, Some(budget))).await
    }

    /// The channels with jobs in the store, by name (a skip scan: one
    /// index seek each); `true` when there are more than it returns.
    pub async fn channel_names(&self) -> Result<(Vec<String>, bool), StoreError> {
        self.read(|conn| channels(conn, None)).await
    }

    /// The messages job `id` posted (and, on JetStream, its continuations),
    /// oldest first; `true` when there are more than this returns.
    pub async fn posts_of(&self, id: &str) -> Result<(Vec<Posted>, bool), StoreError> {
        let id = id.to_owned();
        self.read(move |conn| posts_of(conn, &id)).await
    }
}

fn page(
    conn: &Connection,
    filter: &JobFilter,
    before: Option<(i64, String)>,
) -> Result<Vec<JobRecord>, StoreError> {
    let limit = if filter.limit == 0 { 100 } else { filter.limit };
    // No real job has this key, and every real one sorts below it.
    let (at, id) = before.unwrap_or((i64::MAX, String::new()));
    let state = filter.state.map(JobState::as_str);
    let channels = match &filter.channel {
        Some(c) => vec![c.clone()],
        None => channels(conn, state)?.0,
    };
    let sql = match state {
        Some(_) => {
            "SELECT created_at, id FROM jobs INDEXED BY jobs_by_state
             WHERE state = ?1 AND channel = ?2 AND (created_at, id) < (?3, ?4)
             ORDER BY created_at DESC, id DESC LIMIT ?5"
        }
        None => {
            "SELECT created_at, id FROM jobs INDEXED BY jobs_by_channel
             WHERE ?1 IS NULL AND channel = ?2 AND (created_at, id) < (?3, ?4)
             ORDER BY created_at DESC, id DESC LIMIT ?5"
        }
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let mut keys: Vec<(i64, String)> = Vec::new();
    let sql_limit = i64::try_from(limit).unwrap_or(i64::MAX);
    for channel in &channels {
        let rows = stmt.query_map(params![state, channel, at, id, sql_limit], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            keys.push(row?);
        }
        // Only the newest `limit` overall can make the page.
        if keys.len() > limit.saturating_mul(4) {
            newest_first(&mut keys, limit);
        }
    }
    newest_first(&mut keys, limit);
    let sql = format!("SELECT {RECORD_COLUMNS} FROM jobs WHERE id = ?1");
    let mut one = conn.prepare_cached(&sql)?;
    let mut out = Vec::with_capacity(keys.len());
    for (_, id) in keys {
        if let Some(job) = one.query_row(params![id], record).optional()? {
            out.push(job?);
        }
    }
    Ok(out)
}

/// `n` with all but its two leading digits zeroed (12,345 -> 12,000), so
/// a cap reads as a round "at least".
fn round_down(n: u64) -> u64 {
    let mut unit = 1;
    while n / unit >= 100 {
        unit *= 10;
    }
    n / unit * unit
}

/// Sorts `(created_at, id)` keys newest first and keeps `limit`.
fn newest_first(keys: &mut Vec<(i64, String)>, limit: usize) {
    keys.sort_unstable_by(|a, b| b.cmp(a));
    keys.truncate(limit);
}

/// The channels that have jobs (in `state`, if given), by name: a skip scan,
/// one index seek per channel. `true` when there are more than
/// [`MAX_CHANNELS`].
fn channels(conn: &Connection, state: Option<&str>) -> Result<(Vec<String>, bool), StoreError> {
    let sql = match state {
        Some(_) => {
            "SELECT channel FROM jobs INDEXED BY jobs_by_state
             WHERE state = ?1 AND channel > ?2 ORDER BY channel LIMIT 1"
        }
        None => {
            "SELECT channel FROM jobs INDEXED BY jobs_by_channel
             WHERE ?1 IS NULL AND channel > ?2 ORDER BY channel LIMIT 1"
        }
    };
    let mut next = conn.prepare_cached(sql)?;
    let mut out: Vec<String> = Vec::new();
    let mut after = String::new();
    loop {
        let found: Option<String> = next
            .query_row(params![state, after], |r| r.get(0))
            .optional()?;
        let Some(channel) = found else {
            return Ok((out, false));
        };
        if out.len() == MAX_CHANNELS {
            return Ok((out, true));
        }
        after.clone_from(&channel);
        out.push(channel);
    }
}

/// The census; `budget`: see [`Store::census_within`] (`None`: every
/// count capped at [`COUNT_CAP`]).
fn census(conn: &Connection, budget: Option<u64>) -> Result<Census, StoreError> {
    let (names, more_channels) = channels(conn, None)?;
    let mut count = conn.prepare_cached(
        "SELECT COUNT(*) FROM (SELECT 1 FROM jobs INDEXED BY jobs_by_state
             WHERE state = ?1 AND channel = ?2 LIMIT ?3)",
    )?;
    let mut counted = |channel: &str, state: JobState, cap: u64| -> Result<u64, StoreError> {
        let cap = i64::try_from(cap).unwrap_or(i64::MAX);
        let n: i64 = count.query_row(params![state.as_str(), channel, cap], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    let cells = (names.len() * CENSUS_STATES.len()).max(1) as u64;
    // Everyone's share first; then the budget the small counts left goes
    // to the counts that reached their share, counted again that far.
    let share = budget.map_or(COUNT_CAP, |b| {
        round_down(b / cells).clamp(MIN_SHARE, COUNT_CAP)
    });
    let mut channels = Vec::with_capacity(names.len());
    let mut spent = 0;
    let mut full: Vec<(usize, JobState)> = Vec::new();
    for (i, channel) in names.into_iter().enumerate() {
        let mut c = ChannelCensus {
            channel,
            ..ChannelCensus::default()
        };
        for state in CENSUS_STATES {
            let n = counted(&c.channel, state, share)?;
            spent += n;
            c.set(state, n);
            if n >= share {
                full.push((i, state));
            }
        }
        channels.push(c);
    }
    let mut cap = share;
    if let Some(budget) = budget
        && !full.is_empty()
        && spent < budget
    {
        let more = round_down(share + (budget - spent) / full.len() as u64).min(COUNT_CAP);
        if more > share {
            cap = more;
            for &(i, state) in &full {
                let n = counted(&channels[i].channel, state, cap)?;
                channels[i].set(state, n);
            }
        }
    }
    for (i, state) in full {
        let c = &mut channels[i];
        if c.get(state) >= cap {
            c.at_least.push(state);
        }
    }
    let cap = i64::try_from(COUNT_CAP).unwrap_or(i64::MAX);
    let (pending, oldest): (i64, Option<i64>) = conn
        .prepare_cached(
            "SELECT COUNT(*), MIN(created_at) FROM (SELECT created_at FROM outbox
                 INDEXED BY outbox_due WHERE sent_at IS NULL AND failed_at IS NULL LIMIT ?1)",
        )?
        .query_row(params![cap], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(Census {
        channels,
        more_channels,
        outbox_pending: u64::try_from(pending).unwrap_or(0),
        outbox_oldest_ms: oldest,
    })
}

fn posts_of(conn: &Connection, id: &str) -> Result<(Vec<Posted>, bool), StoreError> {
    let take = i64::try_from(MAX_POSTS + 1).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    // Embedded: the posts are jobs here.
    let mut jobs = conn.prepare_cached(
        "SELECT message_id, channel, id, consumer, state, created_at
         FROM jobs INDEXED BY jobs_by_parent WHERE parent_id = ?1
         ORDER BY created_at, id LIMIT ?2",
    )?;
    let rows = jobs.query_map(params![id, take], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    for row in rows {
        let (message_id, channel, job_id, handler, state, created_at) = row?;
        out.push(Posted {
            message_id,
            channel,
            job_id: Some(job_id),
            handler: Some(handler).filter(|h| !h.is_empty()),
            state: JobState::parse(&state),
            continuation: false,
            sent_at: None,
            created_at,
        });
    }
    // JetStream: the posts are outbox rows; a host that received one has
    // a job for it (one per handler).
    let mut outbox = conn.prepare_cached(
        "SELECT message_id, channel, consumer, sent_at, created_at
         FROM outbox INDEXED BY outbox_by_job WHERE job_id = ?1 ORDER BY seq LIMIT ?2",
    )?;
    let mut local = conn.prepare_cached(
        "SELECT id, consumer, state FROM jobs WHERE message_id = ?1 ORDER BY consumer LIMIT 16",
    )?;
    let rows = outbox.query_map(params![id, take], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    for row in rows {
        let (message_id, channel, consumer, sent_at, created_at) = row?;
        let posted = |job: Option<(String, String, String)>| Posted {
            message_id: message_id.clone(),
            channel: channel.clone(),
            handler: job.as_ref().map(|j| j.1.clone()).or(consumer.clone()),
            state: job.as_ref().and_then(|j| JobState::parse(&j.2)),
            job_id: job.map(|j| j.0),
            continuation: consumer.is_some(),
            sent_at,
            created_at,
        };
        if consumer.is_some() {
            out.push(posted(None));
            continue;
        }
        let found = local
            .query_map(params![message_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<Vec<(String, String, String)>, _>>()?;
        if found.is_empty() {
            out.push(posted(None));
        }
        for job in found {
            out.push(posted(Some(job)));
        }
    }
    let more = out.len() > MAX_POSTS;
    out.truncate(MAX_POSTS);
    Ok((out, more))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, MessageKind};
    use crate::store::{CallRecord, Commit, Finish, NewMessage, StoreOptions};

    fn msg(id: &str, channel: &str) -> NewMessage {
        NewMessage {
            message: Message {
                id: id.into(),
                channel: channel.into(),
                kind: MessageKind::Command,
                headers: vec![],
                body: b"{}".to_vec(),
            },
            visible_at: 0,
            expires_at: None,
        }
    }

    fn open() -> Result<(tempfile::TempDir, Store), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Sql(e.to_string()))?;
        let store = Store::open(&dir.path().join("s.db"), &StoreOptions::default())?;
        Ok((dir, store))
    }

    #[tokio::test]
    async fn pages_merge_channels_newest_first_and_filter() -> Result<(), StoreError> {
        let (_dir, store) = open()?;
        store
            .register_consumers(vec![("a".into(), "h".into()), ("b.c".into(), "h".into())])
            .await?;
        for i in 0..7 {
            let channel = if i % 2 == 0 { "a" } else { "b.c" };
            store.publish(vec![msg(&format!("m{i}"), channel)]).await?;
        }
        let all = store.jobs(JobFilter::default()).await?;
        assert_eq!(all.len(), 7);
        let keys: Vec<(i64, String)> = all.iter().map(|j| (j.created_at, j.id.clone())).collect();
        let mut sorted = keys.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(keys, sorted, "newest first across channels");
        // Filters, and the cursor continues where a page ended.
        let a = store
            .jobs(JobFilter {
                channel: Some("a".into()),
                ..JobFilter::default()
            })
            .await?;
        assert_eq!(a.len(), 4);
        assert!(a.iter().all(|j| j.channel == "a"));
        let claimed = store.claim("b.c", "h", 1).await?;
        let running = store
            .jobs(JobFilter {
                state: Some(JobState::Running),
                ..JobFilter::default()
            })
            .await?;
        assert_eq!(
            running.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
            vec![claimed[0].job_id.clone()]
        );
        let first = store
            .jobs_page(
                JobFilter {
                    limit: 3,
                    ..JobFilter::default()
                },
                None,
            )
            .await?;
        let last = first.last().map(|j| (j.created_at, j.id.clone()));
        let second = store
            .jobs_page(
                JobFilter {
                    limit: 3,
                    ..JobFilter::default()
                },
                last,
            )
            .await?;
        let ids: Vec<String> = first.iter().chain(&second).map(|j| j.id.clone()).collect();
        assert_eq!(
            ids,
            keys[..6].iter().map(|k| k.1.clone()).collect::<Vec<_>>()
        );
        Ok(())
    }

    #[tokio::test]
    async fn census_counts_by_channel_and_caps() -> Result<(), StoreError> {
        let (_dir, store) = open()?;
        store
            .register_consumers(vec![("a".into(), "h".into())])
            .await?;
        store
            .publish((0..3).map(|i| msg(&format!("m{i}"), "a")).collect())
            .await?;
        store.publish(vec![msg("u", "nobody.home")]).await?;
        let claimed = store.claim("a", "h", 1).await?;
        store
            .finish(
                &claimed[0].job_id,
                1,
                CallRecord::default(),
                Finish::Dead { error: "x".into() },
            )
            .await?;
        let census = store.census().await?;
        assert_eq!(
            census.channels,
            vec![
                ChannelCensus {
                    channel: "a".into(),
                    queued: 2,
                    dead: 1,
                    ..ChannelCensus::default()
                },
                ChannelCensus {
                    channel: "nobody.home".into(),
                    queued: 1,
                    ..ChannelCensus::default()
                },
            ]
        );
        assert_eq!((census.outbox_pending, census.more_channels), (0, false));
        Ok(())
    }

    #[tokio::test]
    async fn a_budgeted_census_shares_its_budget_and_marks_floors() -> Result<(), StoreError> {
        let (_dir, store) = open()?;
        store
            .publish((0..300).map(|i| msg(&format!("b{i}"), "big")).collect())
            .await?;
        store
            .publish((0..5).map(|i| msg(&format!("s{i}"), "small")).collect())
            .await?;
        let queued = |c: &Census| -> Vec<(u64, Vec<JobState>)> {
            c.channels
                .iter()
                .map(|c| (c.queued, c.at_least.clone()))
                .collect()
        };
        // 10 counts share 100 entries: 10 each, then what "small" left
        // goes to "big", which is still more: a floor, and said so.
        let tight = store.census_within(100).await?;
        assert_eq!(
            queued(&tight),
            vec![(95, vec![JobState::Queued]), (5, vec![])]
        );
        // With room, the big count is exact again.
        let roomy = store.census_within(1_000).await?;
        assert_eq!(queued(&roomy), vec![(300, vec![]), (5, vec![])]);
        // The unbudgeted census (/metrics) caps each count at COUNT_CAP.
        assert_eq!(queued(&store.census().await?), queued(&roomy));
        assert_eq!(
            (round_down(12_345), round_down(99), round_down(4_999)),
            (12_000, 99, 4_900)
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_jobs_posts_are_found_from_the_job() -> Result<(), StoreError> {
        let (_dir, store) = open()?;
        store
            .register_consumers(vec![
                ("a".into(), "h".into()),
                ("b".into(), "x".into()),
                ("b".into(), "y".into()),
            ])
            .await?;
        store.publish(vec![msg("m", "a")]).await?;
        let job = store.claim("a", "h", 1).await?.remove(0);
        let commit = Commit {
            posts: vec![msg("p1", "b")],
            ..Commit::default()
        };
        store
            .finish(
                &job.job_id,
                1,
                CallRecord::default(),
                Finish::Succeeded {
                    result: None,
                    commit,
                },
            )
            .await?;
        let (posts, more) = store.posts_of(&job.job_id).await?;
        assert!(!more);
        let handlers: Vec<_> = posts.iter().map(|p| p.handler.clone()).collect();
        assert_eq!(handlers, vec![Some("x".into()), Some("y".into())]);
        assert!(posts.iter().all(|p| p.message_id == "p1"
            && p.channel == "b"
            && p.state == Some(JobState::Queued)));
        assert!(store.posts_of("other").await?.0.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn every_listing_query_uses_its_index() -> Result<(), StoreError> {
        let (_dir, store) = open()?;
        let plans = store
            .read(|conn| {
                let mut out = Vec::new();
                for sql in [
                    "SELECT created_at, id FROM jobs INDEXED BY jobs_by_state
                     WHERE state = 'dead' AND channel = 'a' AND (created_at, id) < (5, 'x')
                     ORDER BY created_at DESC, id DESC LIMIT 5",
                    "SELECT created_at, id FROM jobs INDEXED BY jobs_by_channel
                     WHERE NULL IS NULL AND channel = 'a' AND (created_at, id) < (5, 'x')
                     ORDER BY created_at DESC, id DESC LIMIT 5",
                ] {
                    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                    let rows = stmt.query_map([], |r| r.get::<_, String>(3))?;
                    out.push(rows.collect::<Result<Vec<_>, _>>()?.join("; "));
                }
                Ok(out)
            })
            .await?;
        for plan in plans {
            // A covering index range, in index order: no table scan, no sort.
            assert!(plan.contains("COVERING INDEX"), "{plan}");
            assert!(plan.contains("(created_at,id)<(?,?)"), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
        Ok(())
    }
}

//! The embedded queue's cron records (`crate::cron`): one row per cron,
//! moved forward by compare-and-set on its revision, and a fired tick's
//! jobs inserted in the same transaction as the move. So after a kill -9
//! either both are on disk or neither is: a tick is never fired twice
//! (its record says it is done) nor lost (the next step fires it).

use rusqlite::{OptionalExtension as _, params};

use super::jobs::{Routes, publish_one};
use super::{NewMessage, Store, StoreError};
use crate::cron::{Posted, Written};
use crate::message::now_ms;

impl Store {
    /// Cron `name`'s record (JSON) and revision, if any.
    pub async fn cron_record(&self, name: String) -> Result<Option<(String, u64)>, StoreError> {
        self.call(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT record, revision FROM cron WHERE name = ?1",
                    params![name],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
                )
                .optional()?
                .map(|(json, rev)| (json, u64::try_from(rev).unwrap_or(0))))
        })
        .await
    }

    /// Writes cron `name`'s record if it is still at revision `expected`
    /// (None: no row yet) and, in the same transaction, publishes `tick`.
    pub async fn cron_write(
        &self,
        name: String,
        record: String,
        expected: Option<u64>,
        tick: Option<NewMessage>,
    ) -> Result<Written, StoreError> {
        self.call(move |conn| {
            let now = now_ms();
            let moved = match expected {
                None => conn.execute(
                    "INSERT INTO cron (name, record, revision, updated_at) VALUES (?1, ?2, 1, ?3)
                     ON CONFLICT (name) DO NOTHING",
                    params![name, record, now],
                )?,
                Some(rev) => conn.execute(
                    "UPDATE cron SET record = ?2, revision = revision + 1, updated_at = ?3
                     WHERE name = ?1 AND revision = ?4",
                    params![name, record, now, i64::try_from(rev).unwrap_or(i64::MAX)],
                )?,
            };
            if moved == 0 {
                return Ok(Written {
                    won: false,
                    posted: Posted::Nothing,
                });
            }
            let posted = match &tick {
                Some(tick) => Posted::from_duplicate(
                    publish_one(conn, &mut Routes::default(), tick, None, now)?.duplicate,
                ),
                None => Posted::Nothing,
            };
            Ok(Written { won: true, posted })
        })
        .await
    }
}

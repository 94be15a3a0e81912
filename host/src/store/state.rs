//! Per-plugin key-value state with optimistic concurrency.
//!
//! A handler's reads record the version they saw; its writes commit only if
//! none of those versions changed meanwhile. Two concurrent jobs that both
//! read-modify-write one counter therefore never lose an update: the second
//! commit conflicts and its job runs again. An absent key has version 0.
//! (Known limit: a key deleted and re-created and deleted again while one
//! call runs looks unchanged to it; deletes are rare in practice.)

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, StoreError};

impl Store {
    /// The committed value of `key` for `plugin` and its version.
    pub async fn state_get(
        &self,
        plugin: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        let (plugin, key) = (plugin.to_owned(), key.to_owned());
        self.call(move |conn| get(conn, &plugin, &key)).await
    }
}

pub(super) fn get(
    conn: &Connection,
    plugin: &str,
    key: &str,
) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT value, version FROM state WHERE plugin = ?1 AND key = ?2")?;
    Ok(stmt
        .query_row(params![plugin, key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// True when every read version still holds.
pub(super) fn reads_hold(
    conn: &Connection,
    plugin: &str,
    reads: &BTreeMap<String, i64>,
) -> Result<bool, StoreError> {
    for (key, seen) in reads {
        let now = get(conn, plugin, key)?.map(|(_, v)| v).unwrap_or(0);
        if now != *seen {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(super) fn apply_writes(
    conn: &Connection,
    plugin: &str,
    writes: &BTreeMap<String, Option<Vec<u8>>>,
) -> Result<(), StoreError> {
    let mut upsert = conn.prepare_cached(
        "INSERT INTO state (plugin, key, value, version) VALUES (?1, ?2, ?3, 1)
         ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value, version = version + 1",
    )?;
    let mut delete = conn.prepare_cached("DELETE FROM state WHERE plugin = ?1 AND key = ?2")?;
    for (key, value) in writes {
        match value {
            Some(v) => upsert.execute(params![plugin, key, v])?,
            None => delete.execute(params![plugin, key])?,
        };
    }
    Ok(())
}

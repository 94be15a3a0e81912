//! The one-time move of a host's SQLite state into the shared store
//! (`[nats] shared_state`, `transport/jetstream/state_move.rs`): which keys
//! there are to move, and the record of the plugins moved, so a plugin's
//! state is moved once per data dir (table `state_moved`).

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};
use crate::message::now_ms;

/// What the move of one plugin's state came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Keys stored in the shared store from this host's SQLite.
    pub moved: usize,
    /// Keys the shared store held already: its value was kept, this
    /// host's dropped.
    pub kept: usize,
    /// Keys that could not be moved (a value too large for the server's
    /// messages): still in this host's SQLite, not in the shared store.
    pub left: usize,
}

impl Store {
    /// Plugins with state in this host's SQLite (a key with a value) that
    /// were never moved to the shared store.
    pub async fn state_to_move(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            let mut plugins = Vec::new();
            let mut next: Option<String> = conn
                .prepare_cached("SELECT MIN(plugin) FROM state")?
                .query_row([], |r| r.get(0))?;
            // A skip scan over the primary key: one seek per plugin.
            while let Some(plugin) = next {
                let has_value: bool = conn
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM state WHERE plugin = ?1 AND value IS NOT NULL)
                             AND NOT EXISTS (SELECT 1 FROM state_moved WHERE plugin = ?1)",
                    )?
                    .query_row(params![plugin], |r| r.get(0))?;
                if has_value {
                    plugins.push(plugin.clone());
                }
                next = conn
                    .prepare_cached("SELECT MIN(plugin) FROM state WHERE plugin > ?1")?
                    .query_row(params![plugin], |r| r.get(0))
                    .optional()?
                    .flatten();
            }
            Ok(plugins)
        })
        .await
    }

    /// Up to `limit` of `plugin`'s keys with a value, in key order, after
    /// `after`.
    pub async fn state_page(
        &self,
        plugin: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let (plugin, after) = (plugin.to_owned(), after.map(str::to_owned));
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT key, value FROM state
                 WHERE plugin = ?1 AND key > COALESCE(?2, '') AND value IS NOT NULL
                 ORDER BY key LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![plugin, after, limit as i64], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Records that `plugin`'s state was moved (it is not moved again).
    pub async fn state_moved(&self, plugin: &str, moved: Moved) -> Result<(), StoreError> {
        let plugin = plugin.to_owned();
        self.call(move |conn| {
            conn.prepare_cached(
                "INSERT OR IGNORE INTO state_moved (plugin, moved_at, moved, kept, left_here)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                plugin,
                now_ms(),
                moved.moved as i64,
                moved.kept as i64,
                moved.left as i64
            ])?;
            Ok(())
        })
        .await
    }
}

//! The daemon's view of its plugins directory: per file, the plugin version
//! serving from it and the file's last load error.
//!
//! Only the running daemon knows what it serves (a file on disk may have
//! been rejected while an older version of it keeps running), so it writes
//! that view here whenever it changes, and `sluice plugins` reads it from
//! another process. The daemon replaces the whole view each time: a plugins
//! directory holds a handful of files, and a full replace cannot drift.

use rusqlite::{Connection, params};

use super::{Store, StoreError};
use crate::message::now_ms;

/// One plugin file as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginFile {
    /// The file.
    pub path: String,
    /// The version serving from this file, if any.
    pub serving: Option<ServingPlugin>,
    /// Why the file now on disk was rejected, if it was.
    pub error: Option<String>,
    /// When the daemon last looked at this file (ms).
    pub updated_at: i64,
}

/// What a serving plugin said about itself, and the limits in force (its
/// ask capped by the operator's ceiling).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServingPlugin {
    /// `describe()` name.
    pub name: String,
    /// `describe()` version.
    pub version: String,
    /// "handler" or "mapper".
    pub kind: String,
    /// Its channels.
    pub channels: Vec<String>,
    /// SHA-256 of the file content it was loaded from.
    pub hash: String,
    /// Fuel per call.
    pub fuel: u64,
    /// Memory cap per call.
    pub memory_bytes: u64,
    /// Wall-clock limit per call.
    pub timeout_ms: u64,
    /// Fuel the plugin asked for (`None`: nothing asked).
    pub asked_fuel: Option<u64>,
    /// Memory the plugin asked for.
    pub asked_memory_bytes: Option<u64>,
    /// Wall-clock limit the plugin asked for.
    pub asked_timeout_ms: Option<u64>,
    /// When this version was swapped in (ms).
    pub loaded_at: i64,
}

impl Store {
    /// Replaces the recorded view with `files`.
    pub async fn record_plugin_files(&self, files: Vec<PluginFile>) -> Result<(), StoreError> {
        self.call(move |conn| replace(conn, &files)).await
    }

    /// The view the daemon recorded last, by path (on the reader
    /// connection).
    pub async fn plugin_files(&self) -> Result<Vec<PluginFile>, StoreError> {
        self.read(list).await
    }
}

/// SQLite integers are i64: a u64 is stored bit for bit (values above
/// `i64::MAX`, e.g. a plugin asking for `u64::MAX` fuel, read back
/// unchanged by [`to_u64`]).
fn to_i64(n: u64) -> i64 {
    n as i64
}

fn replace(conn: &Connection, files: &[PluginFile]) -> Result<(), StoreError> {
    conn.execute("DELETE FROM plugin_files", [])?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO plugin_files (path, name, version, kind, channels, hash, fuel,
             memory_bytes, timeout_ms, loaded_at, error, updated_at,
             asked_fuel, asked_memory_bytes, asked_timeout_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?;
    let now = now_ms();
    for f in files {
        let p = f.serving.as_ref();
        let channels = match p {
            Some(p) => Some(
                serde_json::to_string(&p.channels).map_err(|e| StoreError::Sql(e.to_string()))?,
            ),
            None => None,
        };
        insert.execute(params![
            f.path,
            p.map(|p| &p.name),
            p.map(|p| &p.version),
            p.map(|p| &p.kind),
            channels,
            p.map(|p| &p.hash),
            p.map(|p| to_i64(p.fuel)),
            p.map(|p| to_i64(p.memory_bytes)),
            p.map(|p| to_i64(p.timeout_ms)),
            p.map(|p| p.loaded_at),
            f.error,
            now,
            p.and_then(|p| p.asked_fuel).map(to_i64),
            p.and_then(|p| p.asked_memory_bytes).map(to_i64),
            p.and_then(|p| p.asked_timeout_ms).map(to_i64),
        ])?;
    }
    Ok(())
}

/// The inverse of [`to_i64`].
fn to_u64(v: i64) -> u64 {
    v as u64
}

fn list(conn: &Connection) -> Result<Vec<PluginFile>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT path, name, version, kind, channels, hash, fuel, memory_bytes, timeout_ms,
                loaded_at, error, updated_at, asked_fuel, asked_memory_bytes, asked_timeout_ms
         FROM plugin_files ORDER BY path",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let path: String = r.get(0)?;
        let serving = match r.get::<_, Option<String>>(1)? {
            None => None,
            Some(name) => {
                let channels: Option<String> = r.get(4)?;
                let channels: Vec<String> =
                    serde_json::from_str(channels.as_deref().unwrap_or("[]")).map_err(|e| {
                        StoreError::Corrupt(format!("plugin_files.channels of {path}: {e}"))
                    })?;
                let n = |i: usize| -> Result<u64, rusqlite::Error> {
                    Ok(r.get::<_, Option<i64>>(i)?.map_or(0, to_u64))
                };
                let asked = |i: usize| -> Result<Option<u64>, rusqlite::Error> {
                    Ok(r.get::<_, Option<i64>>(i)?.map(to_u64))
                };
                Some(ServingPlugin {
                    name,
                    version: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    kind: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                    channels,
                    hash: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                    fuel: n(6)?,
                    memory_bytes: n(7)?,
                    timeout_ms: n(8)?,
                    asked_fuel: asked(12)?,
                    asked_memory_bytes: asked(13)?,
                    asked_timeout_ms: asked(14)?,
                    loaded_at: r.get::<_, Option<i64>>(9)?.unwrap_or(0),
                })
            }
        };
        out.push(PluginFile {
            path,
            serving,
            error: r.get(10)?,
            updated_at: r.get(11)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    #[tokio::test]
    async fn the_view_round_trips_and_is_replaced_whole() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("s.db"), &StoreOptions::default())?;
        let serving = ServingPlugin {
            name: "p".into(),
            version: "1.0.0".into(),
            kind: "handler".into(),
            channels: vec!["a".into(), "b".into()],
            hash: "ab".into(),
            fuel: 5_000_000_000,
            memory_bytes: 1 << 26,
            timeout_ms: 100,
            asked_fuel: Some(u64::MAX),
            asked_memory_bytes: None,
            asked_timeout_ms: Some(50),
            loaded_at: 7,
        };
        let kept = PluginFile {
            path: "/p/a.wasm".into(),
            serving: Some(serving),
            error: Some("not a WebAssembly component".into()),
            updated_at: 0,
        };
        let failed = PluginFile {
            path: "/p/b.wasm".into(),
            serving: None,
            error: Some("describe() failed".into()),
            updated_at: 0,
        };
        store
            .record_plugin_files(vec![kept.clone(), failed.clone()])
            .await?;
        let got = store.plugin_files().await?;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].serving, kept.serving, "u64::MAX survives");
        assert_eq!(got[0].error, kept.error);
        assert_eq!(got[1].serving, None);
        store.record_plugin_files(vec![failed]).await?;
        let got = store.plugin_files().await?;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].path, "/p/b.wasm");
        Ok(())
    }
}

//! Uniqueness and debounce keys are pruned (review #11: one row per key
//! ever used stayed forever).

use super::*;
use crate::message::{Message, MessageKind, now_ms};

fn keyed(id: &str, header: (&str, &str), ttl: (&str, &str)) -> NewMessage {
    NewMessage {
        message: Message {
            id: id.into(),
            channel: "c".into(),
            kind: MessageKind::Command,
            headers: vec![
                (header.0.into(), header.1.into()),
                (ttl.0.into(), ttl.1.into()),
            ],
            body: b"{}".to_vec(),
        },
        visible_at: 0,
        expires_at: None,
    }
}

async fn rows(store: &Store, table: &'static str) -> i64 {
    store
        .call(move |conn| {
            Ok(conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?)
        })
        .await
        .expect("count")
}

#[tokio::test]
async fn expired_unique_keys_and_spent_debounce_keys_are_pruned() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s.db"), &StoreOptions::default())?;
    store
        .register_consumers(vec![("c".into(), "h".into())])
        .await?;
    let (unique, unique_for) = ("sluice-unique", "sluice-unique-for");
    let (debounce, debounce_for) = ("sluice-debounce", "sluice-debounce-for");
    // 100 keys whose time ran out (set below) and one that holds an hour.
    let short: Vec<NewMessage> = (0..100)
        .map(|i| {
            keyed(
                &format!("u{i}"),
                (unique, &format!("k{i}")),
                (unique_for, "1s"),
            )
        })
        .collect();
    store.publish(short).await?;
    store
        .publish(vec![keyed("held", (unique, "held"), (unique_for, "1h"))])
        .await?;
    // A debounce key whose job still waits, and one whose job ran.
    store
        .publish(vec![
            keyed("d-wait", (debounce, "wait"), (debounce_for, "1h")),
            keyed("d-ran", (debounce, "ran"), (debounce_for, "1s")),
        ])
        .await?;
    store
        .call(|conn| {
            conn.execute(
                "UPDATE jobs SET state = 'succeeded', finished_at = 1 WHERE message_id = 'd-ran'",
                [],
            )?;
            conn.execute(
                "UPDATE unique_keys SET expires_at = 1 WHERE message_id LIKE 'u%'",
                [],
            )?;
            Ok(())
        })
        .await?;
    assert_eq!(rows(&store, "unique_keys").await, 101);
    assert_eq!(rows(&store, "debounce_keys").await, 2);
    store.prune(now_ms() + 1).await?;
    assert_eq!(rows(&store, "unique_keys").await, 1, "the held key stays");
    assert_eq!(
        rows(&store, "debounce_keys").await,
        1,
        "the key whose job waits stays"
    );
    // The held key still refuses a second post.
    let again = store
        .publish(vec![keyed("other", (unique, "held"), (unique_for, "1h"))])
        .await?;
    assert_eq!(again[0].duplicate_of.as_deref(), Some("held"));
    Ok(())
}

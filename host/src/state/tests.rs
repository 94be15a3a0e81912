//! Ledger tests on a real SQLite file: turns, reading a predecessor's write
//! before it is durable, recovering from a commit the writer refused, and
//! commits that wait or conflict.

use std::time::Duration;

use super::*;
use crate::message::{Message, MessageKind};
use crate::store::{CallRecord, ClaimedJob, Commit, Finish, NewMessage, StoreOptions};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s.db"), &StoreOptions::default()).expect("open");
    (dir, store)
}

/// `n` claimed jobs on channel "c" of handler "p".
async fn jobs(store: &Store, n: usize) -> Vec<ClaimedJob> {
    store
        .register_consumers(vec![("c".into(), "p".into())])
        .await
        .expect("register");
    let msgs = (0..n)
        .map(|i| NewMessage {
            message: Message {
                id: format!("m{i}"),
                channel: "c".into(),
                kind: MessageKind::Command,
                headers: Vec::new(),
                body: b"{}".to_vec(),
            },
            visible_at: 0,
            expires_at: None,
        })
        .collect();
    store.publish(msgs).await.expect("publish");
    store.claim("c", "p", n).await.expect("claim")
}

/// Hands `session`'s commit of `state` over for `job`.
async fn commit(
    store: &Store,
    session: &Session,
    job: &ClaimedJob,
    state: CallState,
) -> Result<Handed, HandOff> {
    session
        .commit(state, |s| {
            store.submit_finish(
                &job.job_id,
                job.attempt,
                CallRecord::default(),
                Finish::Succeeded {
                    result: None,
                    commit: Commit {
                        state: s,
                        ..Commit::default()
                    },
                },
            )
        })
        .await
}

fn set(key: &str, read: i64, value: &[u8]) -> CallState {
    CallState {
        reads: BTreeMap::from([(key.to_owned(), read)]),
        writes: BTreeMap::from([(key.to_owned(), Some(value.to_vec()))]),
        adds: BTreeMap::new(),
    }
}

#[tokio::test]
async fn the_next_job_waits_for_the_turn_and_reads_the_write_before_it_is_durable() {
    let (_d, store) = store();
    let jobs = jobs(&store, 2).await;
    let ledger = Ledger::new(store.clone(), DEFAULT_CACHE_BYTES);
    let a = ledger.session("p");
    let b = ledger.session("p");
    assert_eq!(a.read("k").await.expect("read"), (None, 0));
    // Inside a sandbox, b never waits for a's turn: it is told to give the
    // sandbox up, and waits outside it.
    assert_eq!(b.read("k").await, Err(StateReadError::Busy));
    let waiting = tokio::spawn({
        let b = b.clone();
        async move {
            b.acquire(&["k".to_owned()]).await;
            b.read("k").await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "b waits for a's turn");
    let handed = commit(&store, &a, &jobs[0], set("k", 0, b"1"))
        .await
        .expect("handed");
    // b has the turn and a's value the moment a's commit is handed over,
    // before the writer said it is durable.
    let (value, version) = waiting.await.expect("join").expect("read");
    assert_eq!(value.as_deref(), Some(&b"1"[..]));
    assert!(matches!(
        handed.finish().await,
        Ok(FinishResult::Committed { .. })
    ));
    let handed = commit(&store, &b, &jobs[1], set("k", version, b"2"))
        .await
        .expect("handed");
    assert!(matches!(
        handed.finish().await,
        Ok(FinishResult::Committed { .. })
    ));
    let on_disk = store.state_get("p", "k").await.expect("get");
    assert_eq!(on_disk.value.as_deref(), Some(&b"2"[..]));
}

#[tokio::test]
async fn a_commit_the_writer_refuses_makes_the_key_unknown_and_its_successor_run_again() {
    let (_d, store) = store();
    let jobs = jobs(&store, 3).await;
    let ledger = Ledger::new(store.clone(), DEFAULT_CACHE_BYTES);
    // A commit whose job is no longer running (stale) is refused by the
    // writer although the ledger handed it over.
    store
        .finish(
            &jobs[0].job_id,
            jobs[0].attempt,
            CallRecord::default(),
            Finish::Dead {
                error: "gone".into(),
            },
        )
        .await
        .expect("dead");
    let a = ledger.session("p");
    a.read("k").await.expect("read");
    let refused = commit(&store, &a, &jobs[0], set("k", 0, b"wrong"))
        .await
        .expect("handed");
    // b read a's guess before the writer answered.
    let b = ledger.session("p");
    let (guess, guessed_version) = b.read("k").await.expect("read");
    assert_eq!(guess.as_deref(), Some(&b"wrong"[..]));
    assert!(matches!(refused.finish().await, Ok(FinishResult::Stale)));
    // b's commit is checked by the writer against the truth: a conflict.
    let b_commit = commit(&store, &b, &jobs[1], set("k", guessed_version, b"wrong+1"))
        .await
        .expect("handed");
    assert!(matches!(
        b_commit.finish().await,
        Ok(FinishResult::Conflict)
    ));
    // Whoever reads next gets the truth from the writer.
    let c = ledger.session("p");
    assert_eq!(c.read("k").await.expect("read"), (None, 0));
    drop((a, b));
    let ok = commit(&store, &c, &jobs[2], set("k", 0, b"right"))
        .await
        .expect("handed");
    assert!(matches!(
        ok.finish().await,
        Ok(FinishResult::Committed { .. })
    ));
}

#[tokio::test]
async fn a_second_key_held_elsewhere_is_read_without_its_turn_and_a_change_conflicts() {
    let (_d, store) = store();
    let jobs = jobs(&store, 2).await;
    let ledger = Ledger::new(store.clone(), DEFAULT_CACHE_BYTES);
    let a = ledger.session("p");
    let b = ledger.session("p");
    a.read("x").await.expect("read");
    b.read("y").await.expect("read");
    // Each now holds one key and reads the other's: neither waits.
    let (_, ay) = tokio::time::timeout(Duration::from_secs(5), a.read("y"))
        .await
        .expect("a does not wait")
        .expect("read");
    tokio::time::timeout(Duration::from_secs(5), b.read("x"))
        .await
        .expect("b does not wait")
        .expect("read");
    // b writes y first; a read y without its turn, so a's commit conflicts
    // and names every key it touched for the re-run to take.
    let handed = commit(&store, &b, &jobs[1], set("y", 0, b"b"))
        .await
        .expect("handed");
    handed.finish().await.expect("finish");
    let mut state = set("x", 0, b"a");
    state.reads.insert("y".into(), ay);
    match commit(&store, &a, &jobs[0], state).await {
        Err(HandOff::Conflict { keys }) => assert_eq!(keys, ["x", "y"]),
        Err(other) => panic!("expected a conflict, got {other:?}"),
        Ok(_) => panic!("expected a conflict"),
    }
}

#[tokio::test]
async fn an_add_without_turns_waits_for_the_holder_then_applies_to_its_write() {
    let (_d, store) = store();
    let jobs = jobs(&store, 2).await;
    let ledger = Ledger::new(store.clone(), DEFAULT_CACHE_BYTES);
    let holder = ledger.session("p");
    holder.read("n").await.expect("read");
    let adder = ledger.session("p");
    let add = CallState {
        adds: BTreeMap::from([("n".to_owned(), 5)]),
        ..CallState::default()
    };
    let pending = tokio::spawn({
        let (store, adder, job) = (store.clone(), adder.clone(), jobs[1].clone());
        async move { commit(&store, &adder, &job, add).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !pending.is_finished(),
        "the add waits for the holder's commit"
    );
    commit(&store, &holder, &jobs[0], set("n", 0, b"10"))
        .await
        .expect("handed")
        .finish()
        .await
        .expect("finish");
    pending.await.expect("join").expect("add handed");
    let reader = ledger.session("p");
    let (value, _) = reader.read("n").await.expect("read");
    assert_eq!(value.as_deref(), Some(&b"15"[..]));
}

#[tokio::test]
async fn durable_values_are_evicted_past_the_budget_and_read_back_from_disk() {
    let (_d, store) = store();
    let jobs = jobs(&store, 50).await;
    let ledger = Ledger::new(store.clone(), 4096);
    for (i, job) in jobs.iter().enumerate() {
        let s = ledger.session("p");
        let key = format!("k{i}");
        s.read(&key).await.expect("read");
        commit(&store, &s, job, set(&key, 0, &[b'v'; 100]))
            .await
            .expect("handed")
            .finish()
            .await
            .expect("finish");
    }
    assert!(ledger.bytes() <= 4096, "{} bytes held", ledger.bytes());
    let s = ledger.session("p");
    let (value, version) = s.read("k0").await.expect("read");
    assert_eq!(value.map(|v| v.len()), Some(100));
    assert!(version > 0);
}

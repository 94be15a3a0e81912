//! Store unit tests on real SQLite files: routing, claiming, finishing with
//! effects, conflicts, recovery.

use std::collections::BTreeMap;

use super::*;
use crate::message::{Message, MessageKind, now_ms};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s.db"), &StoreOptions::default()).expect("open");
    (dir, store)
}

fn msg(id: &str, channel: &str) -> NewMessage {
    NewMessage {
        message: Message {
            id: id.into(),
            channel: channel.into(),
            kind: MessageKind::Command,
            headers: vec![("h".into(), "v".into())],
            body: b"{}".to_vec(),
        },
        visible_at: 0,
        expires_at: None,
    }
}

/// A state commit that read `key` at `read` and sets it to `v` at `version`.
fn put(plugin: &str, key: &str, read: i64, v: &[u8], version: i64) -> StateCommit {
    StateCommit {
        plugin: plugin.into(),
        reads: BTreeMap::from([(key.to_string(), read)]),
        changes: BTreeMap::from([(
            key.to_string(),
            StateChange::Put {
                value: Some(v.to_vec()),
                version,
            },
        )]),
    }
}

fn value(v: &[u8], version: i64) -> StateValue {
    StateValue {
        value: Some(v.to_vec()),
        version,
    }
}

fn sub(channel: &str, consumer: &str) -> (String, String) {
    (channel.into(), consumer.into())
}

#[tokio::test]
async fn each_job_is_claimed_by_exactly_one_claimer() -> Result<(), StoreError> {
    let (_d, store) = store();
    store.register_consumers(vec![sub("c", "h")]).await?;
    let msgs = (0..500).map(|i| msg(&format!("m{i}"), "c")).collect();
    store.publish(msgs).await?;
    let mut claimers = Vec::new();
    for _ in 0..8 {
        let s = store.clone();
        claimers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = s.claim("c", "h", 7).await?;
                if batch.is_empty() {
                    return Ok::<_, StoreError>(got);
                }
                got.extend(batch.into_iter().map(|j| j.job_id));
            }
        }));
    }
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.map_err(|e| StoreError::Sql(e.to_string()))??);
    }
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(total, 500, "every job claimed");
    assert_eq!(all.len(), 500, "no job claimed twice");
    Ok(())
}

#[tokio::test]
async fn an_event_reaches_every_handler_and_unrouted_messages_wait() -> Result<(), StoreError> {
    let (_d, store) = store();
    let early = store.publish(vec![msg("early", "e")]).await?;
    assert_eq!(early[0].job_ids.len(), 1, "kept as one unrouted job");
    assert!(store.claim("e", "a", 10).await?.is_empty());
    store
        .register_consumers(vec![sub("e", "a"), sub("e", "b")])
        .await?;
    let late = store.publish(vec![msg("late", "e")]).await?;
    assert_eq!(late[0].job_ids.len(), 2, "one copy per handler");
    let a = store.claim("e", "a", 10).await?;
    let b = store.claim("e", "b", 10).await?;
    assert_eq!(a.len(), 2);
    assert_eq!(b.len(), 2);
    assert!(
        a.iter().any(|j| j.job_id == early[0].job_ids[0]),
        "routing kept the job id"
    );
    Ok(())
}

#[tokio::test]
async fn success_commits_effects_and_a_stale_finish_changes_nothing() -> Result<(), StoreError> {
    let (_d, store) = store();
    store.register_consumers(vec![sub("c", "h")]).await?;
    store.publish(vec![msg("m", "c")]).await?;
    let job = store.claim("c", "h", 1).await?.remove(0);
    let version = store.next_state_version();
    let commit = Commit {
        progress: Some((50, Some("half".into()))),
        state: put("h", "k", 0, b"1", version),
        posts: vec![msg("p1", "out")],
    };
    let r = store
        .finish(
            &job.job_id,
            job.attempt,
            CallRecord::default(),
            Finish::Succeeded {
                result: Some("ok".into()),
                commit: commit.clone(),
            },
        )
        .await?;
    assert!(matches!(r, FinishResult::Committed { .. }));
    let rec = store.job(&job.job_id).await?.expect("job");
    assert_eq!(rec.state, JobState::Succeeded);
    assert_eq!(rec.result.as_deref(), Some("ok"));
    assert_eq!(rec.progress, Some(100));
    assert_eq!(store.state_get("h", "k").await?, value(b"1", version));
    assert_eq!(
        store
            .jobs(JobFilter {
                channel: Some("out".into()),
                ..Default::default()
            })
            .await?
            .len(),
        1
    );
    // Finishing again (e.g. a duplicate worker) is refused and applies nothing.
    let again = store
        .finish(
            &job.job_id,
            job.attempt,
            CallRecord::default(),
            Finish::Succeeded {
                result: None,
                commit,
            },
        )
        .await?;
    assert_eq!(again, FinishResult::Stale);
    assert_eq!(store.state_get("h", "k").await?, value(b"1", version));
    Ok(())
}

#[tokio::test]
async fn a_success_without_effects_is_recorded_only_for_the_running_attempt()
-> Result<(), StoreError> {
    // The drain's hot path: a duplicate, a finish of another attempt and
    // one of a job handed back meanwhile are each refused without touching
    // the row.
    let (_d, store) = store();
    store.register_consumers(vec![sub("c", "h")]).await?;
    store.publish(vec![msg("m1", "c"), msg("m2", "c")]).await?;
    let jobs = store.claim("c", "h", 2).await?;
    let success = |result: &str| Finish::Succeeded {
        result: Some(result.into()),
        commit: Commit::default(),
    };
    let call = CallRecord {
        fuel_used: 7,
        ..CallRecord::default()
    };
    let (a, b) = (&jobs[0], &jobs[1]);
    let wrong_attempt = store
        .finish(&a.job_id, a.attempt + 1, call.clone(), success("early"))
        .await?;
    assert_eq!(wrong_attempt, FinishResult::Stale);
    assert_eq!(
        store.job(&a.job_id).await?.map(|r| r.state),
        Some(JobState::Running)
    );
    let done = store
        .finish(&a.job_id, a.attempt, call.clone(), success("first"))
        .await?;
    assert!(matches!(done, FinishResult::Committed { .. }));
    let again = store
        .finish(&a.job_id, a.attempt, call.clone(), success("second"))
        .await?;
    assert_eq!(again, FinishResult::Stale);
    let rec = store.job(&a.job_id).await?.expect("job");
    assert_eq!(rec.state, JobState::Succeeded);
    assert_eq!(rec.result.as_deref(), Some("first"));
    assert_eq!(rec.fuel_used, 7, "counted once");
    // Handed back (as after a crash): the old attempt cannot record.
    store.recover_running().await?;
    let late = store
        .finish(&b.job_id, b.attempt, call, success("late"))
        .await?;
    assert_eq!(late, FinishResult::Stale);
    let rec = store.job(&b.job_id).await?.expect("job");
    assert_eq!(rec.state, JobState::Queued);
    assert_eq!(rec.result, None);
    Ok(())
}

#[tokio::test]
async fn a_state_conflict_applies_nothing_and_requeues_without_losing_an_attempt()
-> Result<(), StoreError> {
    let (_d, store) = store();
    store.register_consumers(vec![sub("c", "h")]).await?;
    store.publish(vec![msg("m1", "c"), msg("m2", "c")]).await?;
    let jobs = store.claim("c", "h", 2).await?;
    let commit = |v: &[u8]| Commit {
        state: put("h", "n", 0, v, store.next_state_version()),
        posts: vec![msg(&format!("post-{}", v[0]), "out")],
        ..Commit::default()
    };
    let first = store
        .finish(
            &jobs[0].job_id,
            1,
            CallRecord::default(),
            Finish::Succeeded {
                result: None,
                commit: commit(b"1"),
            },
        )
        .await?;
    assert!(matches!(first, FinishResult::Committed { .. }));
    let second = store
        .finish(
            &jobs[1].job_id,
            1,
            CallRecord::default(),
            Finish::Succeeded {
                result: None,
                commit: commit(b"2"),
            },
        )
        .await?;
    assert_eq!(second, FinishResult::Conflict);
    assert_eq!(store.state_get("h", "n").await?.value, Some(b"1".to_vec()));
    let out = store
        .jobs(JobFilter {
            channel: Some("out".into()),
            ..Default::default()
        })
        .await?;
    assert_eq!(out.len(), 1, "the conflicting call's post was not applied");
    let rec = store.job(&jobs[1].job_id).await?.expect("job");
    assert_eq!((rec.state, rec.attempts), (JobState::Queued, 0));
    assert_eq!(rec.conflicts, 1, "the conflict is counted in the record");
    Ok(())
}

#[tokio::test]
async fn retry_dead_replay_continue_and_recovery() -> Result<(), StoreError> {
    let (_d, store) = store();
    store.register_consumers(vec![sub("c", "h")]).await?;
    store.publish(vec![msg("m", "c")]).await?;
    let job = store.claim("c", "h", 1).await?.remove(0);
    let later = now_ms() + 60_000;
    store
        .finish(
            &job.job_id,
            1,
            CallRecord::default(),
            Finish::Retry {
                error: "flaky".into(),
                visible_at: later,
            },
        )
        .await?;
    assert!(
        store.claim("c", "h", 1).await?.is_empty(),
        "not before its backoff"
    );
    store
        .call({
            let id = job.job_id.clone();
            move |c| Ok(c.execute("UPDATE jobs SET visible_at = 0 WHERE id = ?1", [id])?)
        })
        .await?;
    let job = store.claim("c", "h", 1).await?.remove(0);
    assert_eq!(job.attempt, 2);
    store
        .finish(
            &job.job_id,
            2,
            CallRecord::default(),
            Finish::Continue {
                cursor: "10".into(),
                visible_at: 0,
                commit: Commit::default(),
            },
        )
        .await?;
    let job = store.claim("c", "h", 1).await?.remove(0);
    assert_eq!(
        (job.attempt, job.cursor.as_deref()),
        (1, Some("10")),
        "a new slice starts its attempts afresh"
    );
    store
        .finish(
            &job.job_id,
            1,
            CallRecord::default(),
            Finish::Dead {
                error: "boom".into(),
            },
        )
        .await?;
    assert!(store.replay(&job.job_id).await?);
    assert!(!store.replay(&job.job_id).await?, "no longer dead");
    let job = store.claim("c", "h", 1).await?.remove(0);
    assert_eq!(
        job.cursor.as_deref(),
        Some("10"),
        "a replay resumes from the cursor"
    );
    // A host that dies while running: recovery queues it again.
    assert_eq!(store.recover_running().await?, 1);
    assert_eq!(store.claim("c", "h", 1).await?.len(), 1);
    Ok(())
}

fn delivered(id: &str, slice: u32, cursor: Option<&str>, not_before: Option<i64>) -> Delivered {
    Delivered {
        consumer: "h".into(),
        message: msg(id, "c").message,
        slice,
        cursor: cursor.map(str::to_owned),
        not_before,
        expires_at: None,
        attempts_before: 0,
        replay: 0,
        server: None,
    }
}

#[tokio::test]
async fn the_inbox_runs_new_deliveries_and_acks_finished_ones_without_running()
-> Result<(), StoreError> {
    let (_d, store) = store();
    let Received::Run(job) = store.receive(delivered("m", 0, None, None)).await? else {
        panic!("a new delivery runs");
    };
    assert_eq!(
        job.job_id,
        job_id_for("m", "h"),
        "every host names the job alike"
    );
    assert_eq!(job.attempt, 1);
    // Redelivered while still running here (e.g. after a lost ack): a new
    // attempt; the older call's finish will be refused as stale.
    let Received::Run(again) = store.receive(delivered("m", 0, None, None)).await? else {
        panic!("runs again");
    };
    assert_eq!(again.attempt, 2);
    store
        .finish(
            &again.job_id,
            2,
            CallRecord::default(),
            Finish::Succeeded {
                result: None,
                commit: Commit::default(),
            },
        )
        .await?;
    // Committed but not acked before a crash: redelivery is acked unrun.
    assert!(matches!(
        store.receive(delivered("m", 0, None, None)).await?,
        Received::Done(JobState::Succeeded)
    ));
    Ok(())
}

#[tokio::test]
async fn a_dead_jobs_last_message_comes_back_for_its_dead_letter_and_an_older_one_is_done()
-> Result<(), StoreError> {
    let (_d, store) = store();
    let at = |seq: u64| {
        let mut d = delivered("m", 0, None, None);
        d.server = Some(ServerDelivery {
            stream_seq: seq,
            count: 1,
        });
        d
    };
    // The message ran at stream sequence 9 (a retry of the one at 3) and
    // died.
    let Received::Run(job) = store.receive(at(9)).await? else {
        panic!("runs");
    };
    let error = "it broke".to_owned();
    store
        .finish(
            &job.job_id,
            job.attempt,
            CallRecord::default(),
            Finish::Dead { error },
        )
        .await?;
    // Back because its dead letter may not have been copied.
    assert!(matches!(
        store.receive(at(9)).await?,
        Received::Dead { reason } if reason == "it broke"
    ));
    // The older message (its ack lost) has nothing to copy.
    assert!(matches!(
        store.receive(at(3)).await?,
        Received::Done(JobState::Dead)
    ));
    Ok(())
}

#[tokio::test]
async fn the_inbox_counts_deliveries_other_hosts_took_but_not_its_own_hand_backs()
-> Result<(), StoreError> {
    let (_d, store) = store();
    let at = |count: u64| {
        let mut d = delivered("m", 0, None, None);
        d.server = Some(ServerDelivery {
            stream_seq: 7,
            count,
        });
        d
    };
    // Its third delivery, the first this host sees: two hosts before it
    // took it and recorded nothing.
    let Received::Run(job) = store.receive(at(3)).await? else {
        panic!("runs");
    };
    assert_eq!(job.attempt, 3);
    // Handed back here (a NAK costing no attempt), then delivered here
    // again: the hand-back is not counted.
    store
        .finish(
            &job.job_id,
            3,
            CallRecord::default(),
            Finish::Release {
                visible_at: 0,
                reason: "shutdown".into(),
            },
        )
        .await?;
    let Received::Run(job) = store.receive(at(4)).await? else {
        panic!("runs");
    };
    assert_eq!(job.attempt, 3, "a hand-back here costs nothing");
    // Then delivered twice more elsewhere before it comes back.
    let Received::Run(job) = store.receive(at(7)).await? else {
        panic!("runs");
    };
    assert_eq!(job.attempt, 6, "two deliveries elsewhere and this one");
    Ok(())
}

#[tokio::test]
async fn another_hosts_cancel_and_outcome_reach_this_hosts_records() -> Result<(), StoreError> {
    let (_d, store) = store();
    // A cancel for a job this host never saw: recorded, so its delivery is
    // acked without running.
    let id = job_id_for("m", "h");
    assert_eq!(
        store
            .cancel_from_elsewhere(&id, "m", "c", "h", None)
            .await?,
        RemoteCancel::Cancelled
    );
    assert!(matches!(
        store.receive(delivered("m", 0, None, None)).await?,
        Received::Done(JobState::Cancelled)
    ));
    // A job running here is left to the caller to interrupt.
    let Received::Run(job) = store.receive(delivered("n", 0, None, None)).await? else {
        panic!("runs");
    };
    assert_eq!(
        store
            .cancel_from_elsewhere(&job.job_id, "n", "c", "h", None)
            .await?,
        RemoteCancel::Running
    );
    // Retrying here, finished elsewhere: the record takes the outcome, but
    // only if it has not changed here since it was looked at.
    store
        .finish(
            &job.job_id,
            1,
            CallRecord::default(),
            Finish::Retry {
                error: "x".into(),
                visible_at: 0,
            },
        )
        .await?;
    let seen = store
        .job(&job.job_id)
        .await?
        .map(|j| j.updated_at)
        .unwrap_or(0);
    let ended = |finished_at| EndedElsewhere {
        state: JobState::Succeeded,
        result: Some("42".into()),
        last_error: None,
        finished_at,
    };
    assert!(
        !store
            .ended_elsewhere(&job.job_id, seen - 1, ended(1))
            .await?
    );
    assert!(store.ended_elsewhere(&job.job_id, seen, ended(1)).await?);
    let record = store.job(&job.job_id).await?.expect("job");
    assert_eq!(record.state, JobState::Succeeded);
    assert_eq!(record.result.as_deref(), Some("42"));
    let page = store.waiting_page(JobState::Retrying, None, 10).await?;
    assert!(page.is_empty(), "{page:?}");
    Ok(())
}

#[tokio::test]
async fn the_inbox_tells_a_fresh_slice_from_a_stale_one_and_waits_for_launch_time()
-> Result<(), StoreError> {
    let (_d, store) = store();
    let Received::Run(job) = store.receive(delivered("m", 0, None, None)).await? else {
        panic!("runs");
    };
    store
        .finish(
            &job.job_id,
            1,
            CallRecord::default(),
            Finish::Continue {
                cursor: "100".into(),
                visible_at: 0,
                commit: Commit::default(),
            },
        )
        .await?;
    // The original message comes back (its ack was lost): slice 0 is done.
    assert!(matches!(
        store.receive(delivered("m", 0, None, None)).await?,
        Received::Done(_)
    ));
    // The continuation (slice 1) runs from its cursor.
    let Received::Run(next) = store.receive(delivered("m", 1, Some("100"), None)).await? else {
        panic!("slice 1 runs");
    };
    assert_eq!((next.attempt, next.cursor.as_deref()), (1, Some("100")));
    // Not due yet: scheduled, redelivered at its launch time.
    let later = now_ms() + 60_000;
    assert!(matches!(
        store.receive(delivered("n", 0, None, Some(later))).await?,
        Received::NotYet(t) if t == later
    ));
    assert_eq!(
        store.job(&job_id_for("n", "h")).await?.map(|j| j.state),
        Some(JobState::Scheduled)
    );
    Ok(())
}

#[tokio::test]
async fn outbox_rows_wait_until_due_and_a_continuation_is_addressed_to_its_handler()
-> Result<(), StoreError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        &dir.path().join("s.db"),
        &StoreOptions {
            outbox: true,
            ..StoreOptions::default()
        },
    )?;
    let Received::Run(job) = store.receive(delivered("m", 0, None, None)).await? else {
        panic!("runs");
    };
    let mut later = msg("p-later", "out");
    later.visible_at = now_ms() + 60_000;
    let commit = Commit {
        posts: vec![msg("p-now", "out"), later],
        ..Commit::default()
    };
    store
        .finish(
            &job.job_id,
            1,
            CallRecord::default(),
            Finish::Continue {
                cursor: "7".into(),
                visible_at: 0,
                commit,
            },
        )
        .await?;
    assert!(
        store
            .jobs(JobFilter {
                channel: Some("out".into()),
                ..Default::default()
            })
            .await?
            .is_empty(),
        "posts go to the outbox, not the queue"
    );
    let due = store.outbox_due(now_ms(), now_ms(), 100).await?;
    let ids: Vec<&str> = due.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        ["p-now", "m/h/slice/1"],
        "in commit order; the delayed post waits"
    );
    let cont = &due[1];
    assert_eq!(
        (cont.consumer.as_deref(), cont.cursor.as_deref()),
        (Some("h"), Some("7"))
    );
    store
        .outbox_mark_sent(due.iter().map(|r| r.seq).collect(), now_ms())
        .await?;
    assert!(store.outbox_due(now_ms(), now_ms(), 100).await?.is_empty());
    assert!(
        store
            .outbox_due(now_ms(), now_ms() + 120_000, 100)
            .await?
            .len()
            == 1,
        "due later"
    );
    Ok(())
}

#[tokio::test]
async fn a_key_deleted_and_recreated_never_comes_back_to_a_version_a_reader_saw()
-> Result<(), StoreError> {
    let (_d, store) = store();
    store.register_consumers(vec![sub("c", "h")]).await?;
    let ids: Vec<String> = (0..4).map(|i| format!("m{i}")).collect();
    store
        .publish(ids.iter().map(|id| msg(id, "c")).collect())
        .await?;
    let jobs = store.claim("c", "h", 4).await?;
    let succeed = |job: ClaimedJob, state: StateCommit| succeed_with(&store, job, state);
    let v1 = store.next_state_version();
    succeed(jobs[0].clone(), put("h", "k", 0, b"A", v1)).await?;
    // A reader saw "A" at v1. The key is deleted, then re-created with
    // another value.
    let deleted = store.next_state_version();
    let delete = StateCommit {
        plugin: "h".into(),
        reads: BTreeMap::new(),
        changes: BTreeMap::from([(
            "k".to_string(),
            StateChange::Put {
                value: None,
                version: deleted,
            },
        )]),
    };
    succeed(jobs[1].clone(), delete).await?;
    let tombstone = store.state_get("h", "k").await?;
    assert_eq!(
        (tombstone.value, tombstone.version),
        (None, deleted),
        "a delete keeps a tombstone with a new version"
    );
    let v3 = store.next_state_version();
    succeed(jobs[2].clone(), put("h", "k", deleted, b"B", v3)).await?;
    assert!(v1 < deleted && deleted < v3, "versions only grow");
    // The reader's commit, built on v1, must not pass.
    let late = succeed(
        jobs[3].clone(),
        put("h", "k", v1, b"A+1", store.next_state_version()),
    )
    .await?;
    assert_eq!(late, FinishResult::Conflict);
    assert_eq!(store.state_get("h", "k").await?, value(b"B", v3));
    // Versions survive a restart: the counter starts past the largest.
    drop(store);
    let store = Store::open(&_d.path().join("s.db"), &StoreOptions::default())?;
    assert!(store.next_state_version() > v3);
    Ok(())
}

#[tokio::test]
async fn an_add_applies_to_the_value_on_disk_and_a_stale_base_gets_a_fresh_version()
-> Result<(), StoreError> {
    let (_d, store) = store();
    store.register_consumers(vec![sub("c", "h")]).await?;
    store
        .publish(vec![msg("m0", "c"), msg("m1", "c"), msg("m2", "c")])
        .await?;
    let jobs = store.claim("c", "h", 3).await?;
    let add = |delta, base, version| StateCommit {
        plugin: "h".into(),
        reads: BTreeMap::new(),
        changes: BTreeMap::from([(
            "n".to_string(),
            StateChange::Add {
                delta,
                base,
                version,
            },
        )]),
    };
    let finish = |job: ClaimedJob, state: StateCommit| succeed_with(&store, job, state);
    let v1 = store.next_state_version();
    let r = finish(jobs[0].clone(), add(5, 0, v1)).await?;
    assert!(matches!(r, FinishResult::Committed { ref reassigned, .. } if reassigned.is_empty()));
    assert_eq!(store.state_get("h", "n").await?, value(b"5", v1));
    // An add the ledger based on a version that is not on disk (a commit
    // before it failed) still adds to what is there, under a new version,
    // and says so.
    let guessed = store.next_state_version();
    let r = finish(jobs[1].clone(), add(2, v1 + 1000, guessed)).await?;
    let FinishResult::Committed { reassigned, .. } = r else {
        panic!("applied: {r:?}");
    };
    assert_eq!(reassigned, ["n"]);
    let now = store.state_get("h", "n").await?;
    assert_eq!(now.value.as_deref(), Some(&b"7"[..]));
    assert_ne!(
        now.version, guessed,
        "nobody who read the guess can pass a check"
    );
    // An add that overflows applies nothing.
    let r = finish(
        jobs[2].clone(),
        add(i64::MAX, now.version, store.next_state_version()),
    )
    .await?;
    assert_eq!(r, FinishResult::Conflict);
    assert_eq!(store.state_get("h", "n").await?, now);
    Ok(())
}

/// Finishes `job` as a success whose commit holds `state` (and nothing else).
async fn succeed_with(
    store: &Store,
    job: ClaimedJob,
    state: StateCommit,
) -> Result<FinishResult, StoreError> {
    store
        .finish(
            &job.job_id,
            job.attempt,
            CallRecord::default(),
            Finish::Succeeded {
                result: None,
                commit: Commit {
                    state,
                    ..Commit::default()
                },
            },
        )
        .await
}

#[tokio::test]
async fn a_claim_that_meets_an_unreadable_row_claims_nothing() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let store = Store::open(&path, &StoreOptions::default())?;
    store.register_consumers(vec![sub("c", "h")]).await?;
    store
        .publish(vec![msg("good", "c"), msg("bad", "c")])
        .await?;
    let raw = rusqlite::Connection::open(&path).expect("open");
    raw.execute(
        "UPDATE jobs SET headers = 'not json' WHERE message_id = 'bad'",
        [],
    )
    .expect("corrupt a row");
    assert!(store.claim("c", "h", 10).await.is_err());
    let running: i64 = raw
        .query_row(
            "SELECT count(*) FROM jobs WHERE state = 'running'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(running, 0, "the failed claim left no job running");
    Ok(())
}

//! The example plugins, end to end: Brighter's TaskReminder (mapper +
//! handler) and the batch job that works in slices with a cursor.

use std::time::Duration;

use serde_json::Value;
use sluice::store::JobState;

use crate::util::{Env, FAST};

const EXAMPLES: &[&str] = &["task-reminder-mapper", "task-reminder", "batch-audit"];

#[test]
fn task_reminder_is_mapped_handled_and_posts_its_event() {
    let env = Env::new(EXAMPLES, FAST);
    let id = env.post(
        "task.reminder",
        r#"{"task":"File the tax return","due":"2026-12-01T09:00:00Z","recipient":"ann@example.com","copy_to":"bob@example.com"}"#,
    );
    let daemon = env.start();
    env.wait_settled("task.reminder", 1, Duration::from_secs(30));
    let job = env.job(&id);
    assert_eq!(
        job.state,
        JobState::Succeeded,
        "{:?}\n{}",
        job.last_error,
        daemon.log_text()
    );
    let result: Value =
        serde_json::from_str(job.result.as_deref().unwrap_or("null")).expect("json");
    assert!(
        result["sent_to"].to_string().contains("ann@example.com"),
        "{result}"
    );
    let sent = env.jobs("task.reminder.sent");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].kind, "event");
    assert!(
        sent[0].body.contains("File the tax return"),
        "{}",
        sent[0].body
    );
}

#[test]
fn a_malformed_message_is_dead_lettered_at_once_by_the_mapper() {
    let env = Env::new(EXAMPLES, FAST);
    let bad = env.post(
        "task.reminder",
        r#"{"task":"x","due":"2026-12-01T09:00:00Z","recipient":"no-at-sign"}"#,
    );
    let not_json = env.ok(&["post", "task.reminder", "this is not json", "--raw"]);
    let good = env.post(
        "task.reminder",
        r#"{"task":"ok","due":"2026-12-01T09:00:00Z","recipient":"ann@example.com"}"#,
    );
    let daemon = env.start();
    env.wait_settled("task.reminder", 3, Duration::from_secs(30));
    for id in [bad.as_str(), not_json.trim()] {
        let job = env.job(id);
        assert_eq!(job.state, JobState::Dead, "{}", daemon.log_text());
        assert_eq!(job.attempts, 1, "poison must not be retried");
        let err = job.last_error.unwrap_or_default();
        assert!(
            err.starts_with("rejected by mapper task-reminder-mapper:"),
            "{err}"
        );
    }
    assert_eq!(
        env.job(&good).state,
        JobState::Succeeded,
        "the pump kept going"
    );
    let dlq = env.ok(&["dlq", "list"]);
    assert!(dlq.contains(&bad) && dlq.contains(not_json.trim()), "{dlq}");
}

#[test]
fn batch_audit_works_through_its_list_in_slices_with_a_cursor() {
    let env = Env::new(EXAMPLES, FAST);
    let id = env.post("audit.batch", r#"{"items": 1000, "slice": 100}"#);
    let daemon = env.start();
    env.wait_settled("audit.batch", 1, Duration::from_secs(60));
    let job = env.job(&id);
    assert_eq!(
        job.state,
        JobState::Succeeded,
        "{:?}\n{}",
        job.last_error,
        daemon.log_text()
    );
    assert_eq!(job.slices, 9, "10 calls: 9 continuations, then done");
    assert_eq!(job.progress, Some(100));
    assert_eq!(env.state("batch-audit", "audited"), Some("1000".into()));
    let result: Value =
        serde_json::from_str(job.result.as_deref().unwrap_or("null")).expect("json");
    assert_eq!(result["audited"], 1000);
}

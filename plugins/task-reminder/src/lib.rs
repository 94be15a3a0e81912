//! Example handler for the `TaskReminder` command on `task.reminder` (the
//! request `task-reminder-mapper` produces). It "sends" the reminder by
//! posting a `task.reminder.sent` event: like every effect, the event goes
//! out only if the call succeeds, so a failed attempt never announces a
//! reminder that was not sent.

use sluice_sdk::prelude::*;

#[derive(Deserialize)]
struct TaskReminder {
    task_name: String,
    due_at: String,
    recipient: String,
    copy_to: Option<String>,
}

struct TaskReminderHandler;

impl Handler for TaskReminderHandler {
    type Request = TaskReminder;

    fn describe() -> Describe {
        Describe::handler("task-reminder", "1.0.0").channel("task.reminder")
    }

    fn handle(ctx: &mut Context, req: TaskReminder) -> Result<Outcome, Error> {
        let sent = serde_json::json!({
            "task_name": req.task_name,
            "recipient": req.recipient,
            "copy_to": req.copy_to,
        });
        ctx.post_with("task.reminder.sent", &sent, PostOptions::new().event())?;
        sluice_sdk::log::info(&format!(
            "reminder {:?} (due {}) sent to {}",
            req.task_name, req.due_at, req.recipient
        ));
        let mut sent_to = vec![req.recipient];
        sent_to.extend(req.copy_to);
        Outcome::done_with(&serde_json::json!({ "sent_to": sent_to }))
    }
}

sluice_sdk::export_handler!(TaskReminderHandler);

//! Example mapper for the `task.reminder` channel, after Brighter's task
//! reminder sample. It keeps the wire format (what other systems put on the
//! channel) apart from the request the `task-reminder` handler works with,
//! and rejects malformed messages as poison before any handler sees them.

use sluice_sdk::prelude::*;

/// The message body on the wire.
#[derive(Serialize, Deserialize)]
struct TaskReminderMessage {
    task: String,
    due: String,
    recipient: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    copy_to: Option<String>,
}

/// The `TaskReminder` request the handler receives.
#[derive(Serialize, Deserialize)]
struct TaskReminder {
    task_name: String,
    due_at: String,
    recipient: String,
    copy_to: Option<String>,
}

fn check(task: &str, recipient: &str) -> Result<(), String> {
    if task.trim().is_empty() {
        return Err("task must not be empty".into());
    }
    if !recipient.contains('@') {
        return Err(format!("recipient {recipient:?} is not an email address"));
    }
    Ok(())
}

struct TaskReminderMapper;

impl Mapper for TaskReminderMapper {
    fn describe() -> Describe {
        Describe::mapper("task-reminder-mapper", "1.0.0").channel("task.reminder")
    }

    fn to_request(message: Message) -> Result<Request, String> {
        let wire: TaskReminderMessage = message.json()?;
        check(&wire.task, &wire.recipient)?;
        let request = TaskReminder {
            task_name: wire.task,
            due_at: wire.due,
            recipient: wire.recipient,
            copy_to: wire.copy_to,
        };
        Request::json("TaskReminder", &request)
    }

    fn to_message(request: Request) -> Result<Outgoing, String> {
        let request: TaskReminder = request.parse()?;
        check(&request.task_name, &request.recipient)?;
        let wire = TaskReminderMessage {
            task: request.task_name,
            due: request.due_at,
            recipient: request.recipient,
            copy_to: request.copy_to,
        };
        Outgoing::json(&wire)
    }
}

sluice_sdk::export_mapper!(TaskReminderMapper);

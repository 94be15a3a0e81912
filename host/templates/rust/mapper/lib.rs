//! {{name}}: a Sluice mapper for channel `{{channel}}`. It turns the
//! channel's wire messages into requests for its handlers, and requests
//! posted to the channel into wire messages.

use sluice_sdk::prelude::*;

/// The wire format of `{{channel}}`: JSON with a name.
#[derive(Debug, Serialize, Deserialize)]
pub struct Wire {
    /// Who the message is about.
    pub name: String,
}

/// The plugin.
pub struct {{Type}};

impl Mapper for {{Type}} {
    fn describe() -> Describe {
        Describe::mapper("{{name}}", env!("CARGO_PKG_VERSION")).channel("{{channel}}")
    }

    /// An `Err` dead-letters the message at once with that reason: the same
    /// bytes will not map any better on a retry.
    fn to_request(message: Message) -> Result<Request, String> {
        if let Some(ct) = message.header("content-type") {
            if !ct.starts_with("application/json") {
                return Err(format!("content-type {ct:?} is not application/json"));
            }
        }
        let wire: Wire = message.json()?;
        if wire.name.trim().is_empty() {
            return Err("name is empty".into());
        }
        Request::json("{{Type}}", &wire)
    }

    fn to_message(request: Request) -> Result<Outgoing, String> {
        let wire: Wire = request.parse()?;
        Outgoing::json(&wire)
    }
}

sluice_sdk::export_mapper!({{Type}});

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &str) -> Message {
        Message {
            id: "m1".into(),
            channel: "{{channel}}".into(),
            kind: MessageKind::Command,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
            attempt: 1,
        }
    }

    #[test]
    fn maps_a_wire_message_to_a_named_request() {
        let request = {{Type}}::to_request(message(r#"{"name":"Ann"}"#)).unwrap();
        assert_eq!(request.name, "{{Type}}");
        assert_eq!(request.parse::<Wire>().unwrap().name, "Ann");
    }

    #[test]
    fn rejects_what_is_not_its_wire_format() {
        assert!({{Type}}::to_request(message("not json")).is_err());
        assert!({{Type}}::to_request(message(r#"{"name":""}"#)).is_err());
    }

    #[test]
    fn round_trips_a_posted_request() {
        let out = {{Type}}::to_message(Request::json("{{Type}}", &serde_json::json!({"name": "Bo"})).unwrap()).unwrap();
        assert_eq!(out.body, br#"{"name":"Bo"}"#);
    }
}

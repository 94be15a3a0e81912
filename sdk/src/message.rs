//! The plain data a mapper works with, mirroring the WIT records.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::short_type_name;

/// A command has exactly one handler; an event goes to every handler of its
/// channel, each of which gets its own copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MessageKind {
    /// Handled exactly once. The default.
    #[default]
    Command,
    /// Handled by every subscriber.
    Event,
}

/// A message as it travels on a channel: what a mapper's
/// [`to_request`](crate::Mapper::to_request) receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message's id, unique per message.
    pub id: String,
    /// The channel it arrived on.
    pub channel: String,
    /// Command or event.
    pub kind: MessageKind,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The wire body, in whatever format the channel uses.
    pub body: Vec<u8>,
    /// 1 on the first delivery.
    pub attempt: u32,
}

impl Message {
    /// Parses the body as JSON into `T`. The error names the type and says
    /// what is wrong, ready to be the reason the message is rejected.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("body is not a valid {}: {e}", short_type_name::<T>()))
    }

    /// The first header named `key`, compared ASCII case-insensitively.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// What a mapper makes of a message and a handler receives: a request type
/// name and its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The request type name, e.g. `TaskReminder`.
    pub name: String,
    /// The body, JSON.
    pub body: String,
}

impl Request {
    /// A request named `name` whose body is `body` serialised to JSON.
    pub fn json<T: Serialize + ?Sized>(name: impl Into<String>, body: &T) -> Result<Self, String> {
        let body =
            serde_json::to_string(body).map_err(|e| format!("cannot encode request: {e}"))?;
        Ok(Self {
            name: name.into(),
            body,
        })
    }

    /// Parses the body into `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(&self.body)
            .map_err(|e| format!("request is not a valid {}: {e}", short_type_name::<T>()))
    }
}

/// A message as a mapper's [`to_message`](crate::Mapper::to_message)
/// produces it; the host adds the id, channel and kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outgoing {
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The wire body.
    pub body: Vec<u8>,
}

impl Outgoing {
    /// A message whose body is `body` serialised to JSON, with the header
    /// `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(body: &T) -> Result<Self, String> {
        let body = serde_json::to_vec(body).map_err(|e| format!("cannot encode message: {e}"))?;
        Ok(Self {
            headers: vec![("content-type".into(), "application/json".into())],
            body,
        })
    }

    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }
}

//! Glue between the generated bindings and the SDK's traits. Public only so
//! the `export_*!` macros can reach it from plugin crates; not part of the
//! API and may change at any time.

use std::marker::PhantomData;

pub use wit_bindgen;

pub mod bindings;

use bindings::handler::exports::sluice::plugin::handler as wit_handler;
use bindings::handler::sluice::plugin::types as wit;
use bindings::mapper::exports::sluice::plugin::mapper as wit_mapper;

use crate::{
    Context, Describe, Error, Handler, Mapper, Message, MessageKind, Outcome, Outgoing, PluginKind,
    Request, duration_ms, short_type_name,
};

/// Implements the generated handler `Guest` trait for any [`Handler`]. The
/// export macro needs a type name, so `export_handler!` aliases this.
pub struct HandlerExport<T>(PhantomData<T>);

/// Implements the generated mapper `Guest` trait for any [`Mapper`].
pub struct MapperExport<T>(PhantomData<T>);

impl<T: Handler> wit_handler::Guest for HandlerExport<T> {
    fn describe() -> wit::PluginInfo {
        plugin_info(T::describe())
    }

    fn handle(
        ctx: wit_handler::JobContext,
        request: wit::Request,
    ) -> Result<wit_handler::Outcome, wit_handler::HandlerError> {
        handle::<T>(ctx, request).map_err(|e| {
            if e.is_retryable() {
                wit_handler::HandlerError::Retryable(e.message().to_owned())
            } else {
                wit_handler::HandlerError::Permanent(e.message().to_owned())
            }
        })
    }
}

/// One call as the host makes it: parse the body into the request type,
/// then handle. Shared by the export and by `testing::TestHost`.
pub(crate) fn run_handler<T: Handler>(
    ctx: wit_handler::JobContext,
    request_name: String,
    body: &str,
) -> Result<Outcome, Error> {
    // A body that does not parse will not parse on a retry either.
    let parsed = serde_json::from_str::<T::Request>(body).map_err(|e| {
        let ty = short_type_name::<T::Request>();
        Error::permanent(format!("request is not a valid {ty}: {e}"))
    })?;
    let mut ctx = Context::new(ctx, request_name);
    T::handle(&mut ctx, parsed)
}

fn handle<T: Handler>(
    ctx: wit_handler::JobContext,
    request: wit::Request,
) -> Result<wit_handler::Outcome, Error> {
    Ok(match run_handler::<T>(ctx, request.name, &request.body)? {
        Outcome::Done(result) => wit_handler::Outcome::Done(result),
        Outcome::Continue { cursor, delay } => {
            wit_handler::Outcome::Continue(wit_handler::Continuation {
                cursor,
                delay_ms: duration_ms(delay),
            })
        }
    })
}

impl<T: Mapper> wit_mapper::Guest for MapperExport<T> {
    fn describe() -> wit::PluginInfo {
        plugin_info(T::describe())
    }

    fn to_request(message: wit::Message) -> Result<wit::Request, String> {
        let message = Message {
            id: message.id,
            channel: message.channel,
            kind: match message.kind {
                wit::MessageKind::Command => MessageKind::Command,
                wit::MessageKind::Event => MessageKind::Event,
            },
            headers: message.headers,
            body: message.body,
            attempt: message.attempt,
        };
        T::to_request(message).map(|r| wit::Request {
            name: r.name,
            body: r.body,
        })
    }

    fn to_message(request: wit::Request) -> Result<wit::Outgoing, String> {
        let request = Request {
            name: request.name,
            body: request.body,
        };
        T::to_message(request).map(|o: Outgoing| wit::Outgoing {
            headers: o.headers,
            body: o.body,
        })
    }
}

fn plugin_info(d: Describe) -> wit::PluginInfo {
    wit::PluginInfo {
        name: d.name().to_owned(),
        version: d.version().to_owned(),
        kind: match d.kind() {
            PluginKind::Handler => wit::PluginKind::Handler,
            PluginKind::Mapper => wit::PluginKind::Mapper,
        },
        channels: d.channels().to_vec(),
        limits: wit::Limits {
            fuel: d.fuel_limit(),
            memory_bytes: d.memory_limit(),
            timeout_ms: d.timeout_limit(),
        },
    }
}

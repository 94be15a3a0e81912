//! Write Sluice message handlers and mappers in Rust.
//!
//! A Sluice plugin is a WebAssembly component that the Sluice host loads and
//! calls once per message. This crate hides the component plumbing behind two
//! traits, one per kind of plugin:
//!
//! * a [`Handler`] does the work for the messages of its channels, and may
//!   post new messages, keep state and report progress through its
//!   [`Context`];
//! * a [`Mapper`] translates a channel's wire messages into typed requests
//!   and back, so handlers never see the wire format (like Brighter's message
//!   mappers).
//!
//! A plugin crate is one or the other: it implements one trait and invokes
//! [`export_handler!`] or [`export_mapper!`] once.
//!
//! # A handler
//!
//! ```
//! use sluice_sdk::prelude::*;
//!
//! /// The request, parsed from the message's JSON body. A body that does
//! /// not parse is rejected for good before `handle` is called.
//! #[derive(Deserialize)]
//! struct Greet {
//!     name: String,
//! }
//!
//! struct Greeter;
//!
//! impl Handler for Greeter {
//!     type Request = Greet;
//!
//!     fn describe() -> Describe {
//!         Describe::handler("greeter", "1.0.0")
//!             .channel("greetings")
//!             .timeout_ms(2_000)
//!     }
//!
//!     fn handle(ctx: &mut Context, req: Greet) -> Result<Outcome, Error> {
//!         // Effects (posts, state, progress) are applied only if this
//!         // call returns Ok, together with the job's completion.
//!         ctx.post("greeted", &serde_json::json!({ "name": req.name }))?;
//!         ctx.progress(50, Some("half way"));
//!         let count: u64 = ctx.state().get("count")?.unwrap_or(0);
//!         ctx.state().set("count", &(count + 1))?;
//!         sluice_sdk::log::info(&format!("greeted {} (#{})", req.name, count + 1));
//!         Outcome::done_with(&serde_json::json!({ "greetings": count + 1 }))
//!     }
//! }
//!
//! sluice_sdk::export_handler!(Greeter);
//! # fn main() {}
//! ```
//!
//! # Building
//!
//! A plugin is a `cdylib` crate that depends on `sluice-sdk` and `serde`
//! (for the derives), built with
//! `cargo build --release --target wasm32-wasip2`. The `.wasm` file in
//! `target/wasm32-wasip2/release/` is the component to give the host; no
//! other tool is needed.
//!
//! # Failing
//!
//! Return [`Error::retryable`] when another attempt might succeed and
//! [`Error::permanent`] when it cannot. Avoid panicking: a panic traps the
//! instance, which the host treats as a crash of that attempt and reports
//! without your reason.
//!
//! # Testing natively
//!
//! The crate also builds for the machine you develop on, so a plugin can be
//! unit-tested with `cargo test`: [`testing::TestHost`] runs a handler the
//! way the host does (typed request from JSON, effects applied only on
//! success) and keeps its state, posts and progress. Logging goes to stderr
//! there.

#![deny(missing_docs)]

// The generated export macros expand inside plugin crates, so every path in
// them starts with `::sluice_sdk`; this makes those paths work here too.
extern crate self as sluice_sdk;

use std::time::Duration;

use serde::de::DeserializeOwned;

mod context;
mod describe;
mod effects;
mod error;
pub mod log;
mod message;
mod outcome;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[doc(hidden)]
#[path = "export.rs"]
pub mod __private;

pub use context::{Context, PostOptions, State};
pub use describe::{Describe, PluginKind};
pub use error::Error;
pub use message::{Message, MessageKind, Outgoing, Request};
pub use outcome::Outcome;

/// The names most plugins need: `use sluice_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Context, Describe, Error, Handler, Mapper, Message, MessageKind, Outcome, Outgoing,
        PostOptions, Request,
    };
    pub use serde::{Deserialize, Serialize};
}

/// A plugin that does the work for the messages of its channels.
///
/// Both functions are associated functions (no `self`): the host may create a
/// fresh instance for any call, so nothing survives between calls except
/// what goes through [`Context::state`].
pub trait Handler {
    /// The request, parsed from the message's JSON body. Parsing happens
    /// before [`handle`](Self::handle); a body that does not parse fails the
    /// message permanently with `request is not a valid <type>: <reason>`.
    /// Use `serde_json::Value` to accept anything.
    type Request: DeserializeOwned;

    /// Says who the plugin is, which channels it serves and which limits it
    /// wants. Called once when the host loads the plugin; a panic here makes
    /// the load fail.
    fn describe() -> Describe;

    /// Handles one message. Return `Ok` to commit the call's effects, or an
    /// [`Error`] to drop them and retry or dead-letter the message.
    fn handle(ctx: &mut Context, request: Self::Request) -> Result<Outcome, Error>;
}

/// A plugin that turns a channel's wire messages into requests and back.
///
/// Errors are plain strings: they become the reason recorded with the
/// rejected message, so make them say what is wrong with it.
pub trait Mapper {
    /// Says who the plugin is and which channels it maps. Build it with
    /// [`Describe::mapper`].
    fn describe() -> Describe;

    /// Wire message -> request. An `Err` rejects the message as poison: it
    /// is dead-lettered at once with that reason and never retried, since
    /// the same bytes will not map any better next time.
    fn to_request(message: Message) -> Result<Request, String>;

    /// Request -> wire message, used when something posts to this channel.
    fn to_message(request: Request) -> Result<Outgoing, String>;
}

/// Exports a [`Handler`] as the plugin's entry point. Invoke it once, at the
/// top level of the plugin crate.
///
/// It expands to the `sluice:plugin/handler` exports and to the custom
/// section that describes the `handler-plugin` world, and nothing of the
/// mapper world, so the component is a handler and only a handler.
#[macro_export]
macro_rules! export_handler {
    ($handler:ty) => {
        const _: () = {
            type SluiceHandlerExport = $crate::__private::HandlerExport<$handler>;
            $crate::__private::bindings::handler::export_handler_world!(
                SluiceHandlerExport with_types_in $crate::__private::bindings::handler
            );
        };
    };
}

/// Exports a [`Mapper`] as the plugin's entry point. Invoke it once, at the
/// top level of the plugin crate.
///
/// Like [`export_handler!`], it brings in only its own world (`mapper-plugin`).
#[macro_export]
macro_rules! export_mapper {
    ($mapper:ty) => {
        const _: () = {
            type SluiceMapperExport = $crate::__private::MapperExport<$mapper>;
            $crate::__private::bindings::mapper::export_mapper_world!(
                SluiceMapperExport with_types_in $crate::__private::bindings::mapper
            );
        };
    };
}

/// Milliseconds in `d`, saturating: the WIT uses `u64` milliseconds.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `std::any::type_name` without module paths (`alloc::vec::Vec<my::Item>`
/// becomes `Vec<Item>`), for error messages a plugin author can read.
pub(crate) fn short_type_name<T: ?Sized>() -> String {
    let full = std::any::type_name::<T>();
    let last = |path: &str| path.rsplit("::").next().unwrap_or_default().to_owned();
    let mut out = String::with_capacity(full.len());
    let mut path = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            path.push(c);
        } else {
            out += &last(&path);
            path.clear();
            out.push(c);
        }
    }
    out + &last(&path)
}

#[cfg(test)]
mod tests;

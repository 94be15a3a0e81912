//! A loaded plugin version, and its calls.
//!
//! A call only instantiates from the `InstancePre` made at load (a pool
//! slot reuse) into a fresh store (see `call.rs`) and calls one export.
//! A `Plugin` is one compiled version: clones share it, and an in-flight
//! call holds a clone, so replacing a plugin in the registry never pulls
//! the code out from under a running call.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::bindings::{handler, mapper};
use super::call::{Call, CallSetup, CallState};
use super::engine::Shared;
use super::host::{
    MAX_CURSOR, MAX_DELAY_MS, MAX_HEADERS, MAX_LINE, MAX_POST_BODY, MAX_REQUEST_BODY,
    MAX_REQUEST_NAME, MAX_RESULT,
};
use super::load::LoadError;
use super::trap::{Failure, truncate};
use super::types::{
    CallFailure, CallReport, Effects, JobContext, Limits, MapFailure, Outcome, PluginInfo,
    StateSource, TrapKind,
};
use super::validate::check_limits;
use crate::message::{Message, MessageKind, Outgoing, Request};

use handler::exports::sluice::plugin::handler as wit_handler;

/// One compiled, validated plugin version; cheap to clone.
#[derive(Clone)]
pub struct Plugin(Arc<Version>);

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let info = self.info();
        f.debug_struct("Plugin")
            .field("name", &info.name)
            .field("version", &info.version)
            .field("kind", &info.kind)
            .field("hash", &self.hash())
            .field("limits", &self.limits())
            .finish()
    }
}

/// A compiled plugin under one set of limits.
struct Version {
    compiled: Arc<Compiled>,
    limits: Limits,
}

/// What loading produced, shared by every limits variant of it.
pub(super) struct Compiled {
    /// Keeps the engine (and so the epoch ticker) alive.
    pub(super) runtime: Arc<Shared>,
    pub(super) exports: Exports,
    pub(super) info: Arc<PluginInfo>,
    /// SHA-256 of the bytes, hex.
    pub(super) hash: String,
}

/// The linked component, by world.
pub(super) enum Exports {
    Handler(handler::HandlerPluginPre<CallState>),
    Mapper(mapper::MapperPluginPre<CallState>),
}

impl Plugin {
    /// Resolves (the plugin's ask, capped by `ceiling`) and checks the
    /// limits of a compiled plugin.
    pub(super) fn resolve(compiled: Arc<Compiled>, ceiling: Limits) -> Result<Plugin, LoadError> {
        let config = &compiled.runtime.config;
        let limits = Limits::resolve(ceiling, compiled.info.limits);
        let who = format!("plugin {}", compiled.info.name);
        check_limits(&who, limits, config.max_memory_bytes).map_err(LoadError::Invalid)?;
        Ok(Plugin(Arc::new(Version { compiled, limits })))
    }

    /// The same compiled plugin under another ceiling (the operator's
    /// `[plugin.NAME]` limits; [`Runtime::load`] applies `[limits]`). No
    /// recompilation.
    pub fn with_ceiling(&self, ceiling: Limits) -> Result<Plugin, LoadError> {
        Plugin::resolve(Arc::clone(&self.0.compiled), ceiling)
    }

    /// What `describe()` said.
    pub fn info(&self) -> &PluginInfo {
        &self.0.compiled.info
    }

    /// The limits every call runs under: what the plugin asked for
    /// (`info().limits`), capped by the operator's ceiling.
    pub fn limits(&self) -> Limits {
        self.0.limits
    }

    /// SHA-256 of the component's bytes, hex.
    pub fn hash(&self) -> &str {
        &self.0.compiled.hash
    }

    fn setup(&self, job_id: Option<String>, state: Option<Arc<dyn StateSource>>) -> CallSetup {
        let compiled = &self.0.compiled;
        CallSetup {
            plugin: Arc::clone(&compiled.info),
            limits: self.0.limits,
            max_log_lines: compiled.runtime.config.max_log_lines_per_call,
            job_id,
            state,
            cancel: None,
        }
    }

    /// Runs the handler on one request in a fresh instance. Every failure,
    /// the guest's or the host's, is in the report.
    pub async fn handle(
        &self,
        ctx: JobContext,
        request: Request,
        state: Arc<dyn StateSource>,
        cancel: CancellationToken,
    ) -> CallReport {
        let compiled = &self.0.compiled;
        let Exports::Handler(pre) = &compiled.exports else {
            let m = format!("plugin {} is a mapper, not a handler", compiled.info.name);
            return failed_report(CallFailure::Host(m), Duration::ZERO);
        };
        // Wait for a slot of the host's call budget; a cancel (operator,
        // shutdown) while waiting stops the wait like it stops a guest.
        let lane = lane(&compiled.info.name, &ctx.channel);
        let _ticket = tokio::select! {
            biased;
            () = cancel.cancelled() => {
                return failed_report(CallFailure::Trap(TrapKind::Cancelled), Duration::ZERO);
            }
            t = compiled.runtime.admission.enter(&lane) => t,
        };
        let setup = CallSetup {
            cancel: Some(cancel),
            ..self.setup(Some(ctx.job_id.clone()), Some(state))
        };
        let mut call = match Call::new(&compiled.runtime.engine, setup) {
            Ok(call) => call,
            Err(f) => return failed_report(call_failure(f), Duration::ZERO),
        };
        let wit_ctx = wit_handler::JobContext {
            job_id: ctx.job_id,
            message_id: ctx.message_id,
            channel: ctx.channel,
            attempt: ctx.attempt,
            headers: ctx.headers,
            cursor: ctx.cursor,
        };
        let wit_request = handler::sluice::plugin::types::Request {
            name: request.name,
            body: request.body,
        };
        let guard = call.guard();
        let store = &mut call.store;
        let outcome = guard
            .race(async {
                let plugin = pre.instantiate_async(&mut *store).await?;
                let guest = plugin.sluice_plugin_handler();
                guest.call_handle(&mut *store, &wit_ctx, &wit_request).await
            })
            .await;
        let finished = call.finish(outcome);
        let result = match finished.result {
            Ok(Ok(wit_handler::Outcome::Done(result))) => {
                match within("result", result.as_ref().map_or(0, String::len), MAX_RESULT) {
                    Ok(()) => Ok(Outcome::Done { result }),
                    Err(f) => Err(call_failure(f)),
                }
            }
            Ok(Ok(wit_handler::Outcome::Continue(c))) => {
                let delay = if c.delay_ms > MAX_DELAY_MS {
                    Err(Failure::Limit(format!(
                        "continuation delay of {} ms is over the limit of {MAX_DELAY_MS} ms (a year)",
                        c.delay_ms
                    )))
                } else {
                    Ok(())
                };
                match delay.and_then(|()| within("continuation cursor", c.cursor.len(), MAX_CURSOR))
                {
                    Ok(()) => Ok(Outcome::Continue {
                        cursor: c.cursor,
                        delay_ms: c.delay_ms,
                    }),
                    Err(f) => Err(call_failure(f)),
                }
            }
            Ok(Err(wit_handler::HandlerError::Retryable(m))) => {
                Err(CallFailure::Retryable(truncate(&m, MAX_LINE)))
            }
            Ok(Err(wit_handler::HandlerError::Permanent(m))) => {
                Err(CallFailure::Permanent(truncate(&m, MAX_LINE)))
            }
            Err(f) => Err(call_failure(f)),
        };
        CallReport {
            // Effects of a failed call must never be applied: drop them
            // here. Its reads stay (nothing applies them): with shared
            // state the pump checks that the failure was not decided on a
            // value another host had changed (`state/remote.rs`).
            effects: if result.is_ok() {
                finished.effects
            } else {
                Effects {
                    state_reads: finished.effects.state_reads,
                    ..Effects::default()
                }
            },
            result,
            fuel_used: finished.fuel_used,
            duration: finished.duration,
        }
    }

    /// Wire message -> request, through this mapper.
    pub async fn to_request(&self, message: &Message, attempt: u32) -> Result<Request, MapFailure> {
        let compiled = &self.0.compiled;
        let Exports::Mapper(pre) = &compiled.exports else {
            return Err(not_a_mapper(&compiled.info.name));
        };
        let lane = lane(&compiled.info.name, &message.channel);
        let _ticket = compiled.runtime.admission.enter(&lane).await;
        let mut call =
            Call::new(&compiled.runtime.engine, self.setup(None, None)).map_err(map_failure)?;
        let headers: Vec<(&str, &str)> = message
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let wit_message = mapper::sluice::plugin::types::Message {
            id: &message.id,
            channel: &message.channel,
            kind: match message.kind {
                MessageKind::Command => mapper::sluice::plugin::types::MessageKind::Command,
                MessageKind::Event => mapper::sluice::plugin::types::MessageKind::Event,
            },
            headers: &headers,
            body: &message.body,
            attempt,
        };
        let guard = call.guard();
        let store = &mut call.store;
        let outcome = guard
            .race(async {
                let plugin = pre.instantiate_async(&mut *store).await?;
                let guest = plugin.sluice_plugin_mapper();
                guest.call_to_request(&mut *store, wit_message).await
            })
            .await;
        match call.finish(outcome).result.map_err(map_failure)? {
            Ok(r) => {
                within("request name", r.name.len(), MAX_REQUEST_NAME)
                    .and_then(|()| within("request body", r.body.len(), MAX_REQUEST_BODY))
                    .map_err(map_failure)?;
                Ok(Request {
                    name: r.name,
                    body: r.body,
                })
            }
            Err(reason) => Err(MapFailure::Rejected(truncate(&reason, MAX_LINE))),
        }
    }

    /// Request -> wire message, through this mapper.
    pub async fn to_message(&self, request: &Request) -> Result<Outgoing, MapFailure> {
        let compiled = &self.0.compiled;
        let Exports::Mapper(pre) = &compiled.exports else {
            return Err(not_a_mapper(&compiled.info.name));
        };
        let lane = lane(&compiled.info.name, "(posts)");
        let _ticket = compiled.runtime.admission.enter(&lane).await;
        let mut call =
            Call::new(&compiled.runtime.engine, self.setup(None, None)).map_err(map_failure)?;
        let wit_request = mapper::sluice::plugin::types::RequestParam {
            name: &request.name,
            body: &request.body,
        };
        let guard = call.guard();
        let store = &mut call.store;
        let outcome = guard
            .race(async {
                let plugin = pre.instantiate_async(&mut *store).await?;
                let guest = plugin.sluice_plugin_mapper();
                guest.call_to_message(&mut *store, wit_request).await
            })
            .await;
        match call.finish(outcome).result.map_err(map_failure)? {
            Ok(o) => {
                let outgoing = Outgoing {
                    headers: o.headers,
                    body: o.body,
                };
                check_outgoing(&outgoing).map_err(map_failure)?;
                Ok(outgoing)
            }
            Err(reason) => Err(MapFailure::Rejected(truncate(&reason, MAX_LINE))),
        }
    }
}

/// The admission lane of a call: its plugin and channel (see
/// `admission.rs`). The ticket is declared before the call, so the call's
/// store (and pool slot) is dropped before the ticket is given back.
fn lane(plugin: &str, channel: &str) -> String {
    format!("{plugin} {channel}")
}

fn not_a_mapper(name: &str) -> MapFailure {
    MapFailure::Host(format!("plugin {name} is a handler, not a mapper"))
}

/// A limit a guest exceeded is a permanent failure: the same input would
/// exceed it again (for a mapper: the message is poison).
fn call_failure(f: Failure) -> CallFailure {
    match f {
        Failure::Trap(t) => CallFailure::Trap(t),
        Failure::Host(m) => CallFailure::Host(m),
        Failure::Limit(m) => CallFailure::Permanent(format!("sandbox limit: {m}")),
        Failure::Invalid(m) => CallFailure::Permanent(m),
        Failure::StateWait(key) => CallFailure::StateWait { key },
    }
}

fn map_failure(f: Failure) -> MapFailure {
    match f {
        Failure::Trap(t) => MapFailure::Trap(t),
        Failure::Host(m) | Failure::StateWait(m) => MapFailure::Host(m),
        Failure::Limit(m) => MapFailure::Rejected(format!("sandbox limit: {m}")),
        // Mappers have no state imports; nothing raises this for them.
        Failure::Invalid(m) => MapFailure::Rejected(m),
    }
}

/// `Err` naming the bound when `len` bytes of `what` are over `max`.
fn within(what: &str, len: usize, max: usize) -> Result<(), Failure> {
    if len > max {
        return Err(Failure::Limit(format!(
            "{what} of {len} bytes is over the limit of {max} bytes"
        )));
    }
    Ok(())
}

/// A mapper's wire message: header count and body size as for a post.
fn check_outgoing(o: &Outgoing) -> Result<(), Failure> {
    if o.headers.len() > MAX_HEADERS {
        return Err(Failure::Limit(format!(
            "message with {} headers: a message may carry at most {MAX_HEADERS}",
            o.headers.len()
        )));
    }
    within("message body", o.body.len(), MAX_POST_BODY)
}

fn failed_report(failure: CallFailure, duration: Duration) -> CallReport {
    CallReport {
        result: Err(failure),
        effects: Effects::default(),
        fuel_used: 0,
        duration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Runtime;

    /// Compile-time only: the pump spawns these futures.
    #[allow(dead_code)]
    fn futures_are_send(
        rt: &Runtime,
        p: &Plugin,
        m: &Message,
        r: &Request,
        s: Arc<dyn StateSource>,
    ) {
        fn send<T: Send>(_: &T) {}
        send(&rt.load(Vec::new()));
        let ctx = JobContext {
            job_id: String::new(),
            message_id: String::new(),
            channel: String::new(),
            attempt: 1,
            headers: Vec::new(),
            cursor: None,
        };
        send(&p.handle(ctx, r.clone(), s, CancellationToken::new()));
        send(&p.to_request(m, 1));
        send(&p.to_message(r));
    }
}

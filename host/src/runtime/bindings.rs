//! Rust bindings generated from `wit/sluice.wit`, one module per world.
//!
//! Why two invocations: a plugin targets exactly one world, and each world
//! gets its own typed `*Pre` (pre-instantiated, linked once per plugin
//! version). The worlds share the `log` interface: the mapper bindings reuse
//! the handler's (`with`), so `host.rs` implements it once. `types` stays
//! per world because the mapper borrows its records.
//!
//! Options, and why:
//! - every export is `async`: calls run on a wasmtime fiber so the epoch
//!   callback can yield to tokio, and a call future can be dropped;
//! - imports are `trappable`: the host stops a guest that exceeds its effect
//!   bounds; `state-get` is also `async` because it may wait its turn for
//!   a key and load it (see `crate::state`);
//! - the mapper world uses borrowed parameters: `to-request` gets the wire
//!   message's body without a copy. (The handler world cannot: wasmtime 48's
//!   generator emits invalid code for its unused borrowed types; handler
//!   arguments are owned anyway and moved in.)

/// The `handler-plugin` world.
pub(super) mod handler {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "handler-plugin",
        imports: {
            "sluice:plugin/effects.state-get": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}

/// The `mapper-plugin` world.
pub(super) mod mapper {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "mapper-plugin",
        imports: { default: trappable },
        exports: { default: async },
        ownership: Borrowing { duplicate_if_necessary: true },
        // One `log` interface for both worlds, so the host implements it once.
        with: { "sluice:plugin/log": super::handler::sluice::plugin::log },
    });
}

/// The export that makes a component a handler, as the docs spell it: any
/// `0.1.x` of the interface (see [`exports_interface`]).
pub(super) const HANDLER_EXPORT: &str = "sluice:plugin/handler@0.1.x";
/// See [`HANDLER_EXPORT`].
pub(super) const MAPPER_EXPORT: &str = "sluice:plugin/mapper@0.1.x";

/// True when the export `name` is `family` (one of the consts above) at
/// some `0.1.x`. The bindings are generated from the newest WIT
/// (`0.1.1`); a component built against an older `0.1.x` exports and
/// imports older names, which wasmtime resolves as semver-compatible when
/// it links and instantiates, so a plugin built against `0.1.0` keeps
/// loading. Pre-releases (`0.1.1-rc`) are not compatible with anything,
/// as in wasmtime's own matching.
pub(super) fn exports_interface(name: &str, family: &str) -> bool {
    let Some(prefix) = family.strip_suffix('x') else {
        return false;
    };
    name.strip_prefix(prefix)
        .is_some_and(|patch| !patch.is_empty() && patch.bytes().all(|b| b.is_ascii_digit()))
}

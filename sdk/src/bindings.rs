//! Raw bindings generated from the SDK's copy of the WIT, `sdk/wit/sluice.wit`
//! (a copy so the crate builds wherever it is: from git, a path or a
//! registry; `tests/it/wit.rs` fails when it drifts from the top-level
//! `wit/`). Not part of the public API:
//! plugin authors use the safe wrappers in the rest of the crate.
//!
//! # Why two `generate!` calls can live in one library
//!
//! A plugin component must target exactly one world. `wit-component` (run by
//! `wasm-component-ld` when a `wasm32-wasip2` cdylib is linked) unions every
//! `component-type:*` custom section it finds in the core module and then
//! insists that the module export everything the union exports. Both
//! generated modules below end up in every plugin that links this crate, so
//! if each of them carried its world's *exports* in a custom section, a
//! handler would also be asked for the mapper exports and vice versa.
//!
//! `pub_export_macro: true` is what prevents that. With it, wit-bindgen
//! splits the world description in two:
//!
//! 1. The section emitted here, in the SDK, describes the world *with all of
//!    its exports removed*. It only adds imports, and `wit-component` drops
//!    imports nobody calls, so it is harmless in a plugin of the other kind.
//! 2. The full world (imports and exports) is emitted by the generated
//!    `export!` macro, i.e. inside the plugin crate, and only when that macro
//!    is expanded. `export_handler!` expands only the handler one and
//!    `export_mapper!` only the mapper one, so each component gets exactly one
//!    world's exports.
//!
//! `scripts/build-plugins` builds both kinds from one workspace (one build of
//! this crate, so Cargo features could not select a world) and the result was
//! checked with `wasm-tools component wit`: handler plugins export only
//! `sluice:plugin/handler@0.1.x`, mappers only `sluice:plugin/mapper@0.1.x`
//! (x: the WIT package's patch version, 1 today).
//!
//! The same pruning means a plugin imports only the effect functions it
//! calls. That does not make a plugin built against `0.1.1` load on a host
//! from before `0.1.1`: such a host looks for the `handler@0.1.0` export by
//! its exact name. Hosts load any older `0.1.x`, so upgrade hosts first.
//!
//! The mapper bindings reuse the handler bindings' `types` and `log` modules
//! (`with`), so the SDK has one Rust type per WIT type and one `log` import.
//! All paths start with `::sluice_sdk` (see `extern crate self` in `lib.rs`)
//! because the export macros expand in the plugin crate, where `crate` and a
//! bare `wit_bindgen` would not resolve.

/// Bindings for the `handler-plugin` world, plus the shared `types` and
/// `log` interfaces.
pub mod handler {
    wit_bindgen::generate!({
        path: "wit",
        world: "sluice:plugin/handler-plugin@0.1.1",
        runtime_path: "::sluice_sdk::__private::wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "export_handler_world",
        default_bindings_module: "::sluice_sdk::__private::bindings::handler",
        // `message` and `outgoing` are only used by the mapper world, which
        // takes them from here.
        generate_unused_types: true,
    });
}

/// Bindings for the `mapper-plugin` world.
pub mod mapper {
    wit_bindgen::generate!({
        path: "wit",
        world: "sluice:plugin/mapper-plugin@0.1.1",
        runtime_path: "::sluice_sdk::__private::wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "export_mapper_world",
        default_bindings_module: "::sluice_sdk::__private::bindings::mapper",
        with: {
            "sluice:plugin/types@0.1.1": ::sluice_sdk::__private::bindings::handler::sluice::plugin::types,
            "sluice:plugin/log@0.1.1": ::sluice_sdk::__private::bindings::handler::sluice::plugin::log,
        },
    });
}

//! Loading: bytes of a `.wasm` file -> a validated [`Plugin`].
//!
//! The expensive work happens once per plugin version, off the call path:
//! compile (on a blocking thread: seconds of CPU for a big component; or
//! read it from the compile cache, see `cache.rs`), tell
//! the world by the interface the component exports, link it against the
//! host's imports into an `InstancePre`, ask it `describe()` in a sandboxed
//! call, and validate the answer. Every error is one line an operator can
//! act on.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::bindings::{HANDLER_EXPORT, MAPPER_EXPORT, exports_interface, handler, mapper};
use super::call::{Call, CallSetup};
use super::engine::{Runtime, Shared};
use super::plugin::{Compiled, Exports, Plugin};
use super::trap::Failure;
use super::types::{Limits, LimitsSpec, PluginInfo, PluginKind};
use super::validate::check_info;

/// Why a file could not become a plugin. Each message is one line an
/// operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a component: garbage, or a core wasm module.
    #[error("not a WebAssembly component: {0}")]
    NotWasm(String),
    /// wasmtime could not compile it.
    #[error("cannot compile the component: {0}")]
    Compile(String),
    /// A component, but not a Sluice plugin.
    #[error(
        "exports neither {HANDLER_EXPORT} nor {MAPPER_EXPORT} (it exports: {})",
        list(exports)
    )]
    WrongWorld {
        /// What it does export.
        exports: Vec<String>,
    },
    /// It imports something the host does not provide, or its exports do
    /// not match the WIT contract.
    #[error("cannot link the component: {0}")]
    Link(String),
    /// `describe()` trapped.
    #[error("describe() failed: {0}")]
    Describe(String),
    /// `describe()` answered something unusable, or the limits are.
    #[error("invalid plugin: {0}")]
    Invalid(String),
}

fn list(exports: &[String]) -> String {
    if exports.is_empty() {
        "nothing".into()
    } else {
        exports.join(", ")
    }
}

impl Runtime {
    /// Compiles, links, describes and validates a component. Its limits are
    /// what it asks for capped by the runtime's ceiling (`[limits]`); see
    /// [`Plugin::with_ceiling`] for a plugin's own.
    pub async fn load(&self, bytes: Vec<u8>) -> Result<Plugin, LoadError> {
        check_header(&bytes)?;
        let shared = &self.0;
        let owned = Arc::clone(shared);
        let (component, hash) = tokio::task::spawn_blocking(move || {
            let hash = sha256_hex(&bytes);
            let component = match &owned.cache {
                Some(cache) => cache.get_or_compile(&owned.engine, &hash, &bytes),
                None => Component::new(&owned.engine, &bytes),
            };
            component.map(|c| (c, hash))
        })
        .await
        .map_err(|e| LoadError::Compile(format!("the compiler thread failed: {e}")))?
        .map_err(|e| LoadError::Compile(one_line(&e)))?;

        let (world, exports) = link(shared, &component)?;
        // The largest memory any plugin may get: a plugin whose own ceiling
        // is above `[limits]` must be able to instantiate for describe().
        let describe_limits = Limits {
            memory_bytes: shared.config.max_memory_bytes,
            ..shared.config.ceiling
        };
        let info = describe(shared, &exports, world, describe_limits).await?;
        check_info(&info, world).map_err(LoadError::Invalid)?;
        let compiled = Arc::new(Compiled {
            runtime: Arc::clone(shared),
            exports,
            info: Arc::new(info),
            hash,
        });
        Plugin::resolve(compiled, shared.config.ceiling)
    }
}

/// Tells garbage and core modules from components before compiling.
fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    let not = |m: &str| Err(LoadError::NotWasm(m.to_owned()));
    if bytes.len() < 8 || bytes[..4] != *b"\0asm" {
        return not("the file does not start with the WebAssembly magic bytes");
    }
    // Bytes 4..8: a core module has version 1 (layer 0); a component has
    // layer 1 in bytes 6..8.
    match bytes[6..8] {
        [1, 0] => Ok(()),
        [0, 0] => not(
            "it is a core wasm module; build it as a component (cargo build --target wasm32-wasip2)",
        ),
        _ => not("unknown WebAssembly binary layer"),
    }
}

/// SHA-256 of `bytes`, lower-case hex: a plugin version's identity.
pub fn sha256_hex(bytes: &[u8]) -> String {
    super::cache::hex(&Sha256::digest(bytes))
}

/// wasmtime's error chain on one line.
fn one_line(e: &wasmtime::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// Detects the world by exported interface and links the component once.
fn link(shared: &Shared, component: &Component) -> Result<(PluginKind, Exports), LoadError> {
    let ty = component.component_type();
    let names: Vec<String> = ty
        .exports(&shared.engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let has = |family: &str| names.iter().any(|e| exports_interface(e, family));
    let link_err = |e: wasmtime::Error| LoadError::Link(one_line(&e));
    match (has(HANDLER_EXPORT), has(MAPPER_EXPORT)) {
        (true, true) => Err(LoadError::Invalid(format!(
            "exports both {HANDLER_EXPORT} and {MAPPER_EXPORT}; a plugin is one or the other"
        ))),
        (true, false) => {
            let pre = shared
                .handler_linker
                .instantiate_pre(component)
                .map_err(link_err)?;
            let pre = handler::HandlerPluginPre::new(pre).map_err(link_err)?;
            Ok((PluginKind::Handler, Exports::Handler(pre)))
        }
        (false, true) => {
            let pre = shared
                .mapper_linker
                .instantiate_pre(component)
                .map_err(link_err)?;
            let pre = mapper::MapperPluginPre::new(pre).map_err(link_err)?;
            Ok((PluginKind::Mapper, Exports::Mapper(pre)))
        }
        (false, false) => Err(LoadError::WrongWorld { exports: names }),
    }
}

/// Calls `describe()` in a fresh store under `limits`.
async fn describe(
    shared: &Shared,
    exports: &Exports,
    world: PluginKind,
    limits: Limits,
) -> Result<PluginInfo, LoadError> {
    let loading = Arc::new(PluginInfo {
        name: "(loading)".into(),
        version: String::new(),
        kind: world,
        channels: Vec::new(),
        limits: LimitsSpec::default(),
    });
    let setup = CallSetup {
        plugin: loading,
        limits,
        max_log_lines: shared.config.max_log_lines_per_call,
        job_id: None,
        state: None,
        cancel: None,
    };
    // describe() is a sandboxed call like any other: it takes a ticket.
    let _ticket = shared.admission.enter("(loading)").await;
    let mut call = Call::new(&shared.engine, setup).map_err(describe_err)?;
    let guard = call.guard();
    let store = &mut call.store;
    let finished = match exports {
        Exports::Handler(pre) => {
            let outcome = guard
                .race(async {
                    let plugin = pre.instantiate_async(&mut *store).await?;
                    let info = plugin
                        .sluice_plugin_handler()
                        .call_describe(&mut *store)
                        .await?;
                    Ok(handler_info(info))
                })
                .await;
            call.finish(outcome)
        }
        Exports::Mapper(pre) => {
            let outcome = guard
                .race(async {
                    let plugin = pre.instantiate_async(&mut *store).await?;
                    let info = plugin
                        .sluice_plugin_mapper()
                        .call_describe(&mut *store)
                        .await?;
                    Ok(mapper_info(info))
                })
                .await;
            call.finish(outcome)
        }
    };
    finished.result.map_err(describe_err)
}

fn describe_err(f: Failure) -> LoadError {
    LoadError::Describe(match f {
        Failure::Trap(t) => t.to_string(),
        Failure::Host(m) | Failure::StateWait(m) => format!("host error: {m}"),
        Failure::Limit(m) => format!("sandbox limit: {m}"),
        Failure::Invalid(m) => m,
    })
}

fn handler_info(i: handler::sluice::plugin::types::PluginInfo) -> PluginInfo {
    use handler::sluice::plugin::types::PluginKind as K;
    PluginInfo {
        name: i.name,
        version: i.version,
        kind: match i.kind {
            K::Handler => PluginKind::Handler,
            K::Mapper => PluginKind::Mapper,
        },
        channels: i.channels,
        limits: LimitsSpec {
            fuel: i.limits.fuel,
            memory_bytes: i.limits.memory_bytes,
            timeout_ms: i.limits.timeout_ms,
        },
    }
}

fn mapper_info(i: mapper::sluice::plugin::types::PluginInfo) -> PluginInfo {
    use mapper::sluice::plugin::types::PluginKind as K;
    PluginInfo {
        name: i.name,
        version: i.version,
        kind: match i.kind {
            K::Handler => PluginKind::Handler,
            K::Mapper => PluginKind::Mapper,
        },
        channels: i.channels,
        limits: LimitsSpec {
            fuel: i.limits.fuel,
            memory_bytes: i.limits.memory_bytes,
            timeout_ms: i.limits.timeout_ms,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_garbage_and_core_modules_from_components() {
        let err = |b: &[u8]| {
            check_header(b)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err(b"hello world").contains("magic bytes"));
        assert!(err(b"\0asm\x01\0\0\0").contains("core wasm module"));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn wrong_world_message_lists_exports() {
        let e = LoadError::WrongWorld {
            exports: vec!["wasi:cli/run@0.2.6".into()],
        };
        assert_eq!(
            e.to_string(),
            "exports neither sluice:plugin/handler@0.1.x nor sluice:plugin/mapper@0.1.x \
             (it exports: wasi:cli/run@0.2.6)"
        );
    }

    #[tokio::test]
    async fn rejects_what_is_not_a_plugin() {
        let runtime = match Runtime::new(super::super::RuntimeConfig::default()) {
            Ok(r) => r,
            Err(e) => panic!("runtime: {e}"),
        };
        let load = |bytes: &[u8]| runtime.load(bytes.to_vec());
        assert!(matches!(
            load(b"garbage!").await,
            Err(LoadError::NotWasm(_))
        ));
        assert!(matches!(
            load(b"\0asm\x01\0\0\0").await,
            Err(LoadError::NotWasm(_))
        ));
        // The smallest component: valid, but exports nothing.
        match load(b"\0asm\x0d\0\x01\0").await {
            Err(e @ LoadError::WrongWorld { .. }) => {
                assert!(e.to_string().ends_with("(it exports: nothing)"))
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("an empty component loaded"),
        }
    }

    #[test]
    fn any_patch_of_the_interface_names_the_world() {
        use super::super::bindings::exports_interface as is;
        assert!(is("sluice:plugin/handler@0.1.0", HANDLER_EXPORT));
        assert!(is("sluice:plugin/handler@0.1.1", HANDLER_EXPORT));
        assert!(is("sluice:plugin/handler@0.1.17", HANDLER_EXPORT));
        assert!(!is("sluice:plugin/handler@0.2.0", HANDLER_EXPORT));
        assert!(!is("sluice:plugin/handler@0.1.1-rc.1", HANDLER_EXPORT));
        assert!(!is("sluice:plugin/handler@0.1.", HANDLER_EXPORT));
        assert!(!is("sluice:plugin/handler", HANDLER_EXPORT));
        assert!(!is("sluice:plugin/handler@0.1.1", MAPPER_EXPORT));
        assert!(is("sluice:plugin/mapper@0.1.0", MAPPER_EXPORT));
    }

    #[test]
    fn hashes_as_hex() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}

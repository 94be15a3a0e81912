//! Logging to the host's log.
//!
//! Lines are tagged by the host with the plugin's name and the job id, so
//! there is no need to repeat them. A guest has no usable stdout or stderr in
//! production (the host gives it an empty WASI context), so these functions
//! are the way to say something. Logging is not an effect: a line is written
//! even if the call later fails, which is what you want when debugging.
//!
//! Off WebAssembly (e.g. in a plugin's native unit tests) the lines go to
//! stderr instead, so code that logs can still be tested with `cargo test`.

#[cfg(target_arch = "wasm32")]
use crate::__private::bindings::handler::sluice::plugin::log::{Level, log};

/// Logs at trace level: the finest detail, usually filtered out.
pub fn trace(message: &str) {
    write(Lvl::Trace, message);
}

/// Logs at debug level: detail that helps when something goes wrong.
pub fn debug(message: &str) {
    write(Lvl::Debug, message);
}

/// Logs at info level: what happened, in normal operation.
pub fn info(message: &str) {
    write(Lvl::Info, message);
}

/// Logs at warn level: something odd that did not stop the work.
pub fn warn(message: &str) {
    write(Lvl::Warn, message);
}

/// Logs at error level: something failed.
pub fn error(message: &str) {
    write(Lvl::Error, message);
}

#[derive(Debug, Clone, Copy)]
enum Lvl {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

#[cfg(target_arch = "wasm32")]
fn write(level: Lvl, message: &str) {
    let level = match level {
        Lvl::Trace => Level::Trace,
        Lvl::Debug => Level::Debug,
        Lvl::Info => Level::Info,
        Lvl::Warn => Level::Warn,
        Lvl::Error => Level::Error,
    };
    log(level, message);
}

#[cfg(not(target_arch = "wasm32"))]
fn write(level: Lvl, message: &str) {
    eprintln!("[{level:?}] {message}");
}

//! Where a handler's effects go: to the host's imports on WebAssembly, and
//! natively to the call in progress in [`testing::TestHost`], so handlers
//! can be unit-tested with `cargo test`. `Context` calls only these.
//!
//! [`testing::TestHost`]: crate::testing::TestHost

#[cfg(target_arch = "wasm32")]
pub(crate) use crate::__private::bindings::handler::sluice::plugin::effects::{
    post, progress, state_add, state_delete, state_get, state_set,
};

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use crate::testing::backend::{
    post, progress, state_add, state_delete, state_get, state_set,
};

//! Test plugin (not an example): version 1 of the "test-version" handler,
//! for hot-reload tests. The source is shared with test-version-2; see
//! `plugins/test-version/handler.rs`.

const VERSION: &str = "1.0.0";

include!("../../test-version/handler.rs");

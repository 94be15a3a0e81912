//! Test plugin (not an example): version 2 of the "test-version" handler,
//! for hot-reload tests. The source is shared with test-version-1; see
//! `plugins/test-version/handler.rs`.

const VERSION: &str = "2.0.0";

include!("../../test-version/handler.rs");

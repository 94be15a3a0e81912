//! The dashboard: a web UI for operators, served by the daemon at `/`
//! whenever `--http` is on.
//!
//! Why plain files and no framework: the UI is a handful of pages over the
//! JSON API, and a build step (npm, a bundler) would be one more toolchain
//! for every contributor and for CI. `assets/` holds one HTML shell, one
//! script and one stylesheet; they are compiled into the binary
//! (`include_str!`), so the dashboard needs no CDN, no network and no files
//! next to the binary. Plots are SVG the script draws itself.
//!
//! **Auth.** The shell, the script and the stylesheet are public: they hold
//! no data (a browser cannot attach a bearer token to a page it navigates
//! to). Everything the page shows comes from the JSON endpoints under the
//! API's rules: with a token configured the page asks for it once (or takes
//! it from `/#token=...`), keeps it in the tab's `sessionStorage`, and sends
//! `Authorization: Bearer` on every request. Actions (replay, cancel, pause)
//! call the same `/v1` endpoints as any client. A strict
//! `Content-Security-Policy` allows only the daemon's own script and
//! styles, and the script writes every value as text, never as HTML: job
//! errors, results and channel names are plugin- and client-controlled.
//!
//! **Cost.** The endpoints the pages poll (`overview`, `channels`, `job`)
//! read through the store's reader thread with bounded, indexed queries
//! (`store::listing`; the overview's counts within a fixed budget of index
//! entries), so a page costs about the same with a million jobs as with a
//! thousand and never holds up a commit. `sluice bench --dashboard-jobs N`
//! prices every request a page makes.
//!
//! Files: `overview` (`GET /v1/dashboard/overview`, `GET
//! /v1/dashboard/channels`), `job` (`GET /v1/dashboard/jobs/{id}`),
//! `assets/` (the page).

mod job;
mod overview;

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::ApiState;
use crate::transport::Transport;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// Only the daemon's own script, styles and requests; no frames, no
/// plugins, no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The data endpoints: behind the API's auth like every `/v1` route.
pub fn data_routes<T: Transport>() -> Router<Arc<ApiState<T>>> {
    Router::new()
        .route("/v1/dashboard/overview", get(overview::overview::<T>))
        .route("/v1/dashboard/channels", get(overview::channels::<T>))
        .route("/v1/dashboard/jobs/{id}", get(job::job::<T>))
}

/// The page itself: public, it holds no data.
pub fn page_routes<T: Transport>() -> Router<Arc<ApiState<T>>> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/ui/icon.svg",
            get(|| async { asset("image/svg+xml", ICON_SVG) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    // A new binary may bring new assets: the browser asks again each time.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    response
}

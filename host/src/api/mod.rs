//! The HTTP API: asynchronous request-reply over the daemon's own store.
//!
//! A web application hands long work to Sluice with `POST
//! /v1/channels/{channel}/messages`, gets `202 Accepted` and a `Location`
//! at once, polls `GET /v1/jobs/{id}` (state, progress, an estimate), and
//! is sent on (`303 See Other`) to `/v1/jobs/{id}/result` when the job
//! succeeded. Around that: job control (list, cancel), dead letters,
//! plugins, channel pause/resume, health probes and Prometheus metrics.
//!
//! Why inside the daemon: the API must see what the pumps see (the plugin
//! registry, running calls, paused channels) and publish through the same
//! transport. It never bypasses `store`: every read and write is a store
//! operation on the writer thread, and posts go through `Transport::publish`
//! exactly like `sluice post`.
//!
//! Files: `auth` (bearer token), `guard` (cross-site and DNS-rebinding
//! protection without a token), `error` (JSON errors), `messages` (post),
//! `jobs` (status, result, list, cancel), `admin` (dead letters, plugins,
//! channels), `health` (probes, metrics), `cluster` (job status shared
//! over JetStream), `client` (the CLI's minimal caller), `dashboard` (the
//! web UI at `/` and the two endpoints only it needs), `serving` (the
//! listener, bound at once, answering "starting" until the routes are in).

mod admin;
mod auth;
pub mod client;
mod dashboard;
mod error;
#[cfg(test)]
mod fuzz;
mod guard;
mod health;
mod jobs;
mod messages;
mod serving;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::{ApiError, ServeError};
pub use jobs::{JobView, is_final};
pub use serving::{Serving, listen};

use crate::config::HttpSettings;
use crate::pump::Deps;
use crate::transport::{JetStream, Transport};

/// What the handlers share.
pub struct ApiState<T> {
    /// The daemon's store, transport, registry, config and control.
    pub deps: Arc<Deps<T>>,
    /// The JetStream connection when the daemon runs on it (replay
    /// re-publishes; readiness checks the connection).
    pub jetstream: Option<JetStream>,
    /// Job statuses and cancels shared by every host (JetStream only).
    pub cluster: Option<crate::cluster::Cluster>,
}

/// Binds the address and starts serving over `deps` at once (the
/// daemon, whose start may wait on JetStream, uses [`listen`] and
/// [`Serving::ready`] instead). The server stops accepting on `shutdown`.
pub async fn start<T: Transport>(
    settings: &HttpSettings,
    deps: Arc<Deps<T>>,
    jetstream: Option<JetStream>,
    cluster: Option<crate::cluster::Cluster>,
    shutdown: CancellationToken,
) -> Result<Serving, ServeError> {
    let serving = listen(settings, shutdown).await?;
    let state = Arc::new(ApiState {
        deps,
        jetstream,
        cluster,
    });
    serving.ready(state, settings);
    Ok(serving)
}

/// Binds the API's address; done before the pumps start so a taken port
/// fails the daemon's start instead of leaving it running without its API.
pub async fn bind(settings: &HttpSettings) -> Result<TcpListener, ServeError> {
    TcpListener::bind(settings.addr)
        .await
        .map_err(|e| ServeError::Bind {
            addr: settings.addr,
            reason: e.to_string(),
        })
}

/// The routes. Everything but the health probes and the dashboard's page
/// (which holds no data) needs the bearer token when one is configured;
/// without one, every request must come from this daemon's own site
/// (`guard.rs`). `bound` is the address listened on.
pub fn router<T: Transport>(
    state: Arc<ApiState<T>>,
    settings: &HttpSettings,
    bound: SocketAddr,
) -> Router {
    let protected = Router::new()
        .route("/v1/channels/{channel}/messages", post(messages::post::<T>))
        .route("/v1/channels", get(admin::channels::<T>))
        .route("/v1/channels/{channel}/pause", post(admin::pause::<T>))
        .route("/v1/channels/{channel}/resume", post(admin::resume::<T>))
        .route("/v1/jobs", get(jobs::list::<T>))
        .route(
            "/v1/jobs/{id}",
            get(jobs::status::<T>).delete(jobs::cancel::<T>),
        )
        .route("/v1/jobs/{id}/result", get(jobs::result::<T>))
        .route("/v1/dead-letters", get(admin::dead_letters::<T>))
        .route("/v1/dead-letters/replay", post(admin::replay_all::<T>))
        .route("/v1/dead-letters/{id}/replay", post(admin::replay::<T>))
        .route("/v1/plugins", get(admin::plugins::<T>))
        .route("/v1/cron", get(admin::cron::<T>))
        .route("/v1/outbox", get(admin::outbox::<T>))
        .route("/v1/outbox/{id}/repost", post(admin::repost::<T>))
        .route("/metrics", get(health::metrics::<T>))
        .merge(dashboard::data_routes::<T>())
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::new(settings.token.clone()),
            auth::require_token,
        ));
    let router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz::<T>))
        .merge(dashboard::page_routes::<T>())
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(settings.body_limit));
    // Without a token, refuse what a foreign web page could send (guard.rs).
    let router = match settings.token {
        Some(_) => router,
        None => router.layer(axum::middleware::from_fn_with_state(
            Arc::new(guard::Hosts::new(bound, &settings.allowed_hosts)),
            guard::same_site,
        )),
    };
    router.with_state(state)
}

/// Serves until `shutdown`, then stops accepting and lets the requests in
/// progress finish.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a: SocketAddr| a.to_string());
    tracing::info!(%addr, "HTTP API listening");
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "HTTP API stopped");
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
}

/// 422 unless `channel` is a valid channel name (`crate::names`).
pub(crate) fn check_channel(channel: &str) -> Result<(), ApiError> {
    crate::names::check_channel(channel).map_err(|e| ApiError::unprocessable(e.to_string()))
}

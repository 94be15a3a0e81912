//! The listener, up from the daemon's first moments, and the routes behind
//! it, installed once the daemon can serve them.
//!
//! Why two steps: on JetStream the daemon may wait a long time before it
//! can serve (nats-server not up yet, a cluster electing leaders, a stream
//! unavailable for a while: it retries, see `daemon::connect`). An
//! orchestrator must see meanwhile that the process is alive (`/healthz`
//! 200, so it is not restarted in a loop) but not ready (`/readyz` 503
//! saying what it waits for), and a client gets a clear 503 instead of a
//! refused connection. So the address is bound at once and served by a
//! router that answers "starting" until the daemon's own router is swapped
//! in (one `ArcSwap` load per request).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::RETRY_AFTER;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::{ApiError, ApiState, ServeError, bind, router, serve};
use crate::config::HttpSettings;
use crate::transport::Transport;

/// The HTTP API's listener and server, from bind to stop.
pub struct Serving {
    /// The address bound (a configured port 0 is a real one here).
    pub addr: SocketAddr,
    late: Late,
    server: tokio::task::JoinHandle<()>,
}

/// The routes once installed, and what the daemon waits for until then.
#[derive(Clone)]
struct Late {
    routes: Arc<ArcSwapOption<Router>>,
    waiting_for: Arc<Mutex<String>>,
}

/// Binds the API's address and serves "starting" answers on it until
/// [`Serving::ready`]; stops accepting on `shutdown`.
pub async fn listen(
    settings: &HttpSettings,
    shutdown: CancellationToken,
) -> Result<Serving, ServeError> {
    let listener = bind(settings).await?;
    let addr = listener.local_addr().unwrap_or(settings.addr);
    let late = Late {
        routes: Arc::new(ArcSwapOption::empty()),
        waiting_for: Arc::new(Mutex::new("starting".to_owned())),
    };
    let front = Router::new().fallback(route).with_state(late.clone());
    let server = tokio::spawn(serve(listener, front, shutdown));
    Ok(Serving { addr, late, server })
}

impl Serving {
    /// Says what the daemon waits for (shown by `/readyz` and in every 503
    /// until [`Serving::ready`]).
    pub fn waiting_for(&self, what: &str) {
        if let Ok(mut w) = self.late.waiting_for.lock() {
            what.clone_into(&mut w);
        }
    }

    /// Installs the API's routes over `state`: from now on every request is
    /// served by them.
    pub fn ready<T: Transport>(&self, state: Arc<ApiState<T>>, settings: &HttpSettings) {
        self.late
            .routes
            .store(Some(Arc::new(router(state, settings, self.addr))));
    }

    /// After the pumps drained: waits for the server's last requests
    /// (bounded).
    pub async fn finish(self) {
        let limit = std::time::Duration::from_secs(10);
        if tokio::time::timeout(limit, self.server).await.is_err() {
            tracing::warn!("HTTP API requests still open after 10s; closing");
        }
    }
}

/// Every request: to the installed routes, or a "starting" answer.
async fn route(State(late): State<Late>, request: Request) -> Response {
    if let Some(routes) = late.routes.load_full() {
        return match Router::clone(&routes).oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
    }
    let waiting_for = late
        .waiting_for
        .lock()
        .map_or_else(|_| "starting".to_owned(), |w| w.clone());
    match request.uri().path() {
        "/healthz" => axum::Json(json!({ "status": "ok" })).into_response(),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(RETRY_AFTER, "1")],
            axum::Json(json!({
                "status": "not ready",
                "store": "ok",
                "nats": "setting up",
                "problems": [format!("starting: {waiting_for}")],
            })),
        )
            .into_response(),
        _ => {
            let mut response = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the daemon is starting ({waiting_for}); try again shortly"),
            )
            .into_response();
            response
                .headers_mut()
                .insert(RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
            response
        }
    }
}

//! Errors as the API answers them: a status code and `{"error": "..."}`.
//!
//! Why one type: every handler returns `Result<_, ApiError>`, so no path can
//! leak a stack trace or a plain-text body, and the status for each kind of
//! mistake is decided in one place. Store and transport failures are logged
//! in full here and answered with a short 500/503 message.

use axum::Json;
use axum::extract::Request;
use axum::http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;
use crate::transport::{JetStreamError, TransportError, WireError};

/// An error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The status code.
    pub status: StatusCode,
    /// One line for the client.
    pub message: String,
}

impl ApiError {
    /// Any status with a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400: a malformed parameter or header.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 409: the resource is in the wrong state for this.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    /// 422: well-formed, but not something this host can accept.
    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "api: store failed");
        match e {
            StoreError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store is shutting down",
            ),
            _ => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store failed; see the daemon log",
            ),
        }
    }
}

impl From<TransportError> for ApiError {
    fn from(e: TransportError) -> ApiError {
        // A message the transport refuses as it is: the client's to fix.
        if let TransportError::JetStream(JetStreamError::Rejected { reason, .. }) = &e {
            let status = match reason {
                WireError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            return ApiError::new(status, reason.to_string());
        }
        tracing::error!(error = %e, "api: transport failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the transport failed; see the daemon log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr} for the HTTP API: {reason}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
    /// The job status bucket on JetStream is unusable.
    #[error("{0}")]
    Cluster(String),
}

/// How much of a refused request's body is read (and dropped) so the
/// refusal reaches the client.
const DRAIN_LIMIT: usize = 64 * 1024;

/// How long a refused request's body may take to arrive.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Answers `response` to a request refused before its body was read (no
/// token, a cross-site request). The body is read first, up to
/// [`DRAIN_LIMIT`]: a server that closes a connection with unread bytes in
/// it makes the kernel reset the connection, and the client then loses the
/// answer and sees only "connection reset" instead of why it was refused.
/// A bigger or slower body is not read; the answer says
/// `Connection: close`.
pub async fn refuse(request: Request, mut response: Response) -> Response {
    if has_body(request.headers()) {
        let drain = axum::body::to_bytes(request.into_body(), DRAIN_LIMIT);
        let drained = tokio::time::timeout(DRAIN_TIME, drain).await;
        if !matches!(drained, Ok(Ok(_))) {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

/// Whether a request's headers announce a body.
pub fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|n| n.trim() != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_errors_hide_details() {
        let e = ApiError::from(TransportError::Store(StoreError::Sql(
            "secret detail".into(),
        )));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!e.message.contains("secret"), "{}", e.message);
    }

    #[test]
    fn store_errors_hide_details() {
        let e = ApiError::from(StoreError::Sql("near \"x\": syntax error".into()));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message.contains("syntax"));
        assert_eq!(
            ApiError::from(StoreError::Closed).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}

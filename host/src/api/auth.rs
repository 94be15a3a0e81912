//! Bearer-token authentication.
//!
//! Why a shared token and not accounts: the API is an operator's and a
//! trusted backend's door to one daemon. A token is required when the
//! daemon listens off loopback (config refuses to start otherwise); on
//! loopback it is optional, as for a local development daemon. The health
//! probes stay open so a load balancer needs no secret.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use super::error::refuse;

/// Refuses a request without `Authorization: Bearer <token>` (when a token
/// is configured).
pub async fn require_token(
    State(token): State<Arc<Option<String>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token.as_deref() else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if same(given.as_bytes(), token.as_bytes()) => next.run(request).await,
        Some(_) => refuse(request, unauthorized("the bearer token is not valid")).await,
        None => {
            refuse(
                request,
                unauthorized("missing Authorization: Bearer <token>"),
            )
            .await
        }
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    response
}

/// Compares the SHA-256 digests of both, without an early exit: the time
/// taken says nothing about how much of a guess was right, nor (digests
/// being all 32 bytes) about the token's length.
fn same(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn compares_whole_tokens() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
        assert!(same(b"", b""));
    }
}

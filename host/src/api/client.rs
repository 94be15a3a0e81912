//! A minimal HTTP/1.1 caller for the CLI (`sluice pause`, `sluice
//! resume`): one request to a running daemon's API, `Connection: close`,
//! the status and the body back.
//!
//! Why not a client crate: the CLI makes one bodiless request to an address
//! it is given, and the daemon's own server answers with a
//! `Content-Length` body; a few lines over a `TcpStream` cost less build
//! time than a client stack with TLS.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a call may take, connect to last byte.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing listens there (no daemon, or one without `--http`).
    #[error(
        "no sluice daemon answers at {addr} ({reason}); is `sluice run --http {addr}` running?"
    )]
    Unreachable {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// It answered with something that is not HTTP.
    #[error("{addr} did not answer with HTTP: {reason}")]
    Protocol {
        /// The address.
        addr: SocketAddr,
        /// What was wrong.
        reason: String,
    },
}

/// Sends `method path` (no body) and returns the status code and body.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), CallError> {
    match tokio::time::timeout(TIMEOUT, exchange(addr, method, path, token)).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Unreachable {
            addr,
            reason: format!("no answer within {}s", TIMEOUT.as_secs()),
        }),
    }
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), CallError> {
    let unreachable = |e: std::io::Error| CallError::Unreachable {
        addr,
        reason: e.to_string(),
    };
    let mut stream = TcpStream::connect(addr).await.map_err(unreachable)?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\n\
         Accept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(unreachable)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(unreachable)?;
    parse(&raw).map_err(|reason| CallError::Protocol { addr, reason })
}

/// Status and body of a `Content-Length` (or close-delimited) response.
fn parse(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "the response has no header end".to_owned())?;
    let status = head
        .lines()
        .next()
        .and_then(|l| {
            l.strip_prefix("HTTP/1.1 ")
                .or_else(|| l.strip_prefix("HTTP/1.0 "))
        })
        .and_then(|l| l.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {:?}", head.lines().next()))?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_status_and_body() {
        let raw = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse(raw), Ok((401, "{}".to_owned())));
        assert!(parse(b"SSH-2.0").is_err());
    }
}

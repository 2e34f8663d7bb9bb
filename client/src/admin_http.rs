//! A small HTTP/1.1 client for a node's admin endpoint (ADMIN.md): one GET per connection,
//! `Connection: close`, the whole answer read into memory up to a bound. The endpoint answers
//! JSON; an error answer's message is turned into `ClientError::Admin`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::ClientError;

/// How long one admin request may take, connect to last byte.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest admin answer read; the actor list of a node with 10,000 partitions is ~5 MiB.
pub const ADMIN_ANSWER_BYTES_MAX: usize = 64 * 1024 * 1024;

/// `GET path` on the admin endpoint at `addr`; returns the JSON body of a 2xx answer.
pub async fn admin_get(
    addr: &str,
    path: &str,
    token: Option<&str>,
) -> Result<serde_json::Value, ClientError> {
    tokio::time::timeout(ADMIN_TIMEOUT, get(addr, path, token))
        .await
        .map_err(|_| ClientError::Timeout(ADMIN_TIMEOUT.as_millis() as u64))?
}

async fn get(
    addr: &str,
    path: &str,
    token: Option<&str>,
) -> Result<serde_json::Value, ClientError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| ClientError::Connect {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    let lost = |e: std::io::Error| ClientError::ConnectionLost(e.to_string());
    stream.write_all(request.as_bytes()).await.map_err(lost)?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(ADMIN_ANSWER_BYTES_MAX as u64 + 1)
        .read_to_end(&mut answer)
        .await
        .map_err(lost)?;
    if answer.len() > ADMIN_ANSWER_BYTES_MAX {
        return Err(ClientError::Protocol(format!(
            "admin answer larger than {ADMIN_ANSWER_BYTES_MAX} bytes"
        )));
    }
    let (status, body) = parse(&answer)?;
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ClientError::Protocol(format!("admin answer is not JSON: {e}")))?;
    if (200..300).contains(&status) {
        Ok(json)
    } else {
        let message = json["error"]["message"]
            .as_str()
            .unwrap_or("no message")
            .to_owned();
        Err(ClientError::Admin { status, message })
    }
}

/// Splits an HTTP/1.1 answer into its status and its body (undoing chunked encoding).
fn parse(answer: &[u8]) -> Result<(u16, Vec<u8>), ClientError> {
    let bad = |what: &str| ClientError::Protocol(format!("bad HTTP answer: {what}"));
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of head"))?;
    let head = std::str::from_utf8(&answer[..split]).map_err(|_| bad("head not UTF-8"))?;
    let body = &answer[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("truncated chunk size"))?;
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or_else(|| bad("bad chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        let chunk = rest.get(..size).ok_or_else(|| bad("truncated chunk"))?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or_else(|| bad("truncated chunk"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn plain_and_chunked_answers_parse() {
        let plain = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse(plain).unwrap(), (404, b"{}".to_vec()));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse(chunked).unwrap(), (200, b"{\"a\":1}".to_vec()));
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}

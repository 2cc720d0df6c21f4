//! Incus' REST API through this machine's unix socket: one request, no `incus` process.
//! An `incus query` costs a Go program's start (15–40 ms of CPU here) on top of the
//! request; on the critical path of a job started from the warm pool (its claim checks
//! and the one `PATCH` of its devices), that is most of what pikaci adds to the floor.
//!
//! HTTP/1.1 with `Connection: close`: the request, then the whole response read to its
//! end (`Content-Length` or chunked). The socket is `INCUS_SOCKET`, else
//! `$INCUS_DIR/unix.socket`, else `/var/lib/incus/unix.socket`, as the `incus` client
//! finds it; a caller that cannot reach it (not there, no permission) uses `incus query`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::log::HostLog;

/// This machine's Incus socket.
#[derive(Clone, Debug)]
pub struct Socket {
    path: PathBuf,
}

/// An answer of the API that is an error: Incus' message and code (404: not found).
#[derive(Debug)]
pub struct ApiError {
    pub code: u16,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Incus answered {}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl Socket {
    /// The socket the `incus` client would use, when it is there.
    pub fn local() -> Option<Socket> {
        let path = std::env::var_os("INCUS_SOCKET").map(PathBuf::from).unwrap_or_else(|| {
            let dir = std::env::var_os("INCUS_DIR").map(PathBuf::from).unwrap_or_else(|| "/var/lib/incus".into());
            dir.join("unix.socket")
        });
        path.exists().then_some(Socket { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `METHOD PATH` with an optional JSON body: the response's `metadata`. An error
    /// response is an [`ApiError`]; a socket that cannot be reached, any other error.
    /// Logged to `log` like a command, with its duration.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        timeout: Duration,
        log: Option<&HostLog>,
    ) -> Result<serde_json::Value> {
        let started = Instant::now();
        let result = self.exchange(method, path, body, timeout);
        if let Some(log) = log {
            let data = body.map(|b| format!(" --data '{b}'")).unwrap_or_default();
            let outcome = match &result {
                Ok(_) => "200".to_string(),
                Err(e) => format!("failed: {e:#}"),
            };
            log.line(&format!(
                "$ {method} {path}{data} over {}  ({outcome}, {:.3}s)",
                self.path.display(),
                started.elapsed().as_secs_f64()
            ));
        }
        result
    }

    fn exchange(&self, method: &str, path: &str, body: Option<&str>, timeout: Duration) -> Result<serde_json::Value> {
        let mut stream = UnixStream::connect(&self.path)
            .with_context(|| format!("connect to the Incus socket `{}`", self.path.display()))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: incus\r\nUser-Agent: pikaci\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).context("send the request to the Incus socket")?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).context("read Incus' answer")?;
        let answer = parse_response(&raw)?;
        envelope(&answer)
    }
}

/// The body of an HTTP/1.1 response read to its end.
fn parse_response(raw: &[u8]) -> Result<Vec<u8>> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("Incus' answer has no end of headers ({} bytes)", raw.len())
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let rest = &raw[end + 4..];
    if !head.starts_with("http/1.") {
        bail!("Incus' answer is not HTTP: {}", head.lines().next().unwrap_or_default());
    }
    let chunked = head.lines().any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    if chunked { dechunk(rest) } else { Ok(rest.to_vec()) }
}

/// A chunked body, joined.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").context("a chunk without its size line")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("a chunk size that is not hex: `{size_text}`"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        anyhow::ensure!(rest.len() >= size + 2, "a chunk cut short");
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Incus' response envelope: `metadata` of a sync answer, an [`ApiError`] of an error.
fn envelope(body: &[u8]) -> Result<serde_json::Value> {
    let mut value: serde_json::Value = serde_json::from_slice(body).context("Incus' answer is not JSON")?;
    if value["type"] == "error" {
        let code = value["error_code"].as_u64().unwrap_or(0) as u16;
        let message = value["error"].as_str().unwrap_or("unknown error").to_string();
        return Err(ApiError { code, message }.into());
    }
    Ok(value["metadata"].take())
}

/// True when the API said the object does not exist.
pub fn is_not_found(err: &anyhow::Error) -> bool {
    err.chain().filter_map(|e| e.downcast_ref::<ApiError>()).any(|e| e.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_answers_chunked_or_not_and_errors() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 58\r\n\r\n{\"type\":\"sync\",\"status_code\":200,\"metadata\":{\"a\":1}}";
        assert_eq!(envelope(&parse_response(plain).unwrap()).unwrap(), serde_json::json!({"a": 1}));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"type\":\"sync\",\"\r\n19\r\nmetadata\":{\"target\":\"f\"}}\r\n0\r\n\r\n";
        assert_eq!(envelope(&parse_response(chunked).unwrap()).unwrap(), serde_json::json!({"target": "f"}));
        let missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 60\r\n\r\n{\"type\":\"error\",\"error\":\"Instance not found\",\"error_code\":404}";
        let err = envelope(&parse_response(missing).unwrap()).unwrap_err();
        assert!(is_not_found(&err), "{err:#}");
        assert!(format!("{err:#}").contains("Instance not found"));
        assert!(parse_response(b"garbage").is_err());
    }
}

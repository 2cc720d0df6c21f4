//! `pikaci serve`: a read-only web page of the runs in a state root. Pages are rendered on
//! the server (maud escapes every value), the JSON under `/api/` is what `pikaci list
//! --json` and `pikaci status --json` print (the same functions make it), and nothing
//! here writes to the state root. See `docs/web.md`.
//!
//! One thread per request, at most `MAX_REQUESTS` at a time (live log streams included);
//! past that a request gets 503 instead of queueing without bound.

mod ansi;
mod pages;
mod paths;
mod routes;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use tiny_http::{Header, Method, Response, Server};

use crate::error;
use crate::state::StateRoot;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const MAX_REQUESTS: usize = 64;

/// Serve until Ctrl-C or SIGTERM. Prints the address it bound (a port of 0 picks a
/// free one), and warns when that address is reachable from other machines.
pub fn serve(state: StateRoot, listen: &str) -> Result<()> {
    let addr: SocketAddr = listen.parse().map_err(|_| {
        error::usage(format!("`--listen {listen}` is not an address and port"))
            .hint(format!("write it as ADDR:PORT, e.g. `{DEFAULT_LISTEN}` or `[::1]:8080`"))
    })?;
    let server = Server::http(addr).map_err(|e| {
        error::infra(format!("cannot listen on `{addr}`: {e}"))
            .hint("pick another port with `--listen ADDR:PORT`, or stop what uses this one")
    })?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    if !bound.ip().is_loopback() {
        eprintln!(
            "warning: `pikaci serve` listens on {bound}, reachable from other machines, without authentication; \
             put it behind a reverse proxy with authentication (see docs/web.md)"
        );
    }
    println!("pikaci serve: http://{bound}/ (state root `{}`)", state.root.display());
    use std::io::Write;
    std::io::stdout().flush().ok();

    let state = Arc::new(state);
    let active = Arc::new(AtomicUsize::new(0));
    // Ctrl-C and SIGTERM (systemd's stop) end the server; streams in flight are dropped.
    while !crate::signals::interrupted() {
        let request = match server.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("warning: accepting a request failed: {e}");
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_REQUESTS {
            active.fetch_sub(1, Ordering::SeqCst);
            let busy = Response::from_string("busy: too many requests at once; try again\n")
                .with_status_code(503)
                .with_header(header("Retry-After", "2"));
            let _ = request.respond(busy);
            continue;
        }
        let (state, active) = (Arc::clone(&state), Arc::clone(&active));
        let spawned = std::thread::Builder::new().name("pikaci-serve".into()).spawn(move || {
            let _slot = Slot(active);
            handle(&state, request);
        });
        if let Err(e) = spawned {
            eprintln!("warning: cannot start a thread for a request: {e}");
        }
    }
    eprintln!("pikaci serve: stopped");
    Ok(())
}

/// Gives back a request slot when its thread ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn handle(state: &StateRoot, request: tiny_http::Request) {
    if !matches!(request.method(), Method::Get | Method::Head) {
        let reply = Response::from_string("read-only: only GET and HEAD are served\n")
            .with_status_code(405)
            .with_header(header("Allow", "GET, HEAD"));
        let _ = request.respond(reply);
        return;
    }
    let wants_json =
        request.headers().iter().any(|h| h.field.equiv("Accept") && h.value.as_str().contains("application/json"));
    let url = request.url().to_string();
    let reply = routes::route(state, &url, wants_json);
    // One line per request, for the operator (the journal, under systemd).
    eprintln!("{} {} {}", request.method(), url.escape_debug(), reply.status());
    routes::send(state, request, reply);
}

pub(crate) fn header(name: &str, value: &str) -> Header {
    // Both are ASCII made here; a value from a record is sanitized before it gets here.
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("an ASCII header")
}

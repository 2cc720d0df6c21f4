//! Following a log live: server-sent events, each carrying the HTML of the complete lines
//! the log gained, until the job is no longer running; then one `end` event. Reads at most
//! `CHUNK` bytes at a time, so memory stays small whatever the log's size.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use super::ansi::Renderer;
use super::routes::job_is_running;
use crate::state::StateRoot;

const CHUNK: usize = 64 * 1024;
const POLL: Duration = Duration::from_millis(250);
const KEEPALIVE: Duration = Duration::from_secs(10);

/// Write the event stream to the connection; returns when the job ends or the client leaves.
pub fn follow(state: &StateRoot, mut out: Box<dyn Write + Send>, run_id: &str, job_id: &str, file: File, offset: u64) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
                X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n";
    if out.write_all(head.as_bytes()).and_then(|_| out.flush()).is_err() {
        return;
    }
    let _ = run(state, &mut out, run_id, job_id, file, offset);
}

fn run(
    state: &StateRoot,
    out: &mut dyn Write,
    run_id: &str,
    job_id: &str,
    mut file: File,
    offset: u64,
) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    let mut renderer = Renderer::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    let mut quiet_since = Instant::now();
    let mut position = offset;
    loop {
        // Liveness first: whatever was written before the job ended is read below.
        let running = job_is_running(state, run_id, job_id);
        let mut got_any = false;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got_any = true;
            position += n as u64;
            pending.extend_from_slice(&buf[..n]);
            // Whole lines only while the job runs, so a line is never split across events.
            let cut =
                if running { pending.iter().rposition(|b| *b == b'\n').map(|i| i + 1) } else { Some(pending.len()) };
            if let Some(cut) = cut {
                let html = renderer.push(&pending[..cut]);
                pending.drain(..cut);
                event(out, "line", &html, position)?;
            }
            if pending.len() > CHUNK {
                // A very long line: send it in pieces rather than holding it.
                let html = renderer.push(&pending);
                pending.clear();
                event(out, "line", &html, position)?;
            }
        }
        if !running {
            let mut html = renderer.push(&pending);
            html.push_str(&renderer.finish());
            if !html.is_empty() {
                event(out, "line", &html, position)?;
            }
            return event(out, "end", "", position);
        }
        if got_any {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= KEEPALIVE {
            // A comment: keeps proxies from closing the stream, and finds a client that left.
            out.write_all(b": keepalive\n\n")?;
            out.flush()?;
            quiet_since = Instant::now();
        }
        std::thread::sleep(POLL);
    }
}

/// One event; the data's lines each get their `data:` prefix, as the format requires.
fn event(out: &mut dyn Write, name: &str, data: &str, position: u64) -> std::io::Result<()> {
    if data.is_empty() && name == "line" {
        return Ok(());
    }
    let mut text = format!("event: {name}\nid: {position}\n");
    for line in data.split('\n') {
        text.push_str("data: ");
        text.push_str(line);
        text.push('\n');
    }
    text.push('\n');
    out.write_all(text.as_bytes())?;
    out.flush()
}

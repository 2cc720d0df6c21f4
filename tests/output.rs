//! Guest output of every shape, through the real runtimes: `guest.log` keeps every byte
//! (no newline at all, `\r` progress bars, bytes of every value), the terminal view shows
//! lines that are whole, short and free of control characters, and pikaci's memory stays
//! bounded whatever the guest prints. The lanes' scripts (`tests/fixtures/output/ci`) are
//! run on the host too, and their output compared with what pikaci recorded.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The longest piece of a line the view shows (`executor::lines::MAX_LINE`).
const MAX_LINE: usize = 16 * 1024;

fn output_fixture() -> tempfile::TempDir {
    require_nix();
    copy_fixture(&fixture_path("output"))
}

/// What the lane's script prints when run on the host.
fn expected_output(flake: &Path, lane: &str) -> Vec<u8> {
    let out = Command::new("/bin/sh").arg(flake.join("ci").join(format!("{lane}.sh"))).output().unwrap();
    assert!(out.status.success(), "{lane}.sh failed on the host: {out:?}");
    out.stdout
}

/// A finished `pikaci run`: its terminal view (human output, to a file) and the largest
/// resident set pikaci had (`VmHWM`, read from /proc while it ran).
struct Finished {
    view: Vec<u8>,
    peak_rss_kib: u64,
}

/// Run `lane`; its view goes to a file read back afterwards, or (`keep_view` false) to
/// /dev/null, made all the same.
fn run_lane(flake: &Path, lane: &str, runtime: &str, keep_view: bool) -> Finished {
    let view_path = if keep_view { flake.join(format!("view-{lane}.txt")) } else { "/dev/null".into() };
    let started = Instant::now();
    let mut child = pikaci()
        .args(["run", lane, "--runtime", runtime, "--flake"])
        .arg(format!("path:{}", flake.display()))
        .stdout(Stdio::from(std::fs::File::create(&view_path).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_rss_kib = 0;
    let status = loop {
        // The high-water mark only grows: the last reading before the exit is the peak.
        if let Some(kib) = std::fs::read_to_string(&status_file).ok().as_deref().and_then(vm_hwm_kib) {
            peak_rss_kib = kib;
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "{lane} on {runtime}: pikaci run took {:.2}s, peak RSS {} KiB",
        started.elapsed().as_secs_f64(),
        peak_rss_kib
    );
    assert!(status.success(), "{lane} on {runtime}: {status:?}");
    assert!(peak_rss_kib > 0, "never read pikaci's VmHWM from {status_file}");
    let view = if keep_view { std::fs::read(&view_path).unwrap() } else { Vec::new() };
    Finished { view, peak_rss_kib }
}

fn vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn assert_log_byte_exact(flake: &Path, lane: &str) {
    let expected = expected_output(flake, lane);
    let log = std::fs::read(only_run_of(flake, lane).join("guest.log")).unwrap();
    assert_eq!(log.len(), expected.len(), "guest.log of {lane} has another length");
    assert!(log == expected, "guest.log of {lane} differs from the output");
}

/// The job directory of the only run of `lane`.
fn only_run_of(flake: &Path, lane: &str) -> std::path::PathBuf {
    let jobs: Vec<_> = std::fs::read_dir(flake.join(".pikaci/runs"))
        .unwrap()
        .map(|e| e.unwrap().path().join("jobs").join(lane))
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(jobs.len(), 1, "expected one run of {lane}: {jobs:?}");
    jobs.into_iter().next().unwrap()
}

/// The view's lines of `lane` (without the `[lane] ` prefix).
fn view_lines<'a>(view: &'a [u8], lane: &str) -> Vec<&'a [u8]> {
    let prefix = format!("[{lane}] ");
    view.split(|b| *b == b'\n').filter_map(|l| l.strip_prefix(prefix.as_bytes())).collect()
}

/// No byte the terminal would obey: C0 controls but the tab, DEL, C1 controls in UTF-8.
fn assert_no_control_characters(view: &[u8]) {
    for (i, w) in view.windows(2).enumerate() {
        let raw = (w[0] < 0x20 && w[0] != b'\t' && w[0] != b'\n') || w[0] == 0x7F;
        let c1 = w[0] == 0xC2 && (0x80..=0x9F).contains(&w[1]);
        assert!(!raw && !c1, "the view has a control character at byte {i}: {:?}", &view[i..(i + 16).min(view.len())]);
    }
}

fn every_shape(runtime: &str) {
    let dir = output_fixture();
    let flake = dir.path();

    // A progress bar: every byte in guest.log, its last state in the view.
    let progress = run_lane(flake, "progress", runtime, true);
    assert_log_byte_exact(flake, "progress");
    assert_eq!(view_lines(&progress.view, "progress"), [&b"compiled"[..]]);

    // No newline: every byte in guest.log; the view shows it in pieces of MAX_LINE.
    let long = run_lane(flake, "no-newline", runtime, true);
    assert_log_byte_exact(flake, "no-newline");
    let lines = view_lines(&long.view, "no-newline");
    assert!(lines.iter().all(|l| l.len() <= MAX_LINE), "a piece of the view is longer than {MAX_LINE}");
    assert_eq!(lines.iter().map(|l| l.iter().filter(|b| **b == b'x').count()).sum::<usize>(), 30_000_000);
    assert_eq!(lines.last(), Some(&&b"last line"[..]));

    // Bytes of every value: every byte in guest.log; the view has no control character.
    let binary = run_lane(flake, "binary", runtime, true);
    assert_log_byte_exact(flake, "binary");
    assert!(view_lines(&binary.view, "binary").len() > 100_000, "the view lost lines of `binary`");
    assert_no_control_characters(&binary.view);
}

#[test]
fn bwrap_keeps_every_output_shape_byte_exact_and_shows_it_safely() {
    require_bwrap();
    every_shape("bwrap");
}

#[test]
fn incus_keeps_every_output_shape_byte_exact_and_shows_it_safely() {
    require_incus();
    every_shape("incus");
}

/// pikaci's own memory while 240 MB of every shape go through it: the read buffer, a
/// line's start and a batch of lines, whatever the shape (a reader that kept a whole line,
/// or a whole read's lines, would hold 100 MB here).
#[test]
fn memory_stays_bounded_whatever_the_guest_prints() {
    require_bwrap();
    let dir = output_fixture();
    let flake = dir.path();
    let all = run_lane(flake, "all-shapes", "bwrap", false);
    assert_log_byte_exact(flake, "all-shapes");
    assert!(all.peak_rss_kib < 48 * 1024, "pikaci's peak RSS was {} KiB for 240 MB of output", all.peak_rss_kib);
}

//! Splitting the guest's output into lines for the live view, in time linear in the
//! output: each byte is looked at once (by `memchr`, many bytes at a time), whatever the
//! line lengths, and a line that lies whole in one read is not copied to be split.
//! `guest.log` gets the raw bytes; this is only what the user sees scroll by.
//!
//! - `\n` ends a line (`\r\n` too, without the `\r`).
//! - A `\r` followed by anything else starts the line over, as a terminal would draw it:
//!   a progress bar (`10%\r20%\r30%\n`) shows as its last state (`30%`), and never grows.
//! - A line longer than [`MAX_LINE`] is shown in pieces of that length.

/// The longest piece of a line handed to the view at once.
pub const MAX_LINE: usize = 16 * 1024;

/// A [`LineBatch`] is handed over once it holds this many bytes or lines (so that a read
/// of a million empty lines does not become a million-entry batch).
const BATCH_BYTES: usize = 256 * 1024;
const BATCH_LINES: usize = 8 * 1024;

#[derive(Debug, Default)]
pub struct LineSplitter {
    /// The start of a line whose end has not been read yet (at most [`MAX_LINE`]).
    pending: Vec<u8>,
    /// The last byte seen was a `\r` (it may be half of a `\r\n` split across reads).
    after_cr: bool,
}

impl LineSplitter {
    /// Feed the next bytes; `emit` gets each complete line (or piece of a long one).
    pub fn push(&mut self, chunk: &[u8], emit: &mut impl FnMut(&[u8])) {
        if chunk.is_empty() {
            return;
        }
        // The line being read is `pending` followed by `chunk[start..]`.
        let mut start = 0;
        if std::mem::take(&mut self.after_cr) {
            if chunk[0] == b'\n' {
                self.end_line(&chunk[..0], emit);
                start = 1;
            } else {
                // A redraw: what came before the `\r` is overwritten.
                self.pending.clear();
            }
        }
        let mut at = start;
        while let Some(i) = memchr::memchr2(b'\n', b'\r', &chunk[at..]).map(|i| at + i) {
            at = i + 1;
            if chunk[i] == b'\n' {
                self.end_line(&chunk[start..i], emit);
                start = at;
                continue;
            }
            match chunk.get(i + 1) {
                Some(b'\n') => {
                    self.end_line(&chunk[start..i], emit);
                    at = i + 2;
                    start = at;
                }
                Some(_) => {
                    // A redraw; the pieces of a long line already shown stay shown.
                    self.pieces(&chunk[start..i], emit);
                    self.pending.clear();
                    start = at;
                }
                None => {
                    // Whether this `\r` ends the line or redraws it, the next read says.
                    self.carry(&chunk[start..i], emit);
                    self.after_cr = true;
                    return;
                }
            }
        }
        self.carry(&chunk[start..], emit);
    }

    /// The output ended: hand over what is left of the last line.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8])) {
        if !self.pending.is_empty() {
            emit(&self.pending);
            self.pending.clear();
        }
        self.after_cr = false;
    }

    /// The line ends after `tail`: emit it (in pieces when long).
    fn end_line(&mut self, tail: &[u8], emit: &mut impl FnMut(&[u8])) {
        let rest = self.pieces(tail, emit);
        if self.pending.is_empty() {
            emit(rest);
        } else {
            self.pending.extend_from_slice(rest);
            emit(&self.pending);
            self.pending.clear();
        }
    }

    /// Emit full [`MAX_LINE`] pieces of `pending` + `tail` while the two are longer than
    /// that; `pending` then holds at most what is left of it, and the part of `tail` not
    /// yet emitted is returned.
    fn pieces<'a>(&mut self, mut tail: &'a [u8], emit: &mut impl FnMut(&[u8])) -> &'a [u8] {
        while self.pending.len() + tail.len() > MAX_LINE {
            if self.pending.is_empty() {
                emit(&tail[..MAX_LINE]);
            } else {
                let room = MAX_LINE - self.pending.len();
                self.pending.extend_from_slice(&tail[..room]);
                emit(&self.pending);
                self.pending.clear();
                tail = &tail[room..];
                continue;
            }
            tail = &tail[MAX_LINE..];
        }
        tail
    }

    /// The read ended inside a line: keep its start (at most [`MAX_LINE`] bytes of it).
    fn carry(&mut self, tail: &[u8], emit: &mut impl FnMut(&[u8])) {
        let rest = self.pieces(tail, emit);
        self.pending.extend_from_slice(rest);
    }
}

/// Lines for the view, back to back in one buffer: what one read of the guest's output
/// gave (or a part of it, see [`LineBatch::is_full`]). Reused from read to read.
#[derive(Debug, Default)]
pub struct LineBatch {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl LineBatch {
    pub fn push(&mut self, line: &[u8]) {
        self.bytes.extend_from_slice(line);
        self.ends.push(self.bytes.len());
    }

    /// Time to hand it over: holding more would only hold memory.
    pub fn is_full(&self) -> bool {
        self.bytes.len() >= BATCH_BYTES || self.ends.len() >= BATCH_LINES
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// The bytes of every line together, without terminators.
    pub fn bytes_len(&self) -> usize {
        self.bytes.len()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter().copied()).map(|(s, e)| &self.bytes[s..e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        let mut s = LineSplitter::default();
        let mut emit = |l: &[u8]| out.push(String::from_utf8_lossy(l).into_owned());
        for c in chunks {
            s.push(c, &mut emit);
        }
        s.finish(&mut emit);
        out
    }

    /// The same bytes split at every position give the same lines.
    fn split_everywhere(bytes: &[u8]) -> Vec<String> {
        let whole = split(&[bytes]);
        for i in 0..=bytes.len() {
            assert_eq!(
                split(&[&bytes[..i], &bytes[i..]]),
                whole,
                "split at {i} of {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(split(&singles), whole, "one byte at a time");
        whole
    }

    #[test]
    fn lines_across_reads_crlf_and_redraws() {
        assert_eq!(split(&[b"a\nb", b"c\n", b"tail"]), ["a", "bc", "tail"]);
        assert_eq!(split(&[b"x\r", b"\ny\r\n"]), ["x", "y"]);
        assert_eq!(split(&[b"10%\r20%", b"\r30%\ndone\n"]), ["30%", "done"]);
        assert_eq!(split(&[b"\n\n"]), ["", ""]);
        assert_eq!(split(&[b"ab\r"]), ["ab"]);
        assert_eq!(split(&[b"ab\r", b"c"]), ["c"]);
    }

    #[test]
    fn where_a_read_ends_changes_nothing() {
        assert_eq!(
            split_everywhere(b"one\ntwo\r\nthree\rTHREE\n\r\nfour\r\r\nfive"),
            ["one", "two", "THREE", "", "", "five"]
        );
        assert_eq!(split_everywhere(b"10%\r20%\r30%\r"), ["30%"]);
        assert_eq!(split_everywhere(b"\r\r\r\n\n"), ["", ""]);
    }

    #[test]
    fn a_long_line_comes_in_pieces() {
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let lines = split(&[&long[..100], &long[100..], b"\nend"]);
        assert_eq!(lines.iter().map(String::len).collect::<Vec<_>>(), [MAX_LINE, MAX_LINE, 5, 3]);
        // The same, whole in one read, and ending with a redraw: the pieces shown stay.
        let mut redrawn = long.clone();
        redrawn.extend_from_slice(b"\rnew\n");
        let lines = split(&[&redrawn]);
        assert_eq!(lines.iter().map(String::len).collect::<Vec<_>>(), [MAX_LINE, MAX_LINE, 3]);
        // Exactly MAX_LINE is one line.
        let exact = [vec![b'y'; MAX_LINE], b"\n".to_vec()].concat();
        assert_eq!(split(&[&exact[..7], &exact[7..]]).iter().map(String::len).collect::<Vec<_>>(), [MAX_LINE]);
    }

    /// The rules above, one byte at a time: what the splitter must agree with.
    fn by_the_byte(bytes: &[u8]) -> Vec<Vec<u8>> {
        let (mut out, mut line, mut after_cr) = (Vec::new(), Vec::new(), false);
        for &b in bytes {
            if std::mem::take(&mut after_cr) && b != b'\n' {
                line.clear();
            }
            match b {
                b'\n' => out.push(std::mem::take(&mut line)),
                b'\r' => after_cr = true,
                _ => {
                    if line.len() == MAX_LINE {
                        out.push(std::mem::take(&mut line));
                    }
                    line.push(b);
                }
            }
        }
        if !line.is_empty() {
            out.push(line);
        }
        out
    }

    #[test]
    fn random_output_in_random_reads_agrees_with_the_rules() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let mut bytes = Vec::new();
            while bytes.len() < 60_000 {
                match next(10) {
                    0 => bytes.push(b'\n'),
                    1 => bytes.push(b'\r'),
                    2 => bytes.extend(std::iter::repeat_n(b'L', next(3 * MAX_LINE as u64) as usize)),
                    _ => bytes.extend(std::iter::repeat_n(b'a' + next(26) as u8, next(40) as usize)),
                }
            }
            let mut out = Vec::new();
            let mut s = LineSplitter::default();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = (1 + next(20_000) as usize).min(rest.len());
                s.push(&rest[..n], &mut |l: &[u8]| out.push(l.to_vec()));
                rest = &rest[n..];
            }
            s.finish(&mut |l: &[u8]| out.push(l.to_vec()));
            assert!(out == by_the_byte(&bytes), "the splitter and the rules disagree");
        }
    }

    #[test]
    fn a_huge_line_is_linear() {
        // 20 MB without a newline, in 16 KiB reads (rescanning all that is pending on
        // every read took 10 s here).
        let chunk = vec![b'y'; 16 * 1024];
        let mut s = LineSplitter::default();
        let mut n = 0usize;
        let mut emit = |l: &[u8]| n += l.len();
        for _ in 0..(20 * 1024 * 1024 / chunk.len()) {
            s.push(&chunk, &mut emit);
        }
        s.finish(&mut emit);
        assert_eq!(n, 20 * 1024 * 1024);
    }

    #[test]
    fn a_batch_gives_back_its_lines_and_fills_up() {
        let mut batch = LineBatch::default();
        for l in [&b"a"[..], b"", b"bc"] {
            batch.push(l);
        }
        assert_eq!(batch.iter().collect::<Vec<_>>(), [&b"a"[..], b"", b"bc"]);
        assert_eq!((batch.len(), batch.bytes_len(), batch.is_full()), (3, 3, false));
        for _ in 0..BATCH_LINES {
            batch.push(b"");
        }
        assert!(batch.is_full());
        batch.clear();
        assert!(batch.is_empty() && batch.iter().next().is_none());
    }
}

//! Splitting the guest's output into lines for the live view, in time linear in the
//! output: each byte is looked at once, whatever the line lengths. `guest.log` gets the
//! raw bytes; this is only what the user sees scroll by.
//!
//! - `\n` ends a line (`\r\n` too, without the `\r`).
//! - A `\r` followed by anything else starts the line over, as a terminal would draw it:
//!   a progress bar (`10%\r20%\r30%\n`) shows as its last state (`30%`), and never grows.
//! - A line longer than [`MAX_LINE`] is shown in pieces of that length.

/// The longest piece of a line handed to the view at once.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
    /// The last byte seen was a `\r` (it may be half of a `\r\n` split across reads).
    after_cr: bool,
}

impl LineSplitter {
    /// Feed the next bytes; `emit` gets each complete line (or piece of a long one).
    pub fn push(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(&[u8])) {
        while !chunk.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if chunk[0] != b'\n' {
                    // A redraw: what came before the `\r` is overwritten.
                    self.pending.clear();
                }
            }
            let end = chunk.iter().position(|b| *b == b'\n' || *b == b'\r');
            let segment = &chunk[..end.unwrap_or(chunk.len())];
            self.append(segment, emit);
            match end {
                None => return,
                Some(i) => {
                    if chunk[i] == b'\n' {
                        emit(&self.pending);
                        self.pending.clear();
                    } else {
                        self.after_cr = true;
                    }
                    chunk = &chunk[i + 1..];
                }
            }
        }
    }

    /// The output ended: hand over what is left of the last line.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8])) {
        if !self.pending.is_empty() {
            emit(&self.pending);
            self.pending.clear();
        }
    }

    fn append(&mut self, mut segment: &[u8], emit: &mut impl FnMut(&[u8])) {
        while self.pending.len() + segment.len() > MAX_LINE {
            let room = MAX_LINE - self.pending.len();
            self.pending.extend_from_slice(&segment[..room]);
            emit(&self.pending);
            self.pending.clear();
            segment = &segment[room..];
        }
        self.pending.extend_from_slice(segment);
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

    #[test]
    fn lines_across_reads_crlf_and_redraws() {
        assert_eq!(split(&[b"a\nb", b"c\n", b"tail"]), ["a", "bc", "tail"]);
        assert_eq!(split(&[b"x\r", b"\ny\r\n"]), ["x", "y"]);
        assert_eq!(split(&[b"10%\r20%", b"\r30%\ndone\n"]), ["30%", "done"]);
        assert_eq!(split(&[b"\n\n"]), ["", ""]);
    }

    #[test]
    fn a_long_line_comes_in_pieces() {
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let lines = split(&[&long[..100], &long[100..], b"\nend"]);
        assert_eq!(lines.iter().map(String::len).collect::<Vec<_>>(), [MAX_LINE, MAX_LINE, 5, 3]);
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
}

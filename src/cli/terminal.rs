//! Guest output on the user's terminal: a lane's raw control characters (clear screen,
//! cursor moves, window titles, OSC sequences, a bell) are shown as visible text instead
//! of being obeyed. `guest.log` keeps the bytes as they came; this is only the view.

use std::io::{self, Write};

/// The bytes that may need rewriting: C0 controls but the tab, DEL, and `C2` (which
/// starts a C1 control when the next byte is `80`–`9F`). Everything else, printable ASCII
/// and the rest of UTF-8, is written as it is.
const SUSPECT: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b != b'\t' as usize;
        b += 1;
    }
    table[0x7F] = true;
    table[0xC2] = true;
    table
};

/// Write `line` to `out` with its control characters made visible: `ESC` becomes `^[`,
/// other C0 controls and DEL their caret form (`^G`, `^?`), C1 controls (U+0080–U+009F,
/// `C2 80`–`C2 9F` in UTF-8) `\u{9b}`; a tab stays a tab. A line without them is one
/// write, and nothing is allocated either way.
pub fn write_neutralized(out: &mut impl Write, line: &[u8]) -> io::Result<()> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rest = line;
    while let Some(i) = first_suspect(rest) {
        out.write_all(&rest[..i])?;
        let b = rest[i];
        let next = rest.get(i + 1).copied();
        let mut used = 1;
        match b {
            0xC2 => match next {
                Some(c @ 0x80..=0x9F) => {
                    out.write_all(&[b'\\', b'u', b'{', HEX[(c >> 4) as usize], HEX[(c & 15) as usize], b'}'])?;
                    used = 2;
                }
                _ => out.write_all(&[b])?,
            },
            0x7F => out.write_all(b"^?")?,
            _ => out.write_all(&[b'^', b + 0x40])?,
        }
        rest = &rest[i + used..];
    }
    out.write_all(rest)
}

/// The first byte of `bytes` that [`SUSPECT`] marks, looked for eight bytes at a time (a
/// word holds one when a byte is below `0x20`, or equal to `0x7F` or `0xC2`; a word with
/// only a tab among them is checked byte by byte, and passed).
fn first_suspect(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS != 0;
    let below_space = |w: u64| w.wrapping_sub(ONES * 0x20) & !w & HIGHS != 0;
    let words = bytes.chunks_exact(8);
    let tail_at = bytes.len() - words.remainder().len();
    for (n, word) in words.enumerate() {
        let w = u64::from_ne_bytes(word.try_into().unwrap_or([0; 8]));
        let marked = below_space(w) || has_zero(w ^ (ONES * 0x7F)) || has_zero(w ^ (ONES * 0xC2));
        if marked && let Some(i) = word.iter().position(|b| SUSPECT[*b as usize]) {
            return Some(n * 8 + i);
        }
    }
    bytes[tail_at..].iter().position(|b| SUSPECT[*b as usize]).map(|i| tail_at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neutralize(line: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_neutralized(&mut out, line).unwrap();
        out
    }

    #[test]
    fn control_sequences_become_visible_text() {
        assert_eq!(neutralize(b"plain\ttext \xc3\xa9"), b"plain\ttext \xc3\xa9");
        assert_eq!(neutralize(b"\x1b[2J\x1b]0;title\x07x"), b"^[[2J^[]0;title^Gx");
        assert_eq!(neutralize(b"a\x7fb\xc2\x9b31m"), b"a^?b\\u{9b}31m");
        // `C2` not followed by a C1 control (or at the end) is ordinary UTF-8 or a lone byte.
        assert_eq!(neutralize(b"\xc2\xa0\xc2\x80\xc2"), b"\xc2\xa0\\u{80}\xc2");
        assert_eq!(neutralize(b"\x00\x1f\r"), b"^@^_^M");
    }

    #[test]
    fn the_word_at_a_time_search_finds_what_the_table_marks() {
        // Every byte value, alone and at every offset among safe bytes and tabs.
        for b in 0..=255u8 {
            for at in 0..20 {
                let mut bytes = vec![b'a'; 20];
                bytes[(at + 3) % 20] = b'\t';
                bytes[at] = b;
                let expected = bytes.iter().position(|b| SUSPECT[*b as usize]);
                assert_eq!(first_suspect(&bytes), expected, "byte {b:#x} at {at}");
            }
        }
    }
}

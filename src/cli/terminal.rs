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
    while let Some(i) = rest.iter().position(|b| SUSPECT[*b as usize]) {
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
}

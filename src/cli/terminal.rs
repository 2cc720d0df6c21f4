//! Guest output on the user's terminal: a lane's raw control characters (clear screen,
//! cursor moves, window titles, OSC sequences, a bell) are shown as visible text instead
//! of being obeyed. `guest.log` keeps the bytes as they came; this is only the view.

use std::borrow::Cow;

/// `ESC` becomes `^[`, other C0 controls and DEL their caret form (`^G`, `^?`), C1
/// controls (U+0080–U+009F, `C2 80`–`C2 9F` in UTF-8) `\u{9b}`; a tab stays a tab.
pub fn neutralize(line: &[u8]) -> Cow<'_, [u8]> {
    let is_c1 = |i: usize| line[i] == 0xC2 && line.get(i + 1).is_some_and(|b| (0x80..=0x9F).contains(b));
    let unsafe_at = |i: usize| (line[i] < 0x20 && line[i] != b'\t') || line[i] == 0x7F || is_c1(i);
    if !(0..line.len()).any(unsafe_at) {
        return Cow::Borrowed(line);
    }
    let mut out = Vec::with_capacity(line.len() + 16);
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        if is_c1(i) {
            out.extend_from_slice(format!("\\u{{{:x}}}", line[i + 1]).as_bytes());
            i += 2;
            continue;
        }
        if b == 0x7F {
            out.extend_from_slice(b"^?");
        } else if b < 0x20 && b != b'\t' {
            out.extend_from_slice(&[b'^', b + 0x40]);
        } else {
            out.push(b);
        }
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_sequences_become_visible_text() {
        assert!(matches!(neutralize(b"plain\ttext \xc3\xa9"), Cow::Borrowed(_)));
        assert_eq!(&*neutralize(b"\x1b[2J\x1b]0;title\x07x"), b"^[[2J^[]0;title^Gx");
        assert_eq!(&*neutralize(b"a\x7fb\xc2\x9b31m"), b"a^?b\\u{9b}31m");
    }
}

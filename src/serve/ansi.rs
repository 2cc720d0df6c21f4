//! Terminal output as HTML: SGR colours and weights become `<span>`s with classes, every
//! other control sequence is dropped, and all text is escaped. The renderer keeps its state
//! across chunks, so a live log can be fed as it grows; each chunk's output is well-formed
//! HTML on its own (an open span is closed at the end and reopened by the next chunk).

/// The text attributes SGR sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Style {
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
    /// 0..=15: the 16 terminal colours.
    fg: Option<u8>,
    bg: Option<u8>,
}

impl Style {
    fn classes(&self) -> String {
        let mut c = Vec::new();
        if self.bold {
            c.push("b".to_string());
        }
        if self.dim {
            c.push("d".to_string());
        }
        if self.italic {
            c.push("i".to_string());
        }
        if self.underline {
            c.push("u".to_string());
        }
        if let Some(n) = self.fg {
            c.push(format!("f{n}"));
        }
        if let Some(n) = self.bg {
            c.push(format!("g{n}"));
        }
        c.join(" ")
    }

    /// Apply one SGR parameter list (`ESC [ p;p;... m`).
    fn apply(&mut self, params: &[u16]) {
        let mut i = 0;
        if params.is_empty() {
            *self = Style::default();
        }
        while i < params.len() {
            match params[i] {
                0 => *self = Style::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                3 => self.italic = true,
                4 => self.underline = true,
                21 | 22 => (self.bold, self.dim) = (false, false),
                23 => self.italic = false,
                24 => self.underline = false,
                n @ 30..=37 => self.fg = Some((n - 30) as u8),
                n @ 90..=97 => self.fg = Some((n - 90 + 8) as u8),
                39 => self.fg = None,
                n @ 40..=47 => self.bg = Some((n - 40) as u8),
                n @ 100..=107 => self.bg = Some((n - 100 + 8) as u8),
                49 => self.bg = None,
                // Extended colours: 256-colour indices below 16 map to the named ones; the
                // rest, and RGB, are skipped with their arguments.
                38 | 48 => {
                    let fg = params[i] == 38;
                    match params.get(i + 1) {
                        Some(5) => {
                            let colour = params.get(i + 2).and_then(|&n| u8::try_from(n).ok()).filter(|&n| n < 16);
                            if fg {
                                self.fg = colour
                            } else {
                                self.bg = colour
                            }
                            i += 2;
                        }
                        Some(2) => i += 4,
                        _ => i = params.len(),
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// Where the parser is inside an escape sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Text,
    /// After ESC.
    Escape,
    /// Inside `ESC [`: parameters until a final byte.
    Csi,
    /// Inside `ESC ]`, `ESC P`, `ESC _`, `ESC ^`, `ESC X`: until BEL or `ESC \`.
    String,
    /// An ESC inside a string: `\` ends it.
    StringEscape,
}

/// A stateful terminal-to-HTML renderer.
#[derive(Debug)]
pub struct Renderer {
    style: Style,
    mode: Mode,
    params: Vec<u16>,
    param: Option<u16>,
    /// Bytes of an incomplete UTF-8 character at the end of the last chunk.
    carry: Vec<u8>,
}

impl Default for Renderer {
    fn default() -> Self {
        Renderer { style: Style::default(), mode: Mode::Text, params: Vec::new(), param: None, carry: Vec::new() }
    }
}

impl Renderer {
    /// Render the next chunk of output.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len() + bytes.len() / 8);
        self.open(&mut out);
        let mut text: Vec<u8> = std::mem::take(&mut self.carry);
        for &b in bytes {
            match self.mode {
                Mode::Text => match b {
                    0x1b => {
                        self.flush_text(&mut text, &mut out, false);
                        self.mode = Mode::Escape;
                    }
                    b'\n' | b'\t' => text.push(b),
                    // Other C0 controls (carriage return, backspace, bell, ...) and DEL.
                    0x00..=0x1f | 0x7f => {}
                    _ => text.push(b),
                },
                Mode::Escape => {
                    self.mode = match b {
                        b'[' => {
                            self.params.clear();
                            self.param = None;
                            Mode::Csi
                        }
                        b']' | b'P' | b'_' | b'^' | b'X' => Mode::String,
                        // Intermediate bytes (`ESC ( B`): the final byte follows.
                        0x20..=0x2f => Mode::Escape,
                        _ => Mode::Text,
                    }
                }
                Mode::Csi => self.csi_byte(b, &mut out),
                Mode::String => match b {
                    0x07 => self.mode = Mode::Text,
                    0x1b => self.mode = Mode::StringEscape,
                    _ => {}
                },
                Mode::StringEscape => self.mode = if b == b'\\' { Mode::Text } else { Mode::String },
            }
        }
        self.flush_text(&mut text, &mut out, true);
        self.close(&mut out);
        out
    }

    /// What is left at the end of the log (an incomplete character).
    pub fn finish(&mut self) -> String {
        let carry = std::mem::take(&mut self.carry);
        if carry.is_empty() {
            return String::new();
        }
        let mut out = String::new();
        self.open(&mut out);
        escape_into(&String::from_utf8_lossy(&carry), &mut out);
        self.close(&mut out);
        out
    }

    fn csi_byte(&mut self, b: u8, out: &mut String) {
        match b {
            b'0'..=b'9' => {
                let digit = u16::from(b - b'0');
                self.param = Some(self.param.unwrap_or(0).saturating_mul(10).saturating_add(digit));
            }
            b';' | b':' => self.params.push(self.param.take().unwrap_or(0)),
            // Private markers and intermediates: part of a sequence we drop anyway.
            0x20..=0x2f | b'<'..=b'?' => {}
            0x40..=0x7e => {
                if let Some(p) = self.param.take() {
                    self.params.push(p);
                }
                if b == b'm' {
                    let before = self.style;
                    let params = std::mem::take(&mut self.params);
                    self.style.apply(&params);
                    if self.style != before {
                        self.close_style(before, out);
                        self.open(out);
                    }
                }
                self.mode = Mode::Text;
            }
            // A control byte inside a sequence aborts it.
            _ => self.mode = Mode::Text,
        }
    }

    /// Escape the collected text; at the end of a chunk, keep an incomplete character.
    fn flush_text(&mut self, text: &mut Vec<u8>, out: &mut String, at_end: bool) {
        if text.is_empty() {
            return;
        }
        let mut keep = 0;
        if at_end
            && let Err(e) = std::str::from_utf8(text)
            && e.error_len().is_none()
        {
            keep = text.len() - e.valid_up_to();
        }
        let upto = text.len() - keep;
        let chunk = String::from_utf8_lossy(&text[..upto]);
        // C1 controls (U+0080..U+009F) are control sequences too (U+009B is a CSI).
        let clean: String = chunk.chars().filter(|c| !('\u{80}'..='\u{9f}').contains(c)).collect();
        escape_into(&clean, out);
        self.carry = text[upto..].to_vec();
        text.clear();
    }

    fn open(&self, out: &mut String) {
        if self.style != Style::default() {
            out.push_str("<span class=\"");
            out.push_str(&self.style.classes());
            out.push_str("\">");
        }
    }

    fn close(&self, out: &mut String) {
        self.close_style(self.style, out);
    }

    fn close_style(&self, style: Style, out: &mut String) {
        if style != Style::default() {
            out.push_str("</span>");
        }
    }
}

/// HTML-escape text (element content and quoted attribute values alike).
pub fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
}

/// Render a whole piece of output at once.
pub fn to_html(bytes: &[u8]) -> String {
    let mut r = Renderer::default();
    let mut out = r.push(bytes);
    out.push_str(&r.finish());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            to_html(b"<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn sgr_colours_become_classes() {
        assert_eq!(to_html(b"\x1b[1;31merror\x1b[0m: x"), "<span class=\"b f1\">error</span>: x");
        assert_eq!(to_html(b"\x1b[92mok\x1b[39m."), "<span class=\"f10\">ok</span>.");
        assert_eq!(to_html(b"\x1b[38;5;4mblue\x1b[m"), "<span class=\"f4\">blue</span>");
        assert_eq!(to_html(b"\x1b[38;2;1;2;3;1mrgb\x1b[m"), "<span class=\"b\">rgb</span>");
        assert_eq!(to_html(b"\x1b[44;33mx\x1b[49my"), "<span class=\"f3 g4\">x</span><span class=\"f3\">y</span>");
    }

    #[test]
    fn other_control_sequences_are_dropped() {
        assert_eq!(to_html(b"a\x1b[2K\x1b[1Gb\rc\x08d\x07"), "abcd");
        assert_eq!(to_html(b"\x1b]0;title\x07x\x1b]8;;http://e\x1b\\link\x1b]8;;\x1b\\"), "xlink");
        assert_eq!(to_html(b"\x1b[?25lhidden\x1b=\x1b(B"), "hidden");
        assert_eq!(to_html("a\u{9b}31mb".as_bytes()), "a31mb");
        assert_eq!(to_html(b"x\x00y\x7fz"), "xyz");
    }

    #[test]
    fn state_and_characters_carry_across_chunks() {
        let mut r = Renderer::default();
        let euro = "€".as_bytes();
        let a = r.push(&[b"\x1b[3", &euro[..0]].concat());
        let b = r.push(&[&b"1mred "[..], &euro[..1]].concat());
        let c = r.push(&[&euro[1..], &b"\x1b[0m"[..]].concat());
        assert_eq!(format!("{a}|{b}|{c}"), "|<span class=\"f1\">red </span>|<span class=\"f1\">€</span>");
        assert_eq!(r.finish(), "");
        let mut r = Renderer::default();
        assert_eq!(r.push(&euro[..2]), "");
        assert_eq!(r.finish(), "\u{fffd}");
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(to_html(b"a\xffb"), "a\u{fffd}b");
    }
}

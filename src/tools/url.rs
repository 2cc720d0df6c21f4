//! Percent-encoding, the one way pikaci writes bytes into a URL (Nix's `path:` URLs,
//! Incus' API paths, the web page's links).

/// Every byte of `bytes` outside `A-Z a-z 0-9 - . _ ~` (and the bytes of `keep`)
/// percent-encoded.
pub fn percent_encode(bytes: &[u8], keep: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_bytes_stay_and_others_are_escaped() {
        assert_eq!(percent_encode(b"a-b.c_d~e", b""), "a-b.c_d~e");
        assert_eq!(percent_encode("p?q a#b%c é/x".as_bytes(), b"/"), "p%3Fq%20a%23b%25c%20%C3%A9/x");
        assert_eq!(percent_encode(b"a/b", b""), "a%2Fb");
    }
}

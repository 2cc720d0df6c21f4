//! `path:` flake URLs for local directories. Nix parses them as URLs: a space, `#`, `?`,
//! `%` or a non-ASCII character in the directory must be percent-encoded, or Nix refuses
//! the URL ("is not a valid URL") or, with `?`, evaluates a truncated path.

use std::path::{Path, PathBuf};

/// `path:<dir>`, every byte of the path outside `A-Z a-z 0-9 - . _ ~ /` percent-encoded.
pub fn path_url(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    format!("path:{}", crate::tools::url::percent_encode(dir.as_os_str().as_bytes(), b"/"))
}

/// The directory of a `path:` URL as a user wrote it (`--flake path:...`): its query and
/// fragment dropped, percent-escapes decoded. `None` when an escape is malformed.
pub fn url_path(spec: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let raw = spec.split(['?', '#']).next().unwrap_or(spec).as_bytes();
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = std::str::from_utf8(raw.get(i + 1..i + 3)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    Some(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_what_a_url_parser_would_misread_and_round_trips() {
        let dir = Path::new("/tmp/a b#c?d%e é/x");
        let url = path_url(dir);
        assert_eq!(url, "path:/tmp/a%20b%23c%3Fd%25e%20%C3%A9/x");
        assert_eq!(url_path(url.strip_prefix("path:").unwrap()).unwrap(), dir);
        assert_eq!(path_url(Path::new("/plain/dir-1.2_x")), "path:/plain/dir-1.2_x");
        assert_eq!(url_path("/a/b?dir=sub#frag").unwrap(), Path::new("/a/b"));
        assert_eq!(url_path("/a/%zz"), None);
    }
}

//! Request path normalization: one canonical spelling per path, so routing and
//! later policy stages see the same path the upstream will act on, and encoded
//! tricks (`%2e%2e`, `%2f`, `\`) cannot slip past a prefix match.

use std::borrow::Cow;

/// Why a request path was refused (the proxy answers 400).
///
/// The variants carry no input on purpose: the message goes back to an untrusted
/// client, and echoing its bytes would only help probing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error(
        "an encoded slash (%2F) is not allowed in a path; send '/' unencoded to separate segments"
    )]
    EncodedSlash,
    #[error("a backslash ('\\' or %5C) is not allowed in a path; use '/' to separate segments")]
    Backslash,
    #[error("an encoded NUL byte (%00) is not allowed in a path; remove it")]
    Nul,
    #[error("'%' in a path must be followed by two hex digits; send a literal '%' as %25")]
    InvalidEncoding,
    #[error("the path must start with '/'; send an absolute path such as /index.html")]
    NotAbsolute,
    #[error(
        "control characters and non-ASCII bytes are not allowed in a path; percent-encode them"
    )]
    ControlOrNonAscii,
}

/// Normalizes the path of a request URI (without the query).
///
/// 1. Percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
///    decoded, because RFC 3986 §6.2.2.2 makes both spellings equivalent; every
///    other escape is kept with upper-case hex, so `%252e` stays `%252E` and
///    `%c0%ae` (an overlong '.') stays `%C0%AE`: neither is a dot.
/// 2. Escapes that would change the path's structure once an upstream decodes
///    them (`%2F`, `%5C`, `%00`), raw backslashes, broken escapes, control bytes
///    and non-ASCII bytes are refused rather than guessed at.
/// 3. Repeated slashes collapse and dot segments are removed (RFC 3986 §5.2.4);
///    `..` never climbs above `/`. A trailing slash is kept.
///
/// A path already in that form (the usual request) is returned borrowed.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// Whether the three steps of [`normalize_path`] would give `path` back
/// unchanged and accept it: no escape, backslash, control or non-ASCII byte,
/// and no empty, `.` or `..` segment (a trailing '/' is one empty segment
/// that stays). `path` starts with '/'.
fn is_normal(path: &[u8]) -> bool {
    if path
        .iter()
        .any(|&b| b == b'%' || b == b'\\' || b.is_ascii_control() || !b.is_ascii())
    {
        return false;
    }
    let segments = path[1..].split(|&b| b == b'/');
    let last = path[1..].iter().filter(|&&b| b == b'/').count();
    segments.enumerate().all(|(index, segment)| match segment {
        b"" => index == last,
        b"." | b".." => false,
        _ => true,
    })
}

/// Step 1 and 2 of [`normalize_path`]: the path with only unreserved escapes
/// decoded, every byte checked.
fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::InvalidEncoding);
                };
                let value = hi << 4 | lo;
                match value {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    0 => return Err(PathError::Nul),
                    v if is_unreserved(v) => out.push(char::from(v)),
                    v => {
                        out.push('%');
                        out.push(char::from(HEX_UPPER[usize::from(v >> 4)]));
                        out.push(char::from(HEX_UPPER[usize::from(v & 0xf)]));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b if b.is_ascii_control() || !b.is_ascii() => {
                return Err(PathError::ControlOrNonAscii);
            }
            b => {
                out.push(char::from(b));
                i += 1;
            }
        }
    }
    Ok(out)
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// The value of one hex digit (also for the WAF's decoding).
pub(crate) fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Step 3 of [`normalize_path`]. `path` starts with '/'.
///
/// Works segment by segment on one output buffer that always ends in '/', so
/// `..` is a truncation to the previous '/' and empty segments simply vanish.
fn remove_dot_segments(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    out.push('/');
    // Whether the last segment left the path ending in '/' (`/a/`, `/a/.`, `/a/..`).
    let mut trailing_slash = true;
    for segment in path[1..].split('/') {
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                out.pop();
                let keep = out.rfind('/').map_or(0, |at| at + 1);
                out.truncate(keep);
                if out.is_empty() {
                    out.push('/');
                }
                trailing_slash = true;
            }
            name => {
                out.push_str(name);
                out.push('/');
                trailing_slash = false;
            }
        }
    }
    if !trailing_slash && out.len() > 1 {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> String {
        let normalized =
            normalize_path(path).unwrap_or_else(|e| panic!("{path:?} was refused: {e}"));
        // The shortcut for paths already normal agrees with the full steps.
        let full = decode_unreserved(path.as_bytes()).map(|d| remove_dot_segments(&d));
        assert_eq!(Ok(&*normalized), full.as_deref(), "{path:?}");
        normalized.into_owned()
    }

    fn err(path: &str) -> PathError {
        match normalize_path(path) {
            Ok(normalized) => panic!("{path:?} was accepted as {normalized:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn plain_paths_are_unchanged() {
        for path in ["/", "/a", "/a/b", "/a/b/", "/a-b_c~d.e", "/a;b=c", "/x:y@z"] {
            assert_eq!(ok(path), path);
        }
    }

    #[test]
    fn only_paths_already_normal_are_borrowed() {
        for path in ["/", "/a", "/a/b/", "/a..b/c.", "/.../a", "/a;b=c"] {
            assert!(
                matches!(normalize_path(path), Ok(Cow::Borrowed(_))),
                "{path:?}"
            );
        }
        for path in [
            "//", "/a//b", "//a", "/a/.", "/a/..", "/./a", "/../a", "/a/./", "/%41", "/a/.%2e",
        ] {
            assert!(!is_normal(path.as_bytes()), "{path:?}");
        }
    }

    #[test]
    fn must_be_absolute() {
        assert_eq!(err(""), PathError::NotAbsolute);
        assert_eq!(err("a/b"), PathError::NotAbsolute);
        assert_eq!(err("*"), PathError::NotAbsolute);
        assert_eq!(err("%2Fa"), PathError::NotAbsolute);
    }

    #[test]
    fn repeated_slashes_collapse() {
        assert_eq!(ok("/a//b"), "/a/b");
        assert_eq!(ok("//a///b//"), "/a/b/");
        assert_eq!(ok("//"), "/");
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(ok("/a/./b/../c"), "/a/c");
        assert_eq!(ok("/../etc"), "/etc");
        assert_eq!(ok("/a/b/../../../../etc/passwd"), "/etc/passwd");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/b/."), "/a/b/");
        assert_eq!(ok("/.."), "/");
        assert_eq!(ok("/."), "/");
        assert_eq!(ok("/a/.//b"), "/a/b");
        assert_eq!(ok("/a/..b/c."), "/a/..b/c.");
        assert_eq!(ok("/.../a"), "/.../a");
    }

    #[test]
    fn trailing_slash_is_kept() {
        assert_eq!(ok("/a/b/"), "/a/b/");
        assert_eq!(ok("/a/b//"), "/a/b/");
    }

    #[test]
    fn unreserved_escapes_are_decoded() {
        assert_eq!(ok("/%41%62%7e%2D%5f%2e"), "/Ab~-_.");
        assert_eq!(ok("/a/%2e%2e/b"), "/b");
        assert_eq!(ok("/a/%2E/b"), "/a/b");
        assert_eq!(ok("/a/.%2e/b"), "/b");
    }

    #[test]
    fn other_escapes_stay_with_upper_case_hex() {
        assert_eq!(ok("/a%20b"), "/a%20b");
        assert_eq!(ok("/a%3ab%3F"), "/a%3Ab%3F");
        assert_eq!(ok("/%e2%82%ac"), "/%E2%82%AC");
        assert_eq!(ok("/%25"), "/%25");
        // Only the escape is upper-cased; the text after it is not hex.
        assert_eq!(ok("/%2541"), "/%2541");
    }

    #[test]
    fn double_encoding_is_not_a_dot_segment() {
        assert_eq!(ok("/a/%252e%252e/b"), "/a/%252e%252e/b");
        assert_eq!(ok("/a/%252f/b"), "/a/%252f/b");
    }

    #[test]
    fn overlong_utf8_dot_stays_encoded() {
        assert_eq!(ok("/a/%c0%ae%c0%ae/b"), "/a/%C0%AE%C0%AE/b");
    }

    #[test]
    fn encoded_slash_is_refused() {
        assert_eq!(err("/api/..%2f..%2fetc/passwd"), PathError::EncodedSlash);
        assert_eq!(err("/a%2Fb"), PathError::EncodedSlash);
    }

    #[test]
    fn backslash_is_refused() {
        assert_eq!(err("/a\\b"), PathError::Backslash);
        assert_eq!(err("/..\\etc"), PathError::Backslash);
        assert_eq!(err("/a%5cb"), PathError::Backslash);
        assert_eq!(err("/a%5Cb"), PathError::Backslash);
    }

    #[test]
    fn nul_is_refused() {
        assert_eq!(err("/a%00.txt"), PathError::Nul);
    }

    #[test]
    fn invalid_encoding_is_refused() {
        for path in ["/%zz", "/a%", "/a%4", "/%4g", "/%%41", "/%-1"] {
            assert_eq!(err(path), PathError::InvalidEncoding, "{path:?}");
        }
    }

    #[test]
    fn control_and_non_ascii_bytes_are_refused() {
        for path in ["/a\0b", "/a\nb", "/a\rb", "/a\tb", "/a\x7fb", "/caf\u{e9}"] {
            assert_eq!(err(path), PathError::ControlOrNonAscii, "{path:?}");
        }
    }

    #[test]
    fn attack_strings() {
        assert_eq!(ok("/api/%2e%2e/%2e%2e/secret"), "/secret");
        assert_eq!(ok("/static/..;/admin"), "/static/..;/admin");
        assert_eq!(ok("/static/%2e%2e;/admin"), "/static/..;/admin");
        assert_eq!(ok("/api/..%252f..%252fetc"), "/api/..%252f..%252fetc");
        assert_eq!(ok("/./.././%2e/"), "/");
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for path in [
            "/a/./b/../c",
            "/a/%2e%2e/%41",
            "/a%3ab//c/",
            "/%252e%252e/x",
            "/static/..;/admin",
        ] {
            let once = ok(path);
            assert_eq!(ok(&once), once, "{path:?}");
        }
    }

    #[test]
    fn errors_say_what_to_do() {
        assert!(PathError::EncodedSlash.to_string().contains("unencoded"));
        assert!(PathError::InvalidEncoding.to_string().contains("%25"));
    }
}

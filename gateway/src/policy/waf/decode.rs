//! The WAF's one decode chain: every value is turned into the text an upstream
//! (or a browser, a shell, a SQL parser) might end up reading, before any
//! signature looks at it. Encodings an attacker can stack are undone in a loop
//! until nothing changes, so the order in which they were stacked does not
//! matter.
//!
//! 1. Unescape, repeated until stable (at most [`MAX_ROUNDS`] rounds):
//!    `%XX`, `%uXXXX`, `\uXXXX` (surrogate pairs joined), the JSON escapes
//!    `\" \/ \b \f \n \r \t` (not `\\`, so `\\server\share` stays what it is),
//!    HTML entities — named (`&lt;`, `&colon;`, `&Tab;`…), decimal (`&#106;`)
//!    and hex (`&#x6a;`), each with or without the `;` — and, in form data and
//!    query strings, `+` as a space (first round only: a decoded `%2B` is a
//!    plus).
//! 2. Fold: fullwidth ASCII (`＜`) to ASCII, U+00A0 to a space, lower case.
//! 3. Views of the folded text, each matched by every signature:
//!    - the text itself;
//!    - for SQL: comments replaced by a space (`/**/`, `--…` and `#…` up to a
//!      line end, MySQL's `/*!50000 … */` keeping its inside) and runs of
//!      whitespace collapsed, so `union/**/select` and `union#x⏎select` read
//!      `union select` (only when that changes anything);
//!    - for URL schemes: control characters inside a scheme removed, as
//!      browsers do, so `java⇥script:` reads `javascript:` (only when the text
//!      has a control character).

use std::borrow::Cow;

use crate::proxy::normalize::hex_value;

/// Bound of the unescape loop: five layers of encoding are already more than
/// any upstream decodes, and the bound keeps a hostile value's cost linear.
pub(super) const MAX_ROUNDS: usize = 5;

/// A value after the decode chain. It borrows the raw value when the chain
/// leaves it as it is (no escapes, ASCII lower case: most header values), so
/// a clean value costs no allocation.
pub(super) struct Decoded<'a> {
    /// The unescaped bytes before folding (for NUL and overlong UTF-8).
    pub bytes: Cow<'a, [u8]>,
    /// The folded text.
    text: Cow<'a, str>,
    /// The SQL view, with comments read as a space.
    sql: Option<String>,
    /// The SQL view with comments deleted (only when the text has `/*`).
    joined: Option<String>,
    /// The scheme view.
    scheme: Option<String>,
}

impl Decoded<'_> {
    /// The folded text, then its SQL and scheme views that differ from it.
    pub fn views(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&*self.text)
            .chain(self.sql.as_deref())
            .chain(self.joined.as_deref())
            .chain(self.scheme.as_deref())
    }

    /// The folded text (the first view).
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Runs the whole chain on one value; `form` makes `+` a space.
pub(super) fn decode(input: &[u8], form: bool) -> Decoded<'_> {
    let bytes = unescape(input, form);
    // Only text borrowed from the input can stay borrowed: `bytes` moves into the
    // result beside it.
    let borrowed = match bytes {
        Cow::Borrowed(raw) => std::str::from_utf8(raw).ok(),
        Cow::Owned(_) => None,
    };
    let text = match borrowed {
        Some(text) => fold(text),
        None => Cow::Owned(fold(&String::from_utf8_lossy(&bytes)).into_owned()),
    };
    let sql = sql_view(&text, " ");
    // `UN/**/ION`: some filters delete comments rather than read them as
    // space, so the keywords they split are also read joined.
    let joined = if contains(text.as_bytes(), b"/*") {
        sql_view(&text, "")
    } else {
        None
    };
    let scheme = scheme_view(&text);
    Decoded {
        bytes,
        text,
        sql,
        joined,
        scheme,
    }
}

/// Step 1: unescape until stable. Values without any escape character (most
/// header values) are borrowed as they are and not scanned again.
pub(super) fn unescape(input: &[u8], form: bool) -> Cow<'_, [u8]> {
    let mut current = Cow::Borrowed(input);
    for round in 0..MAX_ROUNDS {
        if !current
            .iter()
            .any(|b| matches!(b, b'%' | b'&' | b'\\' | b'+'))
        {
            break;
        }
        let next = unescape_once(&current, form && round == 0);
        if next == *current {
            break;
        }
        current = Cow::Owned(next);
    }
    current
}

fn unescape_once(input: &[u8], plus_is_space: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        let decoded = match b {
            b'%' => percent(input, i),
            b'\\' => backslash(input, i),
            b'&' => entity(input, i),
            b'+' if plus_is_space => Some((' ', 1)),
            _ => None,
        };
        match decoded {
            Some((c, used)) => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                i += used;
            }
            // `%XX` may be any byte, not only a character: overlong UTF-8
            // (`%c0%ae`) must survive as bytes for the overlong check.
            None if b == b'%' => match hex_pair(input, i + 1) {
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                }
                None => {
                    out.push(b);
                    i += 1;
                }
            },
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// `%uXXXX` (IIS); plain `%XX` is handled by the caller as a byte.
fn percent(input: &[u8], i: usize) -> Option<(char, usize)> {
    match input.get(i + 1) {
        Some(b'u' | b'U') => hex_char(input.get(i + 2..i + 6)?).map(|c| (c, 6)),
        _ => None,
    }
}

/// `\uXXXX` (joining a surrogate pair) and the JSON escapes but `\\`.
fn backslash(input: &[u8], i: usize) -> Option<(char, usize)> {
    let c = match input.get(i + 1)? {
        b'u' => {
            let high = hex_u16(input.get(i + 2..i + 6)?)?;
            if (0xD800..0xDC00).contains(&high)
                && input.get(i + 6) == Some(&b'\\')
                && input.get(i + 7) == Some(&b'u')
                && let Some(low) = input.get(i + 8..i + 12).and_then(hex_u16)
                && (0xDC00..0xE000).contains(&low)
            {
                let code = 0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                return char::from_u32(code).map(|c| (c, 12));
            }
            return Some((char::from_u32(u32::from(high)).unwrap_or('\u{FFFD}'), 6));
        }
        b'"' => '"',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        _ => return None,
    };
    Some((c, 2))
}

/// Named entities worth decoding: the ones that spell markup, URL schemes,
/// paths, shell and SQL syntax. Matched case-insensitively, longest first.
const ENTITIES: &[(&str, char)] = &[
    ("newline", '\n'),
    ("percnt", '%'),
    ("lbrack", '['),
    ("rbrack", ']'),
    ("lbrace", '{'),
    ("rbrace", '}'),
    ("period", '.'),
    ("equals", '='),
    ("commat", '@'),
    ("dollar", '$'),
    ("midast", '*'),
    ("lowbar", '_'),
    ("verbar", '|'),
    ("colon", ':'),
    ("comma", ','),
    ("grave", '`'),
    ("quest", '?'),
    ("quot", '"'),
    ("apos", '\''),
    ("nbsp", '\u{a0}'),
    ("bsol", '\\'),
    ("lpar", '('),
    ("rpar", ')'),
    ("semi", ';'),
    ("excl", '!'),
    ("lsqb", '['),
    ("rsqb", ']'),
    ("lcub", '{'),
    ("rcub", '}'),
    ("plus", '+'),
    ("vert", '|'),
    ("amp", '&'),
    ("num", '#'),
    ("sol", '/'),
    ("tab", '\t'),
    ("ast", '*'),
    ("lt", '<'),
    ("gt", '>'),
];

/// `&#106;`, `&#x6a;`, `&lt;`, each also without the `;` (browsers accept
/// that).
fn entity(input: &[u8], i: usize) -> Option<(char, usize)> {
    let rest = input.get(i + 1..)?;
    if let Some(numeric) = rest.strip_prefix(b"#") {
        let (radix, digits, skip) = match numeric.first() {
            Some(b'x' | b'X') => (16, numeric.get(1..)?, 3),
            _ => (10, numeric, 2),
        };
        let len = digits
            .iter()
            .take(8)
            .take_while(|d| char::from(**d).is_digit(radix))
            .count();
        if len == 0 {
            return None;
        }
        let text = std::str::from_utf8(digits.get(..len)?).ok()?;
        let code = u32::from_str_radix(text, radix).ok()?;
        let c = char::from_u32(code).unwrap_or('\u{FFFD}');
        let semi = usize::from(digits.get(len) == Some(&b';'));
        return Some((c, skip + len + semi));
    }
    ENTITIES.iter().find_map(|(name, c)| {
        let candidate = rest.get(..name.len())?;
        candidate.eq_ignore_ascii_case(name.as_bytes()).then(|| {
            let semi = usize::from(rest.get(name.len()) == Some(&b';'));
            (*c, 1 + name.len() + semi)
        })
    })
}

fn hex_pair(input: &[u8], at: usize) -> Option<u8> {
    let hi = hex_value(*input.get(at)?)?;
    let lo = hex_value(*input.get(at + 1)?)?;
    Some(hi << 4 | lo)
}

fn hex_u16(digits: &[u8]) -> Option<u16> {
    digits
        .iter()
        .try_fold(0u16, |acc, d| Some(acc << 4 | u16::from(hex_value(*d)?)))
}

fn hex_char(digits: &[u8]) -> Option<char> {
    Some(char::from_u32(u32::from(hex_u16(digits)?)).unwrap_or('\u{FFFD}'))
}

/// Step 2: fullwidth ASCII and no-break space folded, then lower case.
pub(super) fn fold(text: &str) -> Cow<'_, str> {
    // The usual value: none of the mapped characters, and ASCII's lowercase is
    // Unicode's for it, without the char-by-char walk (see BENCHMARKS.md);
    // already lower case, it is the text itself.
    if text.is_ascii() {
        return if text.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(text.to_ascii_lowercase())
        } else {
            Cow::Borrowed(text)
        };
    }
    Cow::Owned(
        text.chars()
            .map(|c| match u32::from(c) {
                0xFF01..=0xFF5E => char::from_u32(u32::from(c) - 0xFEE0).unwrap_or(c),
                0xA0 => ' ',
                // Slashes Windows' "best fit" mapping turns into `/` and `\`.
                0x2215 | 0x2044 => '/',
                0x2216 | 0x29F5 | 0xFE68 => '\\',
                _ => c,
            })
            .flat_map(char::to_lowercase)
            .collect(),
    )
}

/// The SQL view: comments out, whitespace runs collapsed; `None` when that
/// changes nothing.
fn sql_view(text: &str, comment_replacement: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let interesting = bytes.windows(2).any(|w| {
        matches!(w, [b'/', b'*'] | [b'-', b'-'] | [b'#', _])
            || (w[0].is_ascii_whitespace() && w[1].is_ascii_whitespace())
    }) || bytes.iter().any(|b| b.is_ascii_whitespace() && *b != b' ');
    if !interesting {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(comment) = rest.strip_prefix("/*") {
            let replacement = comment_replacement;
            match comment.find("*/") {
                // MySQL runs what a `/*!` comment holds.
                Some(end) if comment.starts_with('!') => {
                    let inner = comment.get(1..end).unwrap_or_default();
                    push_space(&mut out);
                    out.push_str(
                        inner
                            .trim_start_matches(|c: char| c.is_ascii_digit())
                            .trim(),
                    );
                    push_space(&mut out);
                    rest = comment.get(end + 2..).unwrap_or_default();
                }
                Some(end) => {
                    rest = comment.get(end + 2..).unwrap_or_default();
                    if replacement == " " {
                        push_space(&mut out);
                    }
                }
                None => {
                    push_space(&mut out);
                    rest = "";
                }
            }
            continue;
        }
        // A line comment that a line end closes: what follows it is live SQL
        // (`union#x\nselect`). A trailing one (`admin'--`) is left for the
        // signatures that look for it.
        if (rest.starts_with("--") || rest.starts_with('#'))
            && let Some(end) = rest.find('\n')
        {
            push_space(&mut out);
            rest = rest.get(end + 1..).unwrap_or_default();
            continue;
        }
        if c.is_whitespace() {
            push_space(&mut out);
        } else {
            out.push(c);
        }
        rest = rest.get(c.len_utf8()..).unwrap_or_default();
    }
    (out != text).then_some(out)
}

fn push_space(out: &mut String) {
    if !out.ends_with(' ') {
        out.push(' ');
    }
}

/// The scheme view: control characters removed from every scheme-like token
/// that ends in `:`; `None` when the text has no control character.
fn scheme_view(text: &str) -> Option<String> {
    if !text.chars().any(|c| c.is_ascii_control()) {
        return None;
    }
    let chars: Vec<char> = text.chars().collect();
    let mut keep = vec![true; chars.len()];
    for (colon, _) in chars.iter().enumerate().filter(|(_, c)| **c == ':') {
        let mut j = colon;
        while j > 0 {
            let c = chars.get(j - 1).copied().unwrap_or(' ');
            if c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.') {
                j -= 1;
            } else if c.is_ascii_control() {
                if let Some(k) = keep.get_mut(j - 1) {
                    *k = false;
                }
                j -= 1;
            } else {
                break;
            }
        }
    }
    let out: String = chars
        .iter()
        .zip(&keep)
        .filter(|(_, keep)| **keep)
        .map(|(c, _)| *c)
        .collect();
    (out != text).then_some(out)
}

/// Whether `needle` occurs in `haystack` (for the cheap prefilters): for
/// needles of two or three bytes in values of a few dozen, cheaper than
/// `str::contains`, whose searcher is set up anew on each call.
pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

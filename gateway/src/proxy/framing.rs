//! Strict HTTP/1.1 message framing (RFC 9112), checked on the raw bytes before
//! hyper reads them, and the `Host`/`:authority` rules of every version.
//!
//! hyper hides what a smuggling check needs: it drops `Content-Length` when
//! `Transfer-Encoding` is present, accepts codings case-insensitively, and its
//! chunked decoder is lenient in places another parser is not. So the
//! listener runs every HTTP/1.1 connection's bytes through a [`Scanner`] that
//! follows the messages as hyper will: a head is held until it is complete and
//! has passed [`check_head`], body bytes are passed on as they are validated
//! (`Content-Length` counted, chunked framing parsed exactly). What two parsers
//! could read differently is refused:
//!
//! - a bad head becomes bytes hyper cannot parse, so hyper answers `400` and
//!   closes the connection; nothing after it is ever read;
//! - bad chunked framing becomes a read error at that byte, which reaches the
//!   service as a body error of the client (`400 bad_body`) and closes the
//!   connection after the answer.

use std::{fmt, mem::MaybeUninit};

use bytes::BytesMut;
use http::{HeaderMap, Uri, header};

/// Why a message's framing or host was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("the request head is not valid HTTP/1.1")]
    MalformedHead,
    #[error("a request head line ends in a bare CR or LF")]
    BareLineEnding,
    #[error("the request target is not origin-form or a matching absolute-form")]
    BadTarget,
    #[error("CONNECT is not served")]
    Connect,
    #[error("no Host header")]
    MissingHost,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("the Host header is not a valid host")]
    InvalidHost,
    #[error("the request target's authority differs from Host")]
    AuthorityMismatch,
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndEncoding,
    #[error("more than one Content-Length")]
    DuplicateLength,
    #[error("Content-Length is not one canonical decimal number")]
    BadLength,
    #[error("a Transfer-Encoding other than exactly one `chunked`")]
    BadEncoding,
    #[error("a chunk size that is not 1 to 16 hex digits")]
    BadChunkSize,
    #[error("a malformed chunk extension")]
    BadChunkExtension,
    #[error("a chunk line that does not end in CRLF")]
    BadChunkLine,
    #[error("more chunk data than the chunk size")]
    ChunkOverrun,
    #[error("a malformed trailer section")]
    BadTrailer,
}

impl FramingError {
    /// Whether the fault lies in a body (after hyper has the head).
    fn in_body(self) -> bool {
        matches!(
            self,
            Self::BadChunkSize
                | Self::BadChunkExtension
                | Self::BadChunkLine
                | Self::ChunkOverrun
                | Self::BadTrailer
        )
    }
}

/// How a request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

/// A head hyper has to judge itself: it answers 431 for these.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Framing(Framing),
    Refuse(FramingError),
    TooManyHeaders,
}

/// What hyper gets instead of a refused head: a method that is not a token,
/// so hyper's parser fails, answers `400 Bad Request` and closes.
const UNPARSABLE: &[u8] = b"\0 / HTTP/1.1\r\n\r\n";
/// A chunk line (size and extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 1024;
/// The trailer section's size limit.
const MAX_TRAILERS: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    Size {
        value: u64,
        digits: u8,
    },
    /// Extensions begin at `start` in the pending line.
    Extension {
        size: u64,
        start: usize,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    Trailers,
}

/// How the scanner's stream ends once the validated bytes are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// End of stream (after a refused head, or a head hyper refuses itself).
    Eof,
    /// A read error at the first bad body byte.
    Error(FramingError),
}

/// Follows the HTTP/1.1 messages of one connection; see the module docs.
pub struct Scanner {
    state: State,
    /// The head (or chunk line, or trailer section) being assembled.
    pending: Vec<u8>,
    max_head: usize,
    max_headers: usize,
    /// Validated bytes for hyper.
    out: BytesMut,
    end: Option<End>,
    /// A head refused since the last [`Scanner::take_refused`].
    refused: Option<FramingError>,
}

impl fmt::Debug for Scanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scanner")
            .field("state", &self.state)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl Scanner {
    /// `max_head`: hyper's buffer size; `max_headers`: hyper's header limit.
    pub fn new(max_head: usize, max_headers: usize) -> Self {
        Self {
            state: State::Head,
            pending: Vec::new(),
            max_head,
            max_headers,
            out: BytesMut::new(),
            end: None,
            refused: None,
        }
    }

    /// Validated bytes hyper may read now.
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// How the stream ends after [`Self::output`], once it does.
    pub fn end(&self) -> Option<End> {
        self.end
    }

    /// The head refused by the last [`Self::feed`], for logs and the abuse loop.
    pub fn take_refused(&mut self) -> Option<FramingError> {
        self.refused.take()
    }

    /// Takes bytes read from the client.
    pub fn feed(&mut self, mut input: &[u8]) {
        while !input.is_empty() && self.end.is_none() {
            let used = self.step(input);
            input = input.get(used..).unwrap_or_default();
        }
    }

    /// Consumes a prefix of `input` (at least one byte unless the stream ended).
    fn step(&mut self, input: &[u8]) -> usize {
        match self.state {
            State::Head => self.head_bytes(input),
            State::Length(left) => self.pass(input, left, State::Head, State::Length),
            State::Data(left) => self.pass(input, left, State::DataCr, State::Data),
            _ => {
                if let Err(err) = self.chunk_byte(input[0]) {
                    self.fail(err);
                }
                1
            }
        }
    }

    /// Passes up to `left` body bytes on; `done` follows once all are
    /// through, `more(rest)` while some are still to come.
    fn pass(&mut self, input: &[u8], left: u64, done: State, more: fn(u64) -> State) -> usize {
        let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
        self.out.extend_from_slice(&input[..take]);
        let rest = left - take as u64;
        self.state = if rest == 0 { done } else { more(rest) };
        take
    }

    /// Collects head bytes. Only an LF can end a line, a head or an empty line
    /// before it, so the bytes up to the next LF (most of a long header value) are
    /// copied at once; the head limit is checked at the exact byte either way.
    fn head_bytes(&mut self, input: &[u8]) -> usize {
        let mut at = 0;
        while let Some(rest) = input.get(at..).filter(|rest| !rest.is_empty()) {
            let run = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
            // Bytes the head may still take: one more is hyper's limit.
            let room = (self.max_head + 1).saturating_sub(self.pending.len());
            if run >= room {
                self.pending.extend_from_slice(&rest[..room]);
                self.overflow();
                return at + room;
            }
            self.pending.extend_from_slice(&rest[..run]);
            at += run;
            if at == input.len() {
                break;
            }
            // The LF. Empty lines before a request line are skipped (RFC 9112 §2.2).
            at += 1;
            if self.pending.is_empty() {
                self.fail(FramingError::BareLineEnding);
                return at;
            }
            self.pending.push(b'\n');
            if self.pending == b"\r\n" {
                self.out.extend_from_slice(b"\r\n");
                self.pending.clear();
                continue;
            }
            if section_end(&self.pending) {
                self.head_complete();
                return at;
            }
            if self.pending.len() > self.max_head {
                self.overflow();
                return at;
            }
        }
        input.len()
    }

    /// A head over hyper's limit: hyper gets it to answer 431 and close.
    fn overflow(&mut self) {
        self.out.extend_from_slice(&self.pending);
        self.pending.clear();
        self.end = Some(End::Eof);
    }

    fn head_complete(&mut self) {
        match check_head(&self.pending, self.max_headers) {
            Verdict::Framing(framing) => {
                self.out.extend_from_slice(&self.pending);
                self.state = match framing {
                    Framing::Empty | Framing::Length(0) => State::Head,
                    Framing::Length(n) => State::Length(n),
                    Framing::Chunked => State::Size {
                        value: 0,
                        digits: 0,
                    },
                };
            }
            Verdict::TooManyHeaders => {
                self.out.extend_from_slice(&self.pending);
                self.end = Some(End::Eof);
            }
            Verdict::Refuse(err) => self.fail(err),
        }
        // The next head of a keep-alive connection reuses a small buffer; a large
        // one is not held while the connection idles.
        if self.pending.capacity() > KEPT_HEAD_CAPACITY {
            self.pending = Vec::new();
        } else {
            self.pending.clear();
        }
    }

    /// One byte of a chunk line, of the CRLF after chunk data or of the
    /// trailers. Lines are held until they are known to be sound.
    fn chunk_byte(&mut self, byte: u8) -> Result<(), FramingError> {
        self.state = match self.state {
            State::Size { value, digits } => {
                self.pending.push(byte);
                match (byte, crate::proxy::normalize::hex_value(byte)) {
                    (_, Some(digit)) if digits < 16 => State::Size {
                        value: value << 4 | u64::from(digit),
                        digits: digits + 1,
                    },
                    (b';', _) if digits > 0 => State::Extension {
                        size: value,
                        start: self.pending.len(),
                    },
                    (b'\r', _) if digits > 0 => State::SizeLf { size: value },
                    _ => return Err(FramingError::BadChunkSize),
                }
            }
            State::Extension { size, start } => {
                self.pending.push(byte);
                match byte {
                    b'\r' => {
                        let end = self.pending.len() - 1;
                        if !valid_extensions(self.pending.get(start..end).unwrap_or_default()) {
                            return Err(FramingError::BadChunkExtension);
                        }
                        State::SizeLf { size }
                    }
                    _ if self.pending.len() > MAX_CHUNK_LINE => {
                        return Err(FramingError::BadChunkExtension);
                    }
                    // A bare LF (or any control byte) inside an extension.
                    _ if byte.is_ascii_control() && byte != b'\t' => {
                        return Err(FramingError::BadChunkExtension);
                    }
                    _ => State::Extension { size, start },
                }
            }
            State::SizeLf { size } => {
                if byte != b'\n' {
                    return Err(FramingError::BadChunkLine);
                }
                self.pending.push(byte);
                self.out.extend_from_slice(&self.pending);
                self.pending.clear();
                if size == 0 {
                    State::Trailers
                } else {
                    State::Data(size)
                }
            }
            State::DataCr if byte == b'\r' => State::DataLf,
            State::DataCr => return Err(FramingError::ChunkOverrun),
            State::DataLf if byte == b'\n' => {
                self.out.extend_from_slice(b"\r\n");
                State::Size {
                    value: 0,
                    digits: 0,
                }
            }
            State::DataLf => return Err(FramingError::BadChunkLine),
            State::Trailers => {
                self.pending.push(byte);
                if self.pending.len() > MAX_TRAILERS {
                    return Err(FramingError::BadTrailer);
                }
                if self.pending == b"\r\n" || section_end(&self.pending) {
                    if !valid_trailers(&self.pending) {
                        return Err(FramingError::BadTrailer);
                    }
                    self.out.extend_from_slice(&self.pending);
                    self.pending.clear();
                    State::Head
                } else {
                    State::Trailers
                }
            }
            // Handled in bulk by `step`.
            state @ (State::Head | State::Length(_) | State::Data(_)) => state,
        };
        Ok(())
    }

    fn fail(&mut self, err: FramingError) {
        self.pending.clear();
        if err.in_body() {
            self.end = Some(End::Error(err));
        } else {
            self.out.extend_from_slice(UNPARSABLE);
            self.refused = Some(err);
            self.end = Some(End::Eof);
        }
    }
}

/// Header slots [`check_head`] keeps on the stack: hyper's default limit is 100.
const STACK_FIELDS: usize = 128;

/// A head buffer up to this capacity stays with the connection for its next head.
const KEPT_HEAD_CAPACITY: usize = 1024;

/// Whether a head or trailer section is complete where any parser would end
/// it, bare LFs included (they are refused once it is).
fn section_end(pending: &[u8]) -> bool {
    pending.ends_with(b"\n\n") || pending.ends_with(b"\n\r\n")
}

/// Whether every CR is followed by LF and every LF follows a CR.
fn crlf_only(bytes: &[u8]) -> bool {
    memchr::memchr2_iter(b'\r', b'\n', bytes).all(|i| match bytes.get(i) {
        Some(b'\r') => bytes.get(i + 1) == Some(&b'\n'),
        _ => i > 0 && bytes.get(i - 1) == Some(&b'\r'),
    })
}

/// Judges a complete request head (it ends with its empty line).
fn check_head(head: &[u8], max_headers: usize) -> Verdict {
    if !crlf_only(head) {
        return Verdict::Refuse(FramingError::BareLineEnding);
    }
    // Uninitialised slots, on the stack up to the usual limits: no allocation
    // and no zeroing per request.
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_FIELDS];
    let mut heap = Vec::new();
    let fields = match stack.get_mut(..max_headers) {
        Some(fields) => fields,
        None => {
            heap.resize_with(max_headers, MaybeUninit::uninit);
            heap.as_mut_slice()
        }
    };
    let mut request = httparse::Request::new(&mut []);
    match request.parse_with_uninit_headers(head, fields) {
        Ok(httparse::Status::Complete(len)) if len == head.len() => {}
        Err(httparse::Error::TooManyHeaders) => return Verdict::TooManyHeaders,
        _ => return Verdict::Refuse(FramingError::MalformedHead),
    }
    match check_parsed(head, &request) {
        Ok(framing) => Verdict::Framing(framing),
        Err(err) => Verdict::Refuse(err),
    }
}

fn check_parsed(head: &[u8], request: &httparse::Request<'_, '_>) -> Result<Framing, FramingError> {
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(FramingError::MalformedHead);
    };
    if method == "CONNECT" {
        return Err(FramingError::Connect);
    }
    let named = |name: &'static str| {
        request
            .headers
            .iter()
            .filter(move |field| field.name.eq_ignore_ascii_case(name))
    };
    let mut hosts = named("host");
    let host = match (hosts.next(), hosts.next()) {
        (None, _) => return Err(FramingError::MissingHost),
        (Some(_), Some(_)) => return Err(FramingError::DuplicateHost),
        (Some(host), None) => host.value,
    };
    if !valid_host(host) {
        return Err(FramingError::InvalidHost);
    }
    check_target(method, target, host)?;

    let lengths: Vec<_> = named("content-length").collect();
    let codings: Vec<_> = named("transfer-encoding").collect();
    match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => Ok(Framing::Empty),
        ([_, ..], [_, ..]) => Err(FramingError::LengthAndEncoding),
        ([length], []) => {
            let value = length.value;
            let canonical = !value.is_empty()
                && value.len() <= 19
                && value.iter().all(u8::is_ascii_digit)
                && (value.len() == 1 || value[0] != b'0');
            if !canonical || !tidy(head, length) {
                return Err(FramingError::BadLength);
            }
            let digits = std::str::from_utf8(value).map_err(|_| FramingError::BadLength)?;
            digits
                .parse()
                .map(Framing::Length)
                .map_err(|_| FramingError::BadLength)
        }
        (_, []) => Err(FramingError::DuplicateLength),
        // HTTP/1.0 has no transfer codings (RFC 9112 §6.1).
        ([], [coding]) if version == 1 && coding.value == b"chunked" && tidy(head, coding) => {
            Ok(Framing::Chunked)
        }
        ([], _) => Err(FramingError::BadEncoding),
    }
}

/// Whether a field line is `Name: value` with at most one space before the
/// value and none after it: the shape every client writes, and the only one
/// of a framing header that no parser reads differently.
fn tidy(head: &[u8], field: &httparse::Header<'_>) -> bool {
    let offset = |slice: &[u8]| (slice.as_ptr() as usize).checked_sub(head.as_ptr() as usize);
    let (Some(name_start), Some(value_start)) =
        (offset(field.name.as_bytes()), offset(field.value))
    else {
        return false;
    };
    let colon = name_start + field.name.len();
    let value_end = value_start + field.value.len();
    let gap = head.get(colon + 1..value_start).unwrap_or(b"x");
    head.get(colon) == Some(&b':')
        && (gap.is_empty() || gap == b" ")
        && head.get(value_end) == Some(&b'\r')
}

/// Origin-form (`/path`), `*` for OPTIONS, or an absolute-form whose
/// authority is the `Host` (RFC 9112 §3.2.2 lets the target win; two parsers
/// may not agree which wins, so they must be the same).
fn check_target(method: &str, target: &str, host: &[u8]) -> Result<(), FramingError> {
    if target.starts_with('/') || (target == "*" && method == "OPTIONS") {
        return Ok(());
    }
    let uri: Uri = target.parse().map_err(|_| FramingError::BadTarget)?;
    let scheme_ok = uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("https") || s.eq_ignore_ascii_case("http"));
    match uri.authority() {
        Some(authority) if scheme_ok => {
            if authority.as_str().as_bytes().eq_ignore_ascii_case(host) {
                Ok(())
            } else {
                Err(FramingError::AuthorityMismatch)
            }
        }
        _ => Err(FramingError::BadTarget),
    }
}

/// The bytes of a name or IPv4 address in [`valid_host`], as a table: the
/// check runs on every request head, twice for HTTP/1.1.
const HOST_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_');
        b += 1;
    }
    table
};

/// `uri-host [ ":" port ]` (RFC 9110 §7.2) as DNS names and addresses are
/// written: letters, digits, `-`, `.`, `_`, or a bracketed IPv6 address; a
/// port of 1 to 5 digits up to 65535. No user info, no escapes, no space.
pub fn valid_host(value: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = value.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = std::str::from_utf8(&rest[..close]).ok();
        if literal
            .and_then(|l| l.parse::<std::net::Ipv6Addr>().ok())
            .is_none()
        {
            return false;
        }
        match &rest[close + 1..] {
            [] => (&b""[..], None),
            [b':', port @ ..] => (&b"x"[..], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        }
    };
    let host_ok = value.starts_with(b"[")
        || (!host.is_empty()
            && host.len() <= 253
            && host.iter().all(|&b| HOST_BYTE[usize::from(b)]));
    let port_ok = port.is_none_or(|port| {
        (1..=5).contains(&port.len())
            && port.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(port)
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                .is_some()
    });
    host_ok && port_ok
}

/// `;name[=value]` repeated, without the first `;`: tokens and quoted strings,
/// no whitespace (RFC 9112 §7.1.1 allows BWS; no client sends it, and
/// parsers disagree on it).
fn valid_extensions(mut text: &[u8]) -> bool {
    loop {
        let name = text.iter().take_while(|&&b| is_tchar(b)).count();
        if name == 0 {
            return false;
        }
        text = &text[name..];
        if let Some(rest) = text.strip_prefix(b"=") {
            let value = if let Some(quoted) = rest.strip_prefix(b"\"") {
                match quoted_len(quoted) {
                    Some(len) => len + 1,
                    None => return false,
                }
            } else {
                rest.iter().take_while(|&&b| is_tchar(b)).count()
            };
            if value == 0 {
                return false;
            }
            text = &rest[value..];
        }
        match text {
            [] => return true,
            [b';', rest @ ..] => text = rest,
            _ => return false,
        }
    }
}

/// The length of a quoted string's rest (after its opening quote) through
/// the closing quote (RFC 9110 §5.6.4).
fn quoted_len(text: &[u8]) -> Option<usize> {
    let text_byte = |b: u8| b == b'\t' || b == b' ' || b.is_ascii_graphic() || b >= 0x80;
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        match b {
            b'"' => return Some(i + 1),
            b'\\' if text.get(i + 1).is_some_and(|&next| text_byte(next)) => i += 2,
            b'\\' => return None,
            _ if text_byte(b) => i += 1,
            _ => return None,
        }
    }
    None
}

/// RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A trailer section (field lines, then the empty line): well-formed, and
/// none of the fields that frame, route or authenticate a message.
fn valid_trailers(section: &[u8]) -> bool {
    if !crlf_only(section) {
        return false;
    }
    let mut fields = [httparse::EMPTY_HEADER; 32];
    match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((len, fields))) if len == section.len() => {
            fields.iter().all(|field| {
                ![
                    "content-length",
                    "transfer-encoding",
                    "host",
                    "trailer",
                    "te",
                    "connection",
                    "authorization",
                    "content-type",
                ]
                .iter()
                .any(|name| field.name.eq_ignore_ascii_case(name))
            })
        }
        _ => false,
    }
}

/// The `Host` rules of every HTTP version, on a parsed request: one host,
/// valid, and the same as the target's authority (`:authority` in HTTP/2,
/// an absolute-form target in HTTP/1.1) when both are present.
pub fn check_host(uri: &Uri, headers: &HeaderMap) -> Result<(), FramingError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(FramingError::DuplicateHost),
        (host, None) => host.map(|h| h.as_bytes()),
    };
    let authority = uri.authority().map(|a| a.as_str().as_bytes());
    let name = match (authority, host) {
        (None, None) => return Err(FramingError::MissingHost),
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => {
            return Err(FramingError::AuthorityMismatch);
        }
        (Some(name), _) | (None, Some(name)) => name,
    };
    if valid_host(name) {
        Ok(())
    } else {
        Err(FramingError::InvalidHost)
    }
}

#[cfg(test)]
mod tests;

//! Who the client of a request is: the one place that decides it.
//!
//! The peer address of the connection, unless the peer is one of
//! `proxy.trusted_proxies`: then the client is the rightmost address in its
//! forwarding headers that is not itself a trusted proxy. Only the entries a
//! trusted proxy appended are believed; whatever a client wrote to their left
//! is never read once an untrusted hop is found, so a client cannot name
//! anyone else. A header that cannot be read up to that hop (garbage, an
//! obfuscated or `unknown` node, more than [`MAX_HOPS`] entries) gives the
//! peer address: the proxy, which is never blocked.
//!
//! Both `X-Forwarded-For` and `Forwarded` (RFC 7239) are read. A trusted proxy
//! sets one of them; when a request carries both, the one named by
//! `proxy.forwarded_headers` decides, because the other may be the client's
//! own, passed through untouched.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, header::FORWARDED};

use crate::{addr::Cidr, config::proxy::ForwardedStyle};

/// At most this many list entries are read from the right before giving up.
pub const MAX_HOPS: usize = 32;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The address a request is charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr {
    /// The client: charged for L7 signals, limits and quotas, and logged.
    pub ip: IpAddr,
    /// The trusted proxy that forwarded the request, when `ip` came from its
    /// headers.
    pub forwarded_by: Option<IpAddr>,
}

/// The client of a request from `peer` with `headers` (see the module doc).
pub fn resolve(
    trusted_proxies: &[Cidr],
    style: ForwardedStyle,
    peer: IpAddr,
    headers: &HeaderMap,
) -> ClientAddr {
    let peer = peer.to_canonical();
    let direct = ClientAddr {
        ip: peer,
        forwarded_by: None,
    };
    let trusted = |ip: IpAddr| trusted_proxies.iter().any(|cidr| cidr.contains(ip));
    if !trusted(peer) {
        return direct;
    }
    let (preferred, other) = match style {
        ForwardedStyle::XForwarded => (Chain::XForwardedFor, Chain::Forwarded),
        ForwardedStyle::Forwarded => (Chain::Forwarded, Chain::XForwardedFor),
    };
    let chain = if headers.contains_key(preferred.name()) {
        preferred
    } else if headers.contains_key(other.name()) {
        other
    } else {
        return direct;
    };
    match chain.client(headers, trusted) {
        Some(ip) if ip != peer => ClientAddr {
            ip,
            forwarded_by: Some(peer),
        },
        _ => direct,
    }
}

/// One of the two forwarding headers.
#[derive(Clone, Copy)]
enum Chain {
    XForwardedFor,
    Forwarded,
}

/// An entry that is not an address (or a header that cannot be split).
struct Malformed;

impl Chain {
    fn name(self) -> HeaderName {
        match self {
            Chain::XForwardedFor => X_FORWARDED_FOR,
            Chain::Forwarded => FORWARDED,
        }
    }

    /// The rightmost untrusted address of the chain; the leftmost entry when
    /// every one is trusted; `None` when the chain is malformed before an
    /// untrusted one, empty, or longer than [`MAX_HOPS`].
    fn client(self, headers: &HeaderMap, trusted: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
        let mut hops = 0;
        let mut leftmost = None;
        // Header lines in order form one list: read the last line first.
        for value in headers.get_all(self.name()).iter().rev() {
            let value = value.as_bytes();
            let entries: Box<dyn Iterator<Item = Result<&[u8], Malformed>>> = match self {
                Chain::XForwardedFor => Box::new(value.rsplit(|&b| b == b',').map(Ok)),
                Chain::Forwarded => Box::new(RevElements { rest: Some(value) }),
            };
            for entry in entries {
                let entry = entry.ok()?.trim_ascii();
                if entry.is_empty() {
                    // RFC 9110 §5.6.1: empty list elements are ignored.
                    continue;
                }
                hops += 1;
                if hops > MAX_HOPS {
                    return None;
                }
                let ip = match self {
                    Chain::XForwardedFor => x_forwarded_node(entry),
                    Chain::Forwarded => forwarded_element(entry),
                }
                .ok()?;
                if !trusted(ip) {
                    return Some(ip);
                }
                leftmost = Some(ip);
            }
        }
        leftmost
    }
}

/// An `X-Forwarded-For` entry: an address, optionally bracketed (IPv6) and
/// with a port, as proxies write them.
fn x_forwarded_node(entry: &[u8]) -> Result<IpAddr, Malformed> {
    let text = std::str::from_utf8(entry).map_err(|_| Malformed)?;
    let ip = if let Ok(ip) = text.parse::<IpAddr>() {
        ip
    } else if let Ok(socket) = text.parse::<SocketAddr>() {
        socket.ip()
    } else if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        IpAddr::V6(inner.parse().map_err(|_| Malformed)?)
    } else {
        return Err(Malformed);
    };
    host_address(ip)
}

/// A host can be charged; the unspecified, broadcast and multicast addresses
/// name nobody.
fn host_address(ip: IpAddr) -> Result<IpAddr, Malformed> {
    let ip = ip.to_canonical();
    let nobody = ip.is_unspecified()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if nobody { Err(Malformed) } else { Ok(ip) }
}

/// The `for` node of one `Forwarded` element (`for=…;proto=…;by=…`).
fn forwarded_element(element: &[u8]) -> Result<IpAddr, Malformed> {
    let mut cursor = element;
    let mut node = None;
    loop {
        cursor = cursor.trim_ascii_start();
        let name_len = cursor.iter().take_while(|&&b| is_tchar(b)).count();
        let (name, rest) = cursor.split_at(name_len);
        let rest = rest.strip_prefix(b"=").ok_or(Malformed)?;
        if name.is_empty() {
            return Err(Malformed);
        }
        let (value, rest) = forwarded_value(rest)?;
        if name.eq_ignore_ascii_case(b"for") {
            if node.is_some() {
                // Two `for` in one element: which one is true is anyone's guess.
                return Err(Malformed);
            }
            node = Some(value);
        }
        cursor = rest.trim_ascii_start();
        if cursor.is_empty() {
            break;
        }
        cursor = cursor.strip_prefix(b";").ok_or(Malformed)?;
    }
    forwarded_node(&node.ok_or(Malformed)?)
}

/// A quoted-string (unescaped) or a bare value, and what follows it. Bare
/// values may hold what RFC 7239 wants quoted (`:` and `[]`): proxies write
/// `for=198.18.0.7:4711` too, and the node is checked strictly afterwards.
fn forwarded_value(input: &[u8]) -> Result<(Vec<u8>, &[u8]), Malformed> {
    let Some(mut rest) = input.strip_prefix(b"\"") else {
        let len = input
            .iter()
            .take_while(|&&b| b.is_ascii_graphic() && !matches!(b, b';' | b'"' | b','))
            .count();
        if len == 0 {
            return Err(Malformed);
        }
        return Ok((input[..len].to_vec(), &input[len..]));
    };
    let mut value = Vec::new();
    loop {
        match rest {
            [b'"', tail @ ..] => return Ok((value, tail)),
            [b'\\', escaped, tail @ ..] => {
                value.push(*escaped);
                rest = tail;
            }
            [b, tail @ ..] => {
                value.push(*b);
                rest = tail;
            }
            [] => return Err(Malformed),
        }
    }
}

/// RFC 7239 §6: `IPv4[:port]` or `[IPv6][:port]`; obfuscated identifiers
/// (`_hidden`) and `unknown` name no address.
fn forwarded_node(node: &[u8]) -> Result<IpAddr, Malformed> {
    let text = std::str::from_utf8(node).map_err(|_| Malformed)?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        // A bare IPv6 address, unbracketed: unambiguous without a port.
        return host_address(ip);
    }
    // `after` is empty or `:port`.
    let (host, after) = match text.strip_prefix('[') {
        Some(bracketed) => {
            let (inner, after) = bracketed.split_once(']').ok_or(Malformed)?;
            (IpAddr::V6(inner.parse().map_err(|_| Malformed)?), after)
        }
        None => {
            let (host, after) = text.split_at(text.find(':').unwrap_or(text.len()));
            (IpAddr::V4(host.parse().map_err(|_| Malformed)?), after)
        }
    };
    if !after.is_empty() {
        let port = after.strip_prefix(':').ok_or(Malformed)?;
        if !is_node_port(port) {
            return Err(Malformed);
        }
    }
    host_address(host)
}

/// `node-port = port / obfport` (1–5 digits, or `_` and obfuscation chars).
fn is_node_port(port: &str) -> bool {
    let bytes = port.as_bytes();
    let digits = (1..=5).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_digit);
    let obfuscated = bytes.len() > 1
        && bytes[0] == b'_'
        && bytes[1..]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    digits || obfuscated
}

/// RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The elements of one `Forwarded` line, last first: split at commas outside
/// quoted-strings, scanning from the right so that only the entries up to the
/// one wanted are ever looked at (what a client wrote further left cannot
/// spoil what the proxies appended).
struct RevElements<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for RevElements<'a> {
    type Item = Result<&'a [u8], Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest?;
        let mut i = rest.len();
        while i > 0 {
            i -= 1;
            match rest[i] {
                b',' => {
                    self.rest = Some(&rest[..i]);
                    return Some(Ok(&rest[i + 1..]));
                }
                b'"' => match opening_quote(&rest[..i]) {
                    Some(open) => i = open,
                    None => {
                        self.rest = None;
                        return Some(Err(Malformed));
                    }
                },
                _ => {}
            }
        }
        self.rest = None;
        Some(Ok(rest))
    }
}

/// The position of the unescaped `"` that opens a quoted-string ending right
/// after `before`.
fn opening_quote(before: &[u8]) -> Option<usize> {
    let mut j = before.len();
    while j > 0 {
        j -= 1;
        if before[j] == b'"' {
            let backslashes = before[..j]
                .iter()
                .rev()
                .take_while(|&&b| b == b'\\')
                .count();
            if backslashes % 2 == 0 {
                return Some(j);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;

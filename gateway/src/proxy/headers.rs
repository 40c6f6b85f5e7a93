//! Header rules at the proxy boundary: hop-by-hop headers stay on their hop, the
//! forwarding headers tell the upstream who the client was (and cannot be forged
//! by the client), and every request carries an id for logs and error bodies.
//!
//! Call [`remove_hop_by_hop`] first and set the gateway's own headers after it,
//! so a `Connection` header cannot name them away.

use std::{fmt::Write as _, net::IpAddr};

use http::{
    HeaderMap, HeaderName, HeaderValue,
    header::{CONNECTION, FORWARDED},
};

use smallvec::SmallVec;

use crate::config::proxy::ForwardedStyle;

/// `X-Request-Id`: the client's if it looks like an id, else one we generate.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The forwarding headers an untrusted client's request loses. (Statics, not
/// constants: a constant array of names is built and dropped at every use.)
static FORWARDING: [HeaderName; 5] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_REAL_IP,
    FORWARDED,
];

/// The gateway always terminates TLS.
const PROTO: &str = "https";

/// Removes hop-by-hop headers, including every header a `Connection` header
/// names, from a request before it goes upstream or a response before it goes
/// back to the client.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    for name in &hop_by_hop_names(headers) {
        headers.remove(name);
    }
}

/// The hop-by-hop names present in `headers`, found in one read of the names: an
/// upstream's response usually carries `Connection: keep-alive` and nothing else
/// of the kind, a client's request nothing at all, so only those present pay for
/// a hashed removal.
fn hop_by_hop_names(headers: &HeaderMap) -> SmallVec<[HeaderName; 4]> {
    // The options `Connection` lists beyond the fixed names (`keep-alive` is one).
    let named: SmallVec<[&[u8]; 4]> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|option| {
            !option.is_empty() && !HOP_BY_HOP.iter().any(|n| n.eq_ignore_ascii_case(option))
        })
        .collect();
    headers
        .keys()
        .filter(|name| {
            // Names in a map are lower case; an option may not be.
            let name = name.as_str().as_bytes();
            HOP_BY_HOP.contains(&name)
                || named.iter().any(|option| option.eq_ignore_ascii_case(name))
        })
        .cloned()
        .collect()
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus
/// the older `Keep-Alive`/`Proxy-Connection` that some clients still send.
const HOP_BY_HOP: [&[u8]; 9] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-authenticate",
    b"proxy-authorization",
];

/// Sets the forwarding headers for the upstream.
///
/// `client` is the peer address of the connection, `host` the client's `Host`
/// (or `:authority`), `trusted` whether `client` is a configured trusted proxy.
/// An untrusted client's forwarding headers, of either style and `X-Real-IP`,
/// are removed and replaced, because an upstream that reads them would
/// otherwise believe whatever the client wrote. A trusted proxy's are kept and
/// its address is appended, so the upstream sees the whole chain.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    style: ForwardedStyle,
    client: IpAddr,
    host: Option<&HeaderValue>,
    trusted: bool,
) {
    // A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d.
    let client = client.to_canonical();
    let host = host.filter(|h| !h.is_empty());
    // One read of the names; a hashed removal only when some are there.
    let present = headers.keys().any(|name| FORWARDING.contains(name));
    if present && !trusted {
        for name in &FORWARDING {
            headers.remove(name);
        }
    }
    // None is in the map now (the usual request): nothing to look up or join.
    let absent =
        |headers: &HeaderMap, name: HeaderName| !present || !trusted || !headers.contains_key(name);
    match style {
        ForwardedStyle::XForwarded => {
            let client = IpText::of(client);
            if absent(headers, X_FORWARDED_FOR) {
                headers.insert(X_FORWARDED_FOR, value_or_unknown(client.as_str()));
            } else {
                append_to_list(headers, X_FORWARDED_FOR, client.as_str());
            }
            if absent(headers, X_FORWARDED_PROTO) {
                headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(PROTO));
            }
            if let Some(host) = host
                && absent(headers, X_FORWARDED_HOST)
            {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
        }
        ForwardedStyle::Forwarded => {
            let mut element = String::new();
            write_forwarded_node(&mut element, client);
            if absent(headers, FORWARDED) {
                // Only the first element needs proto and host: they describe
                // the client's own request, which a trusted proxy already did.
                let _ = write!(element, ";proto={PROTO}");
                if let Some(host) = host {
                    element.push_str(";host=");
                    write_forwarded_value(&mut element, host.as_bytes());
                }
            }
            append_to_list(headers, FORWARDED, &element);
        }
    }
}

/// Replaces every `name` header with one value: the existing non-empty values
/// and `item`, joined by ", ".
fn append_to_list(headers: &mut HeaderMap, name: HeaderName, item: &str) {
    let mut values = headers
        .get_all(&name)
        .iter()
        .map(|value| value.as_bytes().trim_ascii())
        .filter(|value| !value.is_empty())
        .peekable();
    // No list yet (the usual request): the item alone, without a buffer.
    let joined: Vec<u8>;
    let list: &[u8] = if values.peek().is_none() {
        item.as_bytes()
    } else {
        let mut buffer = Vec::new();
        for value in values {
            buffer.extend_from_slice(value);
            buffer.extend_from_slice(b", ");
        }
        buffer.extend_from_slice(item.as_bytes());
        joined = buffer;
        &joined
    };
    // Joining valid field values with ", " is a valid field value; should that
    // ever fail, the upstream still gets the address we know.
    let value = HeaderValue::from_bytes(list).unwrap_or_else(|_| value_or_unknown(item));
    headers.insert(name, value);
}

/// `item` as a field value, or `unknown` should it not be one.
fn value_or_unknown(item: &str) -> HeaderValue {
    HeaderValue::from_str(item).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// An address as text, an IPv4 one written without the formatter (which
/// cost more than the rest of the forwarding headers together).
enum IpText {
    V4 { bytes: [u8; 15], len: usize },
    V6(String),
}

impl IpText {
    fn of(ip: IpAddr) -> Self {
        let IpAddr::V4(ip) = ip else {
            return Self::V6(ip.to_string());
        };
        let mut bytes = [0u8; 15];
        let mut len = 0;
        for (index, octet) in ip.octets().into_iter().enumerate() {
            if index > 0 {
                bytes[len] = b'.';
                len += 1;
            }
            if octet >= 100 {
                bytes[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                bytes[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            bytes[len] = b'0' + octet % 10;
            len += 1;
        }
        Self::V4 { bytes, len }
    }

    fn as_str(&self) -> &str {
        match self {
            // Digits and dots only.
            Self::V4 { bytes, len } => std::str::from_utf8(&bytes[..*len]).unwrap_or_default(),
            Self::V6(text) => text,
        }
    }
}

/// RFC 7239 §6: an IPv6 node is bracketed, and then must be quoted.
fn write_forwarded_node(out: &mut String, ip: IpAddr) {
    let _ = match ip {
        IpAddr::V4(ip) => write!(out, "for={ip}"),
        IpAddr::V6(ip) => write!(out, "for=\"[{ip}]\""),
    };
}

/// A `Forwarded` parameter value: a token as it is, anything else as a
/// quoted-string, so a client's `Host` cannot add parameters of its own.
fn write_forwarded_value(out: &mut String, value: &[u8]) {
    if !value.is_empty() && value.iter().all(|&b| is_tchar(b)) {
        out.extend(value.iter().map(|&b| char::from(b)));
        return;
    }
    out.push('"');
    for &b in value {
        if b == b'"' || b == b'\\' {
            out.push('\\');
        }
        // obs-text (0x80..) is allowed in a quoted-string but not in a Rust
        // `String` as raw bytes; percent-style escaping keeps it readable.
        if b.is_ascii() {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out.push('"');
}

/// RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The request id to use: the client's `X-Request-Id` when it is 1–128
/// characters of `[A-Za-z0-9._:-]` (so it can be logged and echoed safely),
/// else a new UUID v4. The caller `insert`s it, replacing any others.
///
/// The random bits come from `fastrand` (per thread, seeded once from the OS):
/// an id must be unique, not secret, and `Uuid::new_v4` costs a `getrandom`
/// system call per request.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(REQUEST_ID)
        && (1..=128).contains(&id.len())
        && id
            .as_bytes()
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return id.clone();
    }
    let mut buffer = uuid::Uuid::encode_buffer();
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut buffer);
    HeaderValue::from_str(id).expect("a hyphenated UUID is ASCII hex and '-'")
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10));
    const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1));
    const XF: ForwardedStyle = ForwardedStyle::XForwarded;
    const FWD: ForwardedStyle = ForwardedStyle::Forwarded;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        headers
    }

    fn all(headers: &HeaderMap, name: &str) -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// `set_forwarded` on a copy of `headers`, with `host` as the client's Host.
    fn forward(
        mut headers: HeaderMap,
        style: ForwardedStyle,
        client: IpAddr,
        host: Option<&'static str>,
        trusted: bool,
    ) -> HeaderMap {
        let host = host.map(HeaderValue::from_static);
        set_forwarded(&mut headers, style, client, host.as_ref(), trusted);
        headers
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "198.18.0.10",
            "255.255.255.255",
            "100.64.1.9",
            "2001:2::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().expect("address");
            assert_eq!(IpText::of(ip).as_str(), ip.to_string());
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("content-type", "text/plain"),
            ("authorization", "Bearer x"),
        ]);
        remove_hop_by_hop(&mut headers);
        // The order of different names carries no meaning (RFC 9110 §5.3).
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-type"]);
    }

    #[test]
    fn headers_named_by_connection_are_removed() {
        let mut headers = map(&[
            ("connection", "close, X-Secret ,x-debug"),
            ("connection", "X-Other"),
            ("x-secret", "1"),
            ("x-debug", "1"),
            ("x-other", "1"),
            ("x-kept", "1"),
        ]);
        remove_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn connection_with_junk_tokens_is_harmless() {
        let mut headers = map(&[("connection", ", ,bad name,"), ("x-kept", "1")]);
        remove_hop_by_hop(&mut headers);
        assert_eq!(all(&headers, "x-kept"), ["1"]);
        assert!(!headers.contains_key(CONNECTION));
    }

    #[test]
    fn untrusted_x_forwarded_are_replaced() {
        let spoofed = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "admin.internal"),
            ("x-real-ip", "127.0.0.1"),
            ("forwarded", "for=127.0.0.1"),
        ]);
        let headers = forward(spoofed, XF, CLIENT, Some("api.example.com"), false);
        assert_eq!(all(&headers, "x-forwarded-for"), ["198.18.0.10"]);
        assert_eq!(all(&headers, "x-forwarded-proto"), ["https"]);
        assert_eq!(all(&headers, "x-forwarded-host"), ["api.example.com"]);
        assert!(!headers.contains_key("x-real-ip"));
        assert!(!headers.contains_key("forwarded"));
    }

    #[test]
    fn untrusted_forwarded_is_replaced() {
        let spoofed = map(&[
            ("forwarded", "for=127.0.0.1;proto=http"),
            ("x-forwarded-for", "127.0.0.1"),
            ("x-real-ip", "127.0.0.1"),
        ]);
        let headers = forward(spoofed, FWD, CLIENT, Some("api.example.com"), false);
        assert_eq!(
            all(&headers, "forwarded"),
            ["for=198.18.0.10;proto=https;host=api.example.com"]
        );
        assert!(!headers.contains_key("x-forwarded-for"));
        assert!(!headers.contains_key("x-real-ip"));
    }

    #[test]
    fn forwarded_quotes_ipv6_and_hosts_with_port() {
        let headers = forward(
            HeaderMap::new(),
            FWD,
            CLIENT6,
            Some("api.example.com:8443"),
            false,
        );
        assert_eq!(
            all(&headers, "forwarded"),
            ["for=\"[2001:2::1]\";proto=https;host=\"api.example.com:8443\""]
        );
    }

    #[test]
    fn forwarded_host_cannot_inject_parameters() {
        let host = "evil\";for=10.0.0.1;x=\"\\";
        let headers = forward(HeaderMap::new(), FWD, CLIENT, Some(host), false);
        assert_eq!(
            all(&headers, "forwarded"),
            ["for=198.18.0.10;proto=https;host=\"evil\\\";for=10.0.0.1;x=\\\"\\\\\""]
        );
    }

    #[test]
    fn ipv4_mapped_client_is_shown_as_ipv4() {
        let mapped = IpAddr::V6(Ipv4Addr::new(198, 18, 0, 10).to_ipv6_mapped());
        let headers = forward(HeaderMap::new(), XF, mapped, None, false);
        assert_eq!(all(&headers, "x-forwarded-for"), ["198.18.0.10"]);
        assert!(!headers.contains_key("x-forwarded-host"));
    }

    #[test]
    fn ipv6_client_in_x_forwarded_for_is_bare() {
        let headers = forward(HeaderMap::new(), XF, CLIENT6, None, false);
        assert_eq!(all(&headers, "x-forwarded-for"), ["2001:2::1"]);
    }

    #[test]
    fn trusted_x_forwarded_chain_is_appended() {
        let chain = map(&[
            ("x-forwarded-for", "203.0.113.7, 10.0.0.2"),
            ("x-forwarded-for", "10.0.0.3"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "www.example.com"),
            ("x-real-ip", "203.0.113.7"),
        ]);
        let headers = forward(chain, XF, CLIENT, Some("api.example.com"), true);
        assert_eq!(
            all(&headers, "x-forwarded-for"),
            ["203.0.113.7, 10.0.0.2, 10.0.0.3, 198.18.0.10"]
        );
        assert_eq!(all(&headers, "x-forwarded-proto"), ["http"]);
        assert_eq!(all(&headers, "x-forwarded-host"), ["www.example.com"]);
        assert_eq!(all(&headers, "x-real-ip"), ["203.0.113.7"]);
    }

    #[test]
    fn trusted_proxy_without_headers_gets_fresh_ones() {
        let blank = map(&[("x-forwarded-for", "  ")]);
        let headers = forward(blank, XF, CLIENT, Some("api.example.com"), true);
        assert_eq!(all(&headers, "x-forwarded-for"), ["198.18.0.10"]);
        assert_eq!(all(&headers, "x-forwarded-proto"), ["https"]);
        assert_eq!(all(&headers, "x-forwarded-host"), ["api.example.com"]);
    }

    #[test]
    fn trusted_forwarded_chain_is_appended() {
        let chain = map(&[(
            "forwarded",
            "for=203.0.113.7;proto=http;host=www.example.com",
        )]);
        let headers = forward(chain, FWD, CLIENT6, Some("api.example.com"), true);
        assert_eq!(
            all(&headers, "forwarded"),
            ["for=203.0.113.7;proto=http;host=www.example.com, for=\"[2001:2::1]\""]
        );
    }

    #[test]
    fn request_id_keeps_a_good_client_id() {
        for id in ["abc-123", "a.b_c:d-e", &"x".repeat(128)] {
            let headers = map(&[("x-request-id", id)]);
            assert_eq!(request_id(&headers), id);
        }
    }

    #[test]
    fn request_id_replaces_a_bad_client_id() {
        for id in ["", "has space", "semi;colon", "ünïcode", &"x".repeat(129)] {
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(id) {
                headers.insert(REQUEST_ID, value);
            }
            let generated = request_id(&headers);
            assert_ne!(generated, id);
            let text = generated.to_str().expect("ascii");
            let parsed = uuid::Uuid::parse_str(text).expect("a UUID");
            assert_eq!(parsed.get_version(), Some(uuid::Version::Random), "{text}");
        }
    }

    #[test]
    fn request_ids_are_unique() {
        let headers = HeaderMap::new();
        assert_ne!(request_id(&headers), request_id(&headers));
    }
}

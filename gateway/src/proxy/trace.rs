//! W3C Trace Context at the gateway's hop: every request reaches the fleet
//! with a valid `traceparent`, so the fleet's traces start at the edge and the
//! access log line can be found from any of them by its trace id.
//!
//! A valid incoming `traceparent` is continued: its trace id and sampled flag
//! are kept, and the parent id becomes a new span id for the gateway's hop.
//! When it is absent, or malformed (or sent twice), a new trace starts and any
//! `tracestate` is dropped with it: a broken context is never forwarded, and
//! vendor state without its trace means nothing. A new trace is marked
//! sampled, so a fleet whose tracers follow their parent's decision (the
//! usual default) keeps recording what enters through the gateway.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The only flag of version 00: the caller may have recorded the trace.
const SAMPLED: u8 = 0x01;

/// The trace context the gateway forwards for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    /// The gateway hop's span id: the upstream's parent.
    span_id: u64,
    flags: u8,
    /// The client sent a valid `traceparent` (its `tracestate` goes on too).
    continued: bool,
}

impl TraceContext {
    /// The context for a request with these headers.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let incoming = match (values.next(), values.next()) {
            (Some(value), None) => parse(value.as_bytes()),
            _ => None,
        };
        match incoming {
            Some((trace_id, flags)) => Self {
                trace_id,
                span_id: new_span_id(),
                flags: flags & SAMPLED,
                continued: true,
            },
            None => Self {
                trace_id: loop {
                    let id = fastrand::u128(..);
                    if id != 0 {
                        break id;
                    }
                },
                span_id: new_span_id(),
                flags: SAMPLED,
                continued: false,
            },
        }
    }

    /// 32 lowercase hex digits, as in `traceparent` and the access log.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// 16 lowercase hex digits: the gateway hop's span.
    pub fn span_id(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// Sets the upstream request's `traceparent`, replacing the client's, and
    /// keeps the client's `tracestate` only when its `traceparent` was valid.
    pub fn apply(&self, headers: &mut HeaderMap) {
        // Written into a buffer on the stack: the header value is the one copy.
        let mut value = [0u8; 55];
        value[..3].copy_from_slice(b"00-");
        write_hex(&mut value[3..35], self.trace_id);
        value[35] = b'-';
        write_hex(&mut value[36..52], u128::from(self.span_id));
        value[52] = b'-';
        write_hex(&mut value[53..55], u128::from(self.flags));
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_bytes(&value).expect("hex digits and '-' are a valid header value"),
        );
        if !self.continued {
            headers.remove(TRACESTATE);
        }
    }
}

/// `value` as lowercase hex, zero-padded to fill `out`.
fn write_hex(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for digit in out.iter_mut().rev() {
        *digit = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

fn new_span_id() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

/// `version-traceid-parentid-flags` (W3C Trace Context §3.2): the trace id
/// and flags of a valid value. A version above 00 is read as 00 when its
/// first four fields have the 00 shape (§4.3, forward compatibility).
fn parse(value: &[u8]) -> Option<(u128, u8)> {
    let version = hex(value.get(0..2)?)?;
    match version {
        0xff => return None,
        0x00 if value.len() != 55 => return None,
        _ if value.len() > 55 && value[55] != b'-' => return None,
        _ => {}
    }
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex(&value[3..35])?;
    let parent_id = hex(&value[36..52])?;
    let flags = hex(&value[53..55])?;
    if trace_id == 0 || parent_id == 0 {
        return None;
    }
    Some((trace_id, u8::try_from(flags).ok()?))
}

/// Lowercase hex only (uppercase is invalid in `traceparent`).
fn hex(digits: &[u8]) -> Option<u128> {
    if digits.len() > 32
        || !digits
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    u128::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    fn forwarded(incoming: &HeaderMap) -> (TraceContext, HeaderMap) {
        let trace = TraceContext::from_headers(incoming);
        let mut out = incoming.clone();
        trace.apply(&mut out);
        (trace, out)
    }

    #[test]
    fn a_valid_traceparent_keeps_its_trace_and_flags_with_a_new_parent() {
        let incoming = headers(&[(&TRACEPARENT, VALID), (&TRACESTATE, "congo=t61rcWkgMzE")]);
        let (trace, out) = forwarded(&incoming);
        let sent = out[&TRACEPARENT].to_str().expect("ascii");
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(sent.ends_with("-01"), "{sent}");
        assert_ne!(
            &sent[36..52],
            "00f067aa0ba902b7",
            "the gateway's hop has its own span"
        );
        assert_eq!(&sent[36..52], trace.span_id());
        assert_eq!(
            parse(sent.as_bytes()).map(|(id, _)| id),
            Some(trace.trace_id)
        );
        assert_eq!(out[&TRACESTATE], "congo=t61rcWkgMzE");
    }

    #[test]
    fn an_unsampled_trace_stays_unsampled() {
        let incoming = headers(&[(&TRACEPARENT, &VALID.replace("-01", "-00"))]);
        let (_, out) = forwarded(&incoming);
        assert!(out[&TRACEPARENT].to_str().expect("ascii").ends_with("-00"));
    }

    #[test]
    fn a_missing_traceparent_starts_a_sampled_trace_and_drops_tracestate() {
        let incoming = headers(&[(&TRACESTATE, "orphan=1")]);
        let (trace, out) = forwarded(&incoming);
        let sent = out[&TRACEPARENT].to_str().expect("ascii");
        assert_eq!(parse(sent.as_bytes()), Some((trace.trace_id, SAMPLED)));
        assert_eq!(sent.len(), 55);
        assert!(!out.contains_key(TRACESTATE));
        let other = TraceContext::from_headers(&incoming);
        assert_ne!(
            trace.trace_id(),
            other.trace_id(),
            "each request its own trace"
        );
    }

    #[test]
    fn malformed_traceparents_are_replaced_never_forwarded() {
        let zero_trace = format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32));
        let zero_parent = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", "0".repeat(16));
        for bad in [
            "",
            "garbage",
            &VALID.to_uppercase(),
            &VALID[..54],
            &format!("{VALID}-"),
            &format!("{VALID}0"),
            &VALID.replacen("00-", "ff-", 1),
            &VALID.replacen('-', "_", 1),
            &VALID.replace("-01", "-0g"),
            &zero_trace,
            &zero_parent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            let incoming = headers(&[(&TRACEPARENT, bad), (&TRACESTATE, "a=1")]);
            let (trace, out) = forwarded(&incoming);
            let sent = out[&TRACEPARENT].to_str().expect("ascii");
            assert_ne!(sent, bad);
            assert_eq!(
                parse(sent.as_bytes()),
                Some((trace.trace_id, SAMPLED)),
                "{bad:?}"
            );
            assert!(!out.contains_key(TRACESTATE), "{bad:?}: tracestate kept");
        }
    }

    #[test]
    fn two_traceparents_are_malformed() {
        let other = VALID.replace("4bf9", "1111");
        let incoming = headers(&[(&TRACEPARENT, VALID), (&TRACEPARENT, &other)]);
        let (trace, out) = forwarded(&incoming);
        assert_ne!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(out.get_all(TRACEPARENT).iter().count(), 1);
    }

    #[test]
    fn a_future_version_is_read_by_its_first_fields_and_sent_as_00() {
        let future = VALID.replacen("00-", "cc-", 1) + "-what-comes-next";
        let (trace, out) = forwarded(&headers(&[(&TRACEPARENT, &future)]));
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(
            out[&TRACEPARENT]
                .to_str()
                .expect("ascii")
                .starts_with("00-4bf9")
        );
        let glued = VALID.replacen("00-", "cc-", 1) + "x";
        let (trace, _) = forwarded(&headers(&[(&TRACEPARENT, &glued)]));
        assert_ne!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}

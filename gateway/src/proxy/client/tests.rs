//! The forwarding-header parser against what clients and broken proxies send.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::*;

const PROXY: &str = "198.18.5.1";
const CLIENT: &str = "198.18.0.50";
const XF: ForwardedStyle = ForwardedStyle::XForwarded;
const FWD: ForwardedStyle = ForwardedStyle::Forwarded;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

fn trusted() -> Vec<Cidr> {
    ["198.18.5.0/24", "2001:2:0:5::/64"]
        .iter()
        .map(|c| c.parse().expect("cidr"))
        .collect()
}

fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_bytes(value).expect("value"),
        );
    }
    headers
}

/// The client of a request from `peer` with `pairs`, in `style`.
fn client_of(style: ForwardedStyle, peer: &str, pairs: &[(&str, &str)]) -> ClientAddr {
    let pairs: Vec<(&str, &[u8])> = pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    resolve(&trusted(), style, ip(peer), &headers(&pairs))
}

fn xff(value: &str) -> IpAddr {
    client_of(XF, PROXY, &[("x-forwarded-for", value)]).ip
}

fn fwd(value: &str) -> IpAddr {
    client_of(FWD, PROXY, &[("forwarded", value)]).ip
}

#[test]
fn an_untrusted_peer_is_its_own_client_whatever_it_sends() {
    for (name, value) in [
        ("x-forwarded-for", "198.18.0.99"),
        ("forwarded", "for=198.18.0.99"),
        ("x-forwarded-for", "198.18.5.7"),
    ] {
        let got = client_of(XF, CLIENT, &[(name, value)]);
        assert_eq!(got.ip, ip(CLIENT), "{name}: {value}");
        assert_eq!(got.forwarded_by, None);
    }
}

#[test]
fn a_trusted_peer_names_its_client() {
    let got = client_of(XF, PROXY, &[("x-forwarded-for", CLIENT)]);
    assert_eq!(
        got,
        ClientAddr {
            ip: ip(CLIENT),
            forwarded_by: Some(ip(PROXY))
        }
    );
    // Without a header the proxy is the client (its own health checks).
    let own = client_of(XF, PROXY, &[]);
    assert_eq!(own.ip, ip(PROXY));
    assert_eq!(own.forwarded_by, None);
    // A trusted peer over a dual-stack socket.
    let mapped = format!("::ffff:{PROXY}");
    assert_eq!(
        client_of(XF, &mapped, &[("x-forwarded-for", CLIENT)]).ip,
        ip(CLIENT)
    );
    assert_eq!(
        client_of(XF, "2001:2:0:5::1", &[("x-forwarded-for", CLIENT)]).ip,
        ip(CLIENT)
    );
}

#[test]
fn the_rightmost_untrusted_hop_wins_over_what_the_client_wrote() {
    // The client wrote .99 and .98; the proxy appended the address it saw.
    assert_eq!(xff("198.18.0.99, 198.18.0.98, 198.18.0.50"), ip(CLIENT));
    // Several trusted proxies in a row are skipped.
    assert_eq!(
        xff("198.18.0.99, 198.18.0.50, 198.18.5.2, 198.18.5.3"),
        ip(CLIENT)
    );
    // A client claiming to be a trusted proxy gains nothing: its real
    // address is still the rightmost untrusted one.
    assert_eq!(xff("198.18.5.9, 198.18.0.50"), ip(CLIENT));
    // Header lines are one list, in order.
    let got = client_of(
        XF,
        PROXY,
        &[
            ("x-forwarded-for", "198.18.0.99"),
            ("x-forwarded-for", "198.18.0.50, 198.18.5.2"),
        ],
    );
    assert_eq!(got.ip, ip(CLIENT));
}

#[test]
fn garbage_left_of_the_client_is_never_read() {
    for prefix in [
        "garbage!!",
        "\"unterminated",
        "unknown",
        "_hidden",
        "999.1.1.1",
        "[::1",
        ";for=198.18.0.99",
    ] {
        assert_eq!(xff(&format!("{prefix}, {CLIENT}")), ip(CLIENT), "{prefix}");
    }
    let bytes = headers(&[("x-forwarded-for", b"\xff\xfe\x80, 198.18.0.50")]);
    assert_eq!(resolve(&trusted(), XF, ip(PROXY), &bytes).ip, ip(CLIENT));
}

#[test]
fn an_unreadable_rightmost_hop_falls_back_to_the_peer() {
    for value in [
        "198.18.0.50, garbage",
        "unknown",
        "_hidden",
        "198.018.0.50",
        "0x7f.0.0.1",
        "3325165618",
        "198.18.0.50 198.18.0.51",
        "198.18.0.50;for=1.2.3.4",
        "\"198.18.0.50\"",
        "2001:2::10%eth0",
        "[2001:2::10",
        "[198.18.0.50]",
        "198.18.0.50:",
        "0.0.0.0",
        "::",
        "255.255.255.255",
        "224.0.0.1",
        "ff02::1",
    ] {
        let got = client_of(XF, PROXY, &[("x-forwarded-for", value)]);
        assert_eq!(got.ip, ip(PROXY), "{value:?}");
        assert_eq!(got.forwarded_by, None, "{value:?}");
    }
}

#[test]
fn addresses_with_brackets_and_ports() {
    assert_eq!(xff("[2001:2::10]:4711"), ip("2001:2::10"));
    assert_eq!(xff("[2001:2::10]"), ip("2001:2::10"));
    assert_eq!(xff("2001:2::10"), ip("2001:2::10"));
    assert_eq!(xff("198.18.0.50:8080"), ip(CLIENT));
    assert_eq!(xff("::ffff:198.18.0.50"), ip(CLIENT));
    assert_eq!(xff(" \t198.18.0.50\t "), ip(CLIENT));
}

#[test]
fn empty_elements_are_skipped() {
    assert_eq!(xff("198.18.0.50, , ,"), ip(CLIENT));
    assert_eq!(xff(" , ,"), ip(PROXY));
    assert_eq!(xff(""), ip(PROXY));
}

#[test]
fn only_trusted_hops_name_the_first_proxy() {
    let got = client_of(XF, PROXY, &[("x-forwarded-for", "198.18.5.9, 198.18.5.2")]);
    assert_eq!(got.ip, ip("198.18.5.9"));
    assert_eq!(got.forwarded_by, Some(ip(PROXY)));
}

#[test]
fn oversized_chains_are_bounded() {
    // The client's 100 KiB of junk never matters: the proxy's entry is read first.
    let junk = "x".repeat(100 * 1024);
    assert_eq!(xff(&format!("{junk}, {CLIENT}")), ip(CLIENT));
    let many = vec!["198.18.0.99"; 10_000].join(", ");
    assert_eq!(xff(&format!("{many}, {CLIENT}")), ip(CLIENT));
    // More than MAX_HOPS trusted hops: give up, charge the peer.
    let trusted_hops = vec!["198.18.5.2"; MAX_HOPS + 1].join(", ");
    assert_eq!(xff(&format!("{CLIENT}, {trusted_hops}")), ip(PROXY));
    let within = vec!["198.18.5.2"; MAX_HOPS - 1].join(", ");
    assert_eq!(xff(&format!("{CLIENT}, {within}")), ip(CLIENT));
}

#[test]
fn forwarded_elements() {
    assert_eq!(fwd("for=198.18.0.50"), ip(CLIENT));
    assert_eq!(fwd("For=198.18.0.50;Proto=https;By=198.18.5.1"), ip(CLIENT));
    assert_eq!(fwd("proto=https; for=198.18.0.50 ;host=a"), ip(CLIENT));
    assert_eq!(fwd("for=\"198.18.0.50:4711\""), ip(CLIENT));
    assert_eq!(fwd("for=\"[2001:2::10]\""), ip("2001:2::10"));
    assert_eq!(fwd("for=\"[2001:2::10]:4711\""), ip("2001:2::10"));
    assert_eq!(fwd("for=\"[2001:2::10]:_port\""), ip("2001:2::10"));
    assert_eq!(fwd("for=[2001:2::10]"), ip("2001:2::10"));
    assert_eq!(fwd("for=2001:2::10"), ip("2001:2::10"));
    assert_eq!(fwd("for=198.18.0.50:4711"), ip(CLIENT));
    assert_eq!(fwd("for=\"\\198.18.0.50\""), ip(CLIENT));
}

#[test]
fn forwarded_chains_and_what_clients_slip_into_them() {
    // Two elements, the proxy's last.
    assert_eq!(fwd("for=198.18.0.99, for=198.18.0.50"), ip(CLIENT));
    assert_eq!(
        fwd("for=198.18.0.99, for=198.18.0.50, for=198.18.5.2"),
        ip(CLIENT)
    );
    // A comma inside a quoted string splits nothing.
    assert_eq!(
        fwd("for=198.18.0.99;host=\"a,b\", for=198.18.0.50"),
        ip(CLIENT)
    );
    assert_eq!(
        fwd("host=\"a, for=198.18.0.99\";for=198.18.0.50"),
        ip(CLIENT)
    );
    // An unterminated quote or an escaped quote in the client's part cannot
    // swallow the element the proxy appended.
    assert_eq!(fwd("for=\"198.18.0.99, for=198.18.0.50"), ip(CLIENT));
    assert_eq!(
        fwd("for=\"x\\\", for=198.18.0.99\", for=198.18.0.50"),
        ip(CLIENT)
    );
    assert_eq!(fwd("for=\"a\\\\\", for=198.18.0.50"), ip(CLIENT));
    // Garbage of any kind left of it.
    assert_eq!(fwd(";;==,\"\",for=, for=198.18.0.50"), ip(CLIENT));
}

#[test]
fn unreadable_forwarded_elements_fall_back_to_the_peer() {
    for value in [
        "for=_hidden",
        "for=\"_hidden:_port\"",
        "for=unknown",
        "for=\"unknown\"",
        "proto=https",
        "for=198.18.0.50;for=198.18.0.99",
        "for=198.18.0.50;for",
        "for",
        "for=",
        "for=\"\"",
        "for=\"198.18.0.50",
        "for=198.18.0.50 198.18.0.99",
        "for=\"198.18.0.50:99999999\"",
        "for=\"198.18.0.50:\"",
        "for=\"[2001:2::10]x\"",
        "for=\"[198.18.0.50]\"",
        "for=198.18.0.50;proto=\"https",
        "=198.18.0.50",
        "for=198.18.0.99, garbage",
        "for=\"x\\\", for=198.18.0.50\"",
    ] {
        let got = client_of(FWD, PROXY, &[("forwarded", value)]);
        assert_eq!(got.ip, ip(PROXY), "{value:?}");
    }
}

#[test]
fn the_configured_header_decides_when_both_are_present() {
    // The proxy appends X-Forwarded-For; the client's own Forwarded passed
    // through untouched must not be believed.
    let both = [
        ("x-forwarded-for", CLIENT),
        ("forwarded", "for=198.18.0.99"),
    ];
    assert_eq!(client_of(XF, PROXY, &both).ip, ip(CLIENT));
    assert_eq!(client_of(FWD, PROXY, &both).ip, ip("198.18.0.99"));
    // Only the other header: it is read.
    assert_eq!(
        client_of(XF, PROXY, &[("forwarded", "for=198.18.0.50")]).ip,
        ip(CLIENT)
    );
    assert_eq!(
        client_of(FWD, PROXY, &[("x-forwarded-for", CLIENT)]).ip,
        ip(CLIENT)
    );
}

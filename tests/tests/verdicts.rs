//! XDP verdicts on crafted frames, through BPF_PROG_TEST_RUN on the real object: the
//! parser, the order of the checks, expiry, rate limits, monitor mode and the
//! counter that explains each packet.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use gateway::{
    addr::Cidr,
    lists::{ListKind, Sweeper},
    state::Source,
    xdp::RateLimit,
};
use gateway_common::{
    consts::{NO_EXPIRY, Reason, cidr_flags, event_kind, monitor, parse_limits},
    maps::{Addr4, BlockEntry, CidrRule, RateEvent, addr4},
};
use gateway_tests::{
    frames::{ETH_P_8021AD, ETH_P_8021Q, Ext, Frame, PRIORITY_TCI, TCP_ACK, TCP_SYN, arp},
    program::{LoadedProgram, XDP_DROP, XDP_PASS},
};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("valid address")
}

/// The IPv4 map key of an address.
fn v4(text: &str) -> Addr4 {
    match ip(text) {
        IpAddr::V4(v4) => addr4(v4.octets()),
        IpAddr::V6(_) => panic!("{text} is not IPv4"),
    }
}

fn cidrs(texts: &[&str]) -> Vec<Cidr> {
    texts
        .iter()
        .map(|t| t.parse().expect("valid CIDR"))
        .collect()
}

fn block(program: &LoadedProgram, entries: &[&str]) {
    program
        .lists()
        .add(ListKind::Block, &cidrs(entries), None, "test", Source::Cli)
        .expect("blocking");
}

fn set_limits(program: &LoadedProgram, limit: RateLimit, monitor_bits: u32) {
    let mut config = program.maps.config().expect("config");
    limit.apply_to(&mut config);
    config.monitor = monitor_bits;
    program.maps.set_config(&config).expect("writing config");
}

/// A packet rate limit alone.
fn packet_limit(pps: u64, burst: u64) -> RateLimit {
    RateLimit {
        pps,
        burst,
        ..RateLimit::default()
    }
}

/// A SYN rate limit alone.
fn syn_limit(syn_pps: u64, syn_burst: u64) -> RateLimit {
    RateLimit {
        syn_pps,
        syn_burst,
        ..RateLimit::default()
    }
}

#[test]
fn well_formed_ipv4_ipv6_and_vlan_frames_pass_and_are_counted() {
    let mut program = LoadedProgram::load();
    for frame in [
        Frame::udp(ip("198.18.0.10")),
        Frame::tcp(ip("198.18.0.10"), TCP_ACK),
        Frame::udp(ip("198.18.0.10")).ipv4_options(&[0x01, 0x01, 0x01, 0x00]),
        Frame::udp(ip("2001:2::10")),
        Frame::udp(ip("198.18.0.10")).vlan(ETH_P_8021Q),
        Frame::tcp(ip("2001:2::10"), TCP_SYN)
            .vlan(ETH_P_8021AD)
            .vlan(ETH_P_8021Q),
    ] {
        program.expect(&frame.build().bytes, XDP_PASS, Reason::Pass, &[]);
    }
}

#[test]
fn non_ip_frames_pass_untouched() {
    let mut program = LoadedProgram::load();
    program.expect(&arp(), XDP_PASS, Reason::PassNonIp, &[]);
    program.expect(
        &tagged_arp(parse_limits::VLAN_TAGS),
        XDP_PASS,
        Reason::PassNonIp,
        &[],
    );
}

/// An ARP request behind `tags` priority tags.
fn tagged_arp(tags: usize) -> Vec<u8> {
    let plain = arp();
    let mut bytes = plain[..12].to_vec();
    for _ in 0..tags {
        bytes.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        bytes.extend_from_slice(&PRIORITY_TCI.to_be_bytes());
    }
    bytes.extend_from_slice(&plain[12..]);
    bytes
}

/// The longest chain RFC 8200 allows in front of the upper layer, in its order.
fn longest_chain(frame: Frame) -> Frame {
    frame
        .ext(Ext::HopByHop)
        .ext(Ext::DestOpts)
        .ext(Ext::Routing)
        .ext(Ext::Fragment {
            offset: 0,
            more: true,
        })
        .ext(Ext::Ah)
        .ext(Ext::DestOpts)
}

/// Every framing the kernel stack undoes before it delivers the IP packet inside, up
/// to the parser's limits, around a TCP segment from `src` with `flags`.
fn encapsulations(src: IpAddr, flags: u8) -> Vec<(String, Frame)> {
    let base = || Frame::tcp(src, flags);
    let mut all = vec![("bare".to_owned(), base())];
    for count in 1..=parse_limits::VLAN_TAGS {
        for (name, tpid) in [("802.1Q", ETH_P_8021Q), ("802.1ad", ETH_P_8021AD)] {
            all.push((
                format!("{count} {name} priority tags"),
                base().priority_tags(tpid, count),
            ));
        }
    }
    all.push((
        "802.1ad + 802.1Q".to_owned(),
        base().vlan(ETH_P_8021AD).vlan(ETH_P_8021Q),
    ));
    all.push((
        "priority tags around 802.1ad + 802.1Q".to_owned(),
        base()
            .priority_tag(ETH_P_8021AD)
            .vlan(ETH_P_8021AD)
            .priority_tag(ETH_P_8021Q)
            .vlan(ETH_P_8021Q)
            .priority_tags(ETH_P_8021Q, parse_limits::VLAN_TAGS - 4),
    ));
    if src.is_ipv6() {
        for ext in [
            Ext::HopByHop,
            Ext::Routing,
            Ext::DestOpts,
            Ext::Ah,
            Ext::Fragment {
                offset: 0,
                more: true,
            },
            Ext::Fragment {
                offset: 0,
                more: false,
            },
        ] {
            all.push((format!("{ext:?} header"), base().ext(ext)));
        }
        all.push((
            "the longest RFC 8200 chain".to_owned(),
            longest_chain(base()),
        ));
        all.push((
            format!("{} extension headers", parse_limits::IPV6_EXT_HEADERS),
            (0..parse_limits::IPV6_EXT_HEADERS).fold(base(), |frame, _| frame.ext(Ext::DestOpts)),
        ));
        all.push((
            "priority tags and a chain".to_owned(),
            base()
                .priority_tags(ETH_P_8021Q, 3)
                .ext(Ext::HopByHop)
                .ext(Ext::Routing)
                .ext(Ext::Ah),
        ));
    } else {
        all.push((
            "first fragment".to_owned(),
            base().payload(4).ipv4_fragment(0, true),
        ));
        all.push((
            "priority tags, options".to_owned(),
            base()
                .priority_tags(ETH_P_8021Q, 3)
                .ipv4_options(&[0x01; 40]),
        ));
    }
    all
}

/// Frames framed deeper than the parser walks, from `src`.
fn too_deep(src: IpAddr) -> Vec<(String, Frame)> {
    let over = parse_limits::VLAN_TAGS + 1;
    let mut all = vec![
        (
            format!("{over} 802.1Q priority tags"),
            Frame::tcp(src, TCP_SYN).priority_tags(ETH_P_8021Q, over),
        ),
        (
            format!("{over} 802.1ad priority tags"),
            Frame::udp(src).priority_tags(ETH_P_8021AD, over),
        ),
        (
            "40 tags".to_owned(),
            Frame::tcp(src, TCP_ACK)
                .vlan(ETH_P_8021AD)
                .vlan(ETH_P_8021Q)
                .priority_tags(ETH_P_8021Q, 38),
        ),
    ];
    if src.is_ipv6() {
        let over = parse_limits::IPV6_EXT_HEADERS + 1;
        for (name, base) in [("SYN", Frame::tcp(src, TCP_SYN)), ("UDP", Frame::udp(src))] {
            all.push((
                format!("{name} behind {over} extension headers"),
                (0..over).fold(base, |frame, index| {
                    frame.ext(if index % 2 == 0 {
                        Ext::DestOpts
                    } else {
                        Ext::Routing
                    })
                }),
            ));
        }
    }
    all
}

/// An exact block and a CIDR block of each family.
const BLOCKED_BOTH_WAYS: [&str; 4] = [
    "198.18.0.66",
    "2001:2::66",
    "198.18.7.0/24",
    "2001:2:0:7::/64",
];

/// A blocked, a CIDR-blocked and an unlisted source of each family, behind every
/// framing the stack undoes: the verdict follows the source, whatever the framing.
#[test]
fn every_encapsulation_the_stack_undoes_is_judged_by_its_source() {
    let mut program = LoadedProgram::load();
    block(&program, &BLOCKED_BOTH_WAYS);
    for (src, action, reason) in [
        ("198.18.0.66", XDP_DROP, Reason::DropBlocked),
        ("2001:2::66", XDP_DROP, Reason::DropBlocked),
        ("198.18.7.9", XDP_DROP, Reason::DropCidr),
        ("2001:2:0:7::9", XDP_DROP, Reason::DropCidr),
        ("198.18.0.10", XDP_PASS, Reason::Pass),
        ("2001:2::10", XDP_PASS, Reason::Pass),
    ] {
        for flags in [TCP_SYN, TCP_ACK] {
            for (name, frame) in encapsulations(ip(src), flags) {
                let name = format!("{src} {name}");
                program.expect_named(&name, &frame.build().bytes, action, reason, &[]);
            }
        }
    }
}

/// Past the bound the parser cannot judge the packet, and the stack would deliver
/// it: dropped as malformed, from any source.
#[test]
fn framing_deeper_than_the_parser_walks_is_dropped_as_malformed() {
    let mut program = LoadedProgram::load();
    block(&program, &["198.18.0.66", "2001:2::66"]);
    for src in ["198.18.0.66", "2001:2::66", "198.18.0.10", "2001:2::10"] {
        for (name, frame) in too_deep(ip(src)) {
            let name = format!("{src} {name}");
            let bytes = frame.build().bytes;
            program.expect_named(&name, &bytes, XDP_DROP, Reason::DropMalformed, &[]);
        }
    }
    program.expect_named(
        "ARP behind too many tags",
        &tagged_arp(parse_limits::VLAN_TAGS + 1),
        XDP_DROP,
        Reason::DropMalformed,
        &[],
    );
}

/// The packet bucket is charged whatever the framing.
#[test]
fn rate_limit_charges_every_encapsulation() {
    let mut program = LoadedProgram::load();
    set_limits(&program, packet_limit(1, 1), 0);
    for src in ["198.18.0.30", "2001:2:0:30::1"] {
        let first = Frame::udp(ip(src)).build().bytes;
        program.expect_named(src, &first, XDP_PASS, Reason::Pass, &[]);
        for (name, frame) in encapsulations(ip(src), TCP_ACK) {
            let name = format!("{src} {name}");
            let bytes = frame.build().bytes;
            program.expect_named(&name, &bytes, XDP_DROP, Reason::DropRateLimit, &[]);
        }
    }
}

/// A SYN behind any framing is charged to the SYN bucket; segments without SYN behind
/// the same framing are not.
#[test]
fn syn_bucket_is_charged_behind_every_encapsulation() {
    let mut program = LoadedProgram::load();
    set_limits(&program, syn_limit(1, 1), 0);
    for family in ["198.18.1.{}", "2001:2:1:{}::1"] {
        let source = |index: usize| ip(&family.replace("{}", &(index + 1).to_string()));
        for (index, (name, frame)) in encapsulations(source(0), TCP_SYN).into_iter().enumerate() {
            let src = source(index);
            let name = format!("{src} {name}");
            let syn = frame.source(src).build().bytes;
            program.expect_named(&name, &syn, XDP_PASS, Reason::Pass, &[]);
            program.expect_named(&name, &syn, XDP_DROP, Reason::DropSynRateLimit, &[]);
            let ack = Frame::tcp(src, TCP_ACK).build().bytes;
            program.expect_named(&name, &ack, XDP_PASS, Reason::Pass, &[]);
        }
    }
}

/// A later fragment carries no TCP header: it is judged by its source (blocklists,
/// packet bucket) and never charged to the SYN bucket. A first fragment too short to
/// hold the TCP header would hide its flags in the next fragment: malformed.
#[test]
fn fragments_are_judged_by_source_and_first_fragments_by_their_flags() {
    let mut program = LoadedProgram::load();
    block(&program, &BLOCKED_BOTH_WAYS);
    let later = |src: &str| {
        let frame = Frame::tcp(ip(src), TCP_SYN);
        if src.contains(':') {
            frame.ext(Ext::Fragment {
                offset: 3,
                more: false,
            })
        } else {
            frame.ipv4_fragment(3, false)
        }
    };
    for (src, reason) in [
        ("198.18.0.66", Reason::DropBlocked),
        ("2001:2::66", Reason::DropBlocked),
        ("198.18.7.9", Reason::DropCidr),
        ("2001:2:0:7::9", Reason::DropCidr),
    ] {
        let bytes = later(src).build().bytes;
        program.expect_named(src, &bytes, XDP_DROP, reason, &[]);
    }

    set_limits(&program, syn_limit(1, 1), 0);
    for src in ["198.18.0.40", "2001:2:0:40::1"] {
        let syn = Frame::tcp(ip(src), TCP_SYN).build().bytes;
        program.expect_named(src, &syn, XDP_PASS, Reason::Pass, &[]);
        let bytes = later(src).build().bytes;
        for _ in 0..3 {
            program.expect_named(src, &bytes, XDP_PASS, Reason::Pass, &[]);
        }
        program.expect_named(src, &syn, XDP_DROP, Reason::DropSynRateLimit, &[]);
    }

    set_limits(&program, packet_limit(1, 1), 0);
    for src in ["198.18.0.41", "2001:2:0:41::1"] {
        let bytes = later(src).build().bytes;
        program.expect_named(src, &bytes, XDP_PASS, Reason::Pass, &[]);
        program.expect_named(src, &bytes, XDP_DROP, Reason::DropRateLimit, &[]);
    }

    // First fragments whose IP length ends 8 bytes into the TCP header: the rest of
    // the header (and the flags) sits in Ethernet padding, an ACK to the eye.
    let mut v4 = Frame::tcp(ip("198.18.0.42"), TCP_ACK)
        .payload(0)
        .ipv4_fragment(0, true)
        .build()
        .bytes;
    v4[16..18].copy_from_slice(&(20u16 + 8).to_be_bytes());
    program.expect_named(
        "IPv4 tiny first fragment",
        &v4,
        XDP_DROP,
        Reason::DropMalformed,
        &[],
    );
    let mut v6 = Frame::tcp(ip("2001:2:0:42::1"), TCP_ACK)
        .payload(0)
        .ext(Ext::Fragment {
            offset: 0,
            more: true,
        })
        .build()
        .bytes;
    v6[18..20].copy_from_slice(&(8u16 + 8).to_be_bytes());
    program.expect_named(
        "IPv6 tiny first fragment",
        &v6,
        XDP_DROP,
        Reason::DropMalformed,
        &[],
    );
}

/// The source address is found behind options and VLAN tags: blocking it drops
/// every variant, so the parser read the right bytes.
#[test]
fn blocked_source_is_found_behind_options_and_vlan_tags() {
    let mut program = LoadedProgram::load();
    block(&program, &["198.18.0.66", "2001:2::66"]);
    for frame in [
        Frame::udp(ip("198.18.0.66")),
        Frame::udp(ip("198.18.0.66")).ipv4_options(&[0x01; 40]),
        Frame::udp(ip("198.18.0.66")).vlan(ETH_P_8021Q),
        Frame::tcp(ip("198.18.0.66"), TCP_SYN)
            .vlan(ETH_P_8021AD)
            .vlan(ETH_P_8021Q),
        Frame::udp(ip("2001:2::66")),
        Frame::tcp(ip("2001:2::66"), TCP_ACK).vlan(ETH_P_8021Q),
    ] {
        program.expect(&frame.build().bytes, XDP_DROP, Reason::DropBlocked, &[]);
    }
    program.expect(
        &Frame::udp(ip("198.18.0.67")).build().bytes,
        XDP_PASS,
        Reason::Pass,
        &[],
    );
}

/// Cut every frame kind at every length that ends inside a header it announces:
/// each is dropped as malformed; from the first complete length on it passes.
#[test]
fn frames_truncated_at_every_header_boundary_are_dropped_as_malformed() {
    let mut program = LoadedProgram::load();
    for frame in [
        Frame::udp(ip("198.18.0.10")),
        Frame::tcp(ip("198.18.0.10"), TCP_SYN).ipv4_options(&[0x01; 8]),
        Frame::tcp(ip("2001:2::10"), TCP_SYN),
        Frame::udp(ip("198.18.0.10")).vlan(ETH_P_8021Q),
        Frame::tcp(ip("2001:2::10"), TCP_ACK)
            .vlan(ETH_P_8021AD)
            .vlan(ETH_P_8021Q),
        Frame::tcp(ip("198.18.0.10"), TCP_SYN).priority_tags(ETH_P_8021Q, parse_limits::VLAN_TAGS),
        longest_chain(Frame::tcp(ip("2001:2::10"), TCP_SYN)),
        Frame::udp(ip("2001:2::10"))
            .ext(Ext::DestOpts)
            .ext(Ext::HopByHop),
        Frame::tcp(ip("2001:2::10"), TCP_SYN).ext(Ext::Fragment {
            offset: 5,
            more: false,
        }),
    ] {
        let built = frame.build();
        let ip_end = built.boundaries[built.boundaries.len() - 2];
        let complete = if built.l4_required {
            built.boundaries[built.boundaries.len() - 1]
        } else {
            ip_end
        };
        // The kernel refuses to test-run frames shorter than an Ethernet header
        // (a NIC never delivers one), so lengths start at 14.
        for len in 14..=built.bytes.len() {
            let cut = &built.bytes[..len];
            if len < complete {
                program.expect(cut, XDP_DROP, Reason::DropMalformed, &[]);
            } else {
                program.expect(cut, XDP_PASS, Reason::Pass, &[]);
            }
        }
    }
}

#[test]
fn inconsistent_ip_headers_are_dropped_as_malformed() {
    let mut program = LoadedProgram::load();
    let mut bytes = Frame::udp(ip("198.18.0.10")).build().bytes;
    bytes[14] = 0x44; // IHL 4 (16 bytes) is shorter than the fixed header.
    program.expect(&bytes, XDP_DROP, Reason::DropMalformed, &[]);
    bytes[14] = 0x65; // IPv6 version under an IPv4 ethertype.
    program.expect(&bytes, XDP_DROP, Reason::DropMalformed, &[]);
    let mut bytes = Frame::udp(ip("198.18.0.10")).build().bytes;
    bytes[14] = 0x4f; // IHL 15 announces 60 bytes of header the frame does not have.
    bytes.truncate(14 + 40);
    program.expect(&bytes, XDP_DROP, Reason::DropMalformed, &[]);
}

#[test]
fn allowlist_wins_over_both_blocklists_and_the_rate_limit() {
    let mut program = LoadedProgram::load();
    program
        .lists()
        .add(
            ListKind::Allow,
            &cidrs(&["198.18.1.0/24", "2001:2:0:1::/64"]),
            None,
            "ops",
            Source::Cli,
        )
        .expect("allowlisting");
    block(&program, &["198.18.1.5", "198.18.0.0/16", "2001:2:0:1::5"]);
    set_limits(&program, packet_limit(1, 1), 0);
    for _ in 0..5 {
        program.expect(
            &Frame::udp(ip("198.18.1.5")).build().bytes,
            XDP_PASS,
            Reason::PassAllowlist,
            &[],
        );
        program.expect(
            &Frame::udp(ip("2001:2:0:1::5")).build().bytes,
            XDP_PASS,
            Reason::PassAllowlist,
            &[],
        );
    }
    program.expect(
        &Frame::udp(ip("198.18.2.5")).build().bytes,
        XDP_DROP,
        Reason::DropCidr,
        &[],
    );
}

fn allow(program: &LoadedProgram, entries: &[&str], ttl: Option<Duration>) {
    program
        .lists()
        .add(ListKind::Allow, &cidrs(entries), ttl, "test", Source::Cli)
        .expect("allowlisting");
}

/// Both CIDR lists share one trie, whose entries carry what the shorter listed
/// prefixes around them decide: the allowlist still wins whatever the prefix
/// lengths and whichever was added first, and taking a prefix off a list re-derives
/// everything inside it.
#[test]
fn nested_prefixes_keep_the_allowlist_first_whatever_their_lengths() {
    let mut program = LoadedProgram::load();
    block(&program, &["198.18.0.0/16", "2001:2:0:5::/64"]);
    allow(
        &program,
        &["198.18.1.0/24", "198.18.2.7", "2001:2::/48"],
        None,
    );
    // A block inside the allow inside the block, and an exact block inside the allow.
    block(
        &program,
        &["198.18.1.128/25", "198.18.1.200", "198.18.3.0/24"],
    );
    allow(&program, &["198.18.3.0/24"], None);
    passes(&mut program, "198.18.1.5", Reason::PassAllowlist);
    passes(&mut program, "198.18.1.130", Reason::PassAllowlist);
    passes(&mut program, "198.18.1.200", Reason::PassAllowlist);
    passes(&mut program, "198.18.2.7", Reason::PassAllowlist);
    passes(&mut program, "198.18.3.3", Reason::PassAllowlist);
    passes(&mut program, "2001:2:0:5::1", Reason::PassAllowlist);
    drops(&mut program, "198.18.2.8", Reason::DropCidr);
    drops(&mut program, "198.18.4.1", Reason::DropCidr);
    passes(&mut program, "198.19.0.1", Reason::Pass);

    // Off the allowlist: what is inside falls back to the blocks around it.
    program
        .lists()
        .remove(ListKind::Allow, &cidrs(&["198.18.1.0/24", "2001:2::/48"]))
        .expect("unallowing");
    drops(&mut program, "198.18.1.5", Reason::DropCidr);
    drops(&mut program, "198.18.1.130", Reason::DropCidr);
    drops(&mut program, "2001:2:0:5::1", Reason::DropCidr);
    passes(&mut program, "2001:2:0:6::1", Reason::Pass);
    passes(&mut program, "198.18.2.7", Reason::PassAllowlist);
    // Off the blocklist: the exact block inside is all that is left there.
    program
        .lists()
        .remove(
            ListKind::Block,
            &cidrs(&["198.18.0.0/16", "198.18.1.128/25"]),
        )
        .expect("unblocking");
    drops(&mut program, "198.18.1.200", Reason::DropBlocked);
    passes(&mut program, "198.18.1.5", Reason::Pass);
    // A prefix on both lists passes until it leaves the allowlist.
    passes(&mut program, "198.18.3.3", Reason::PassAllowlist);
    program
        .lists()
        .remove(ListKind::Allow, &cidrs(&["198.18.3.0/24"]))
        .expect("unallowing");
    drops(&mut program, "198.18.3.3", Reason::DropCidr);

    // Each list lists exactly its own entries, whatever the trie shares.
    let listed = |kind| -> Vec<String> {
        program
            .lists()
            .list(kind)
            .expect("listing")
            .iter()
            .map(|entry| entry.cidr.to_string())
            .collect()
    };
    assert_eq!(listed(ListKind::Allow), ["198.18.2.7"]);
    assert_eq!(
        listed(ListKind::Block),
        ["198.18.1.200", "198.18.3.0/24", "2001:2:0:5::/64"]
    );
}

/// Expiries are per rule: a longer prefix that expires never hides a shorter one that
/// has not, in the kernel itself, before the daemon's sweep comes by.
#[test]
fn a_restart_rederives_what_a_killed_writer_left_half_written() {
    let mut program = LoadedProgram::load();
    leave_half_written(&mut program);
    program.lists().restore().expect("restore");
    passes(&mut program, "198.18.1.5", Reason::PassAllowlist);
    drops(&mut program, "198.18.2.5", Reason::DropCidr);
}

#[test]
fn a_running_sweeper_rederives_what_a_killed_writer_left_half_written() {
    let mut program = LoadedProgram::load();
    let (mut sweeper, _) = Sweeper::start(&program.lists()).expect("sweeper");
    leave_half_written(&mut program);
    // The sweeper's periodic reconcile (every 5 s at the least) finds it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let frame = Frame::udp(ip("198.18.1.5")).build().bytes;
    while program.run(&frame) == XDP_DROP {
        assert!(
            Instant::now() < deadline,
            "the sweeper never re-derived the stale trie value"
        );
        sweeper.sweep(&program.lists()).expect("sweep");
        std::thread::sleep(Duration::from_millis(200));
    }
    passes(&mut program, "198.18.1.5", Reason::PassAllowlist);
    drops(&mut program, "198.18.2.5", Reason::DropCidr);
}

/// Leaves the trie as a writer killed between its batches could: an allowlisted /24
/// inside a blocked /16 whose value was derived without its own allow rule.
fn leave_half_written(program: &mut LoadedProgram) {
    block(program, &["198.18.0.0/16"]);
    allow(program, &["198.18.1.0/24"], None);
    let mut trie = program.maps.cidr_v4().expect("trie");
    let (len, addr, mut stale) = trie
        .entries()
        .expect("entries")
        .into_iter()
        .find(|(len, addr, _)| *len == 24 && *addr == v4("198.18.1.0"))
        .expect("the /24");
    stale.flags &= !cidr_flags::ALLOW;
    trie.insert(len, addr, &stale).expect("stale value");
    drops(program, "198.18.1.5", Reason::DropCidr);
}

#[test]
fn an_expired_prefix_hands_over_to_the_live_ones_around_it() {
    let mut program = LoadedProgram::load();
    let ttl = Some(Duration::from_millis(300));
    // A longer block that expires inside a permanent one.
    block(&program, &["198.18.7.0/24"]);
    program
        .lists()
        .add(
            ListKind::Block,
            &cidrs(&["198.18.7.0/25"]),
            ttl,
            "t",
            Source::Cli,
        )
        .expect("blocking with a TTL");
    // A shorter allow that expires around a permanent block.
    block(&program, &["198.18.8.0/24"]);
    allow(&program, &["198.18.8.0/23"], ttl);
    // A longer allow that expires inside a permanent block.
    block(&program, &["198.18.10.0/23"]);
    allow(&program, &["198.18.10.0/24"], ttl);
    // A shorter allow that outlives the longer block inside it.
    allow(&program, &["198.18.12.0/23"], None);
    program
        .lists()
        .add(
            ListKind::Block,
            &cidrs(&["198.18.12.0/24"]),
            ttl,
            "t",
            Source::Cli,
        )
        .expect("blocking with a TTL");
    drops(&mut program, "198.18.7.1", Reason::DropCidr);
    passes(&mut program, "198.18.8.1", Reason::PassAllowlist);
    passes(&mut program, "198.18.10.1", Reason::PassAllowlist);
    passes(&mut program, "198.18.12.1", Reason::PassAllowlist);
    std::thread::sleep(Duration::from_millis(400));
    drops(&mut program, "198.18.7.1", Reason::DropCidr);
    drops(&mut program, "198.18.8.1", Reason::DropCidr);
    drops(&mut program, "198.18.10.1", Reason::DropCidr);
    passes(&mut program, "198.18.12.1", Reason::PassAllowlist);
    // The sweep removes the expired rules and changes no verdict.
    let expiring = [
        (ListKind::Block, "198.18.7.0/25"),
        (ListKind::Allow, "198.18.8.0/23"),
        (ListKind::Allow, "198.18.10.0/24"),
        (ListKind::Block, "198.18.12.0/24"),
    ];
    let (mut sweeper, _) = Sweeper::start(&program.lists()).expect("sweeper");
    let listed = |sweeper: &Sweeper| {
        expiring
            .iter()
            .any(|(kind, cidr)| sweeper.contains(*kind, &cidrs(&[cidr])[0]))
    };
    for _ in 0..30 {
        sweeper.sweep(&program.lists()).expect("sweep");
        if !listed(&sweeper) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!listed(&sweeper), "the sweep removed every expired rule");
    drops(&mut program, "198.18.7.1", Reason::DropCidr);
    drops(&mut program, "198.18.8.1", Reason::DropCidr);
    drops(&mut program, "198.18.10.1", Reason::DropCidr);
    passes(&mut program, "198.18.12.1", Reason::PassAllowlist);
}

#[test]
fn cidr_and_exact_matches_drop_only_what_they_cover() {
    let mut program = LoadedProgram::load();
    block(
        &program,
        &["198.18.4.0/22", "198.18.0.9", "2001:2:0:7::/64"],
    );
    program.expect(
        &Frame::udp(ip("198.18.5.9")).build().bytes,
        XDP_DROP,
        Reason::DropCidr,
        &[],
    );
    program.expect(
        &Frame::udp(ip("198.18.8.1")).build().bytes,
        XDP_PASS,
        Reason::Pass,
        &[],
    );
    program.expect(
        &Frame::udp(ip("198.18.0.9")).build().bytes,
        XDP_DROP,
        Reason::DropBlocked,
        &[],
    );
    program.expect(
        &Frame::udp(ip("198.18.0.10")).build().bytes,
        XDP_PASS,
        Reason::Pass,
        &[],
    );
    program.expect(
        &Frame::udp(ip("2001:2:0:7::99")).build().bytes,
        XDP_DROP,
        Reason::DropCidr,
        &[],
    );
    program.expect(
        &Frame::udp(ip("2001:2:0:8::99")).build().bytes,
        XDP_PASS,
        Reason::Pass,
        &[],
    );
    let hits = program
        .maps
        .blocklist_v4()
        .expect("blocklist")
        .get(&v4("198.18.0.9"))
        .expect("lookup")
        .expect("entry present");
    assert_eq!(hits.hits, 1, "the dynamic entry counts its drops");
}

#[test]
fn expired_entries_no_longer_drop() {
    let mut program = LoadedProgram::load();
    // The program reads the coarse clock, up to a tick (1-10 ms) behind this one:
    // "expired" is a tick and more in the past.
    let now = gateway::clock::kernel_ns();
    let past = now - 20_000_000;
    let mut blocklist = program.maps.blocklist_v4().expect("blocklist");
    for (addr, expires_at_ns) in [
        ("198.18.0.20", past),
        ("198.18.0.21", now + 60_000_000_000),
        ("198.18.0.22", NO_EXPIRY),
    ] {
        blocklist
            .insert(
                &v4(addr),
                &BlockEntry {
                    expires_at_ns,
                    ..BlockEntry::default()
                },
            )
            .expect("insert");
    }
    program
        .maps
        .cidr_v4()
        .expect("trie")
        .insert(
            24,
            v4("198.18.9.0"),
            &CidrRule {
                block_expires_at_ns: past,
                own_block_expires_at_ns: past,
                flags: cidr_flags::BLOCK | cidr_flags::BLOCKLISTED,
                ..CidrRule::default()
            },
        )
        .expect("insert");
    program.expect(
        &Frame::udp(ip("198.18.0.20")).build().bytes,
        XDP_PASS,
        Reason::Pass,
        &[],
    );
    program.expect(
        &Frame::udp(ip("198.18.0.21")).build().bytes,
        XDP_DROP,
        Reason::DropBlocked,
        &[],
    );
    program.expect(
        &Frame::udp(ip("198.18.0.22")).build().bytes,
        XDP_DROP,
        Reason::DropBlocked,
        &[],
    );
    program.expect(
        &Frame::udp(ip("198.18.9.1")).build().bytes,
        XDP_PASS,
        Reason::Pass,
        &[],
    );

    // Through the list API with a real TTL, and the daemon's sweeper.
    let (mut sweeper, _) = Sweeper::start(&program.lists()).expect("sweeper");
    program
        .lists()
        .add(
            ListKind::Block,
            &cidrs(&["198.18.0.23"]),
            Some(Duration::from_millis(300)),
            "ttl",
            Source::Cli,
        )
        .expect("block with ttl");
    program.expect(
        &Frame::udp(ip("198.18.0.23")).build().bytes,
        XDP_DROP,
        Reason::DropBlocked,
        &[],
    );
    std::thread::sleep(Duration::from_millis(400));
    program.expect(
        &Frame::udp(ip("198.18.0.23")).build().bytes,
        XDP_PASS,
        Reason::Pass,
        &[],
    );
    // The state keeps whole seconds: the sweep removes the entry within one.
    let mut swept = Vec::new();
    for _ in 0..30 {
        swept.extend(sweeper.sweep(&program.lists()).expect("sweep").expired);
        if !swept.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        swept
            .iter()
            .any(|(_, cidr)| cidr.to_string() == "198.18.0.23"),
        "{swept:?}"
    );
    assert!(
        !sweeper.contains(ListKind::Block, &cidrs(&["198.18.0.23"])[0]),
        "the sweeper forgot it"
    );
}

#[test]
fn exhausted_burst_drops_and_reports_once() {
    let mut program = LoadedProgram::load();
    set_limits(&program, packet_limit(1, 5), 0);
    let flood = Frame::udp(ip("198.18.0.30")).build().bytes;
    for _ in 0..5 {
        program.expect(&flood, XDP_PASS, Reason::Pass, &[]);
    }
    for _ in 0..3 {
        program.expect(&flood, XDP_DROP, Reason::DropRateLimit, &[]);
    }
    // Another source has its own bucket.
    program.expect(
        &Frame::udp(ip("198.18.0.31")).build().bytes,
        XDP_PASS,
        Reason::Pass,
        &[],
    );

    let bucket = program
        .maps
        .rate_limit_v4()
        .expect("rate map")
        .get(&v4("198.18.0.30"))
        .expect("lookup")
        .expect("bucket");
    assert_eq!((bucket.passed, bucket.dropped), (5, 3));

    let mut events = program.maps.events().expect("ring buffer");
    let mut seen = Vec::new();
    while let Some(item) = events.next() {
        assert_eq!(item.len(), size_of::<RateEvent>());
        // SAFETY: length checked; RateEvent is plain old data.
        seen.push(unsafe { item.as_ptr().cast::<RateEvent>().read_unaligned() });
    }
    assert_eq!(
        seen.len(),
        1,
        "three drops within a second make one event: {seen:?}"
    );
    assert_eq!(seen[0].addr, gateway::addr::ip_to_addr(ip("198.18.0.30")));
    assert_eq!(seen[0].kind, event_kind::RATE_LIMIT);
}

/// The rate limiter's clock is the coarse time cached per CPU: a cache that stopped
/// following the kernel's time would never hand an exhausted source a token again.
#[test]
fn an_exhausted_source_gets_a_token_back_as_time_passes() {
    let mut program = LoadedProgram::load();
    set_limits(&program, packet_limit(1, 1), 0);
    let frame = Frame::udp(ip("198.18.0.33")).build().bytes;
    program.expect(&frame, XDP_PASS, Reason::Pass, &[]);
    program.expect(&frame, XDP_DROP, Reason::DropRateLimit, &[]);
    // One token a second: within five, one packet must pass again.
    let passed = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        program.run(&frame) == XDP_PASS
    });
    assert!(passed, "no token came back within five seconds");
}

#[test]
fn syn_bucket_limits_new_connections_only() {
    let mut program = LoadedProgram::load();
    set_limits(
        &program,
        RateLimit {
            pps: 0,
            burst: 0,
            syn_pps: 1,
            syn_burst: 2,
        },
        0,
    );
    let syn = Frame::tcp(ip("198.18.0.40"), TCP_SYN).build().bytes;
    let ack = Frame::tcp(ip("198.18.0.40"), TCP_ACK).build().bytes;
    program.expect(&syn, XDP_PASS, Reason::Pass, &[]);
    program.expect(&syn, XDP_PASS, Reason::Pass, &[]);
    program.expect(&syn, XDP_DROP, Reason::DropSynRateLimit, &[]);
    for _ in 0..10 {
        program.expect(&ack, XDP_PASS, Reason::Pass, &[]);
    }
}

#[test]
fn ipv6_sources_share_a_bucket_per_prefix() {
    let mut program = LoadedProgram::load();
    set_limits(&program, packet_limit(1, 3), 0);
    for host in ["2001:2:0:1::1", "2001:2:0:1::2", "2001:2:0:1:ffff::3"] {
        program.expect(
            &Frame::udp(ip(host)).build().bytes,
            XDP_PASS,
            Reason::Pass,
            &[],
        );
    }
    program.expect(
        &Frame::udp(ip("2001:2:0:1::4")).build().bytes,
        XDP_DROP,
        Reason::DropRateLimit,
        &[],
    );
    program.expect(
        &Frame::udp(ip("2001:2:0:2::1")).build().bytes,
        XDP_PASS,
        Reason::Pass,
        &[],
    );
}

/// An IPv4-mapped IPv6 source is an IPv6 source to the rate limiter, masked like any
/// other: under a /64 mask every mapped source shares the `::/64` bucket (it cannot
/// dodge its limit by rotating through IPv4 addresses); under a mask that keeps the
/// whole mapped prefix it shares its IPv4 address's bucket, so sending the same
/// flood both ways does not double its allowance.
#[test]
fn ipv4_mapped_sources_are_limited_by_their_masked_key() {
    let mut program = LoadedProgram::load();
    set_limits(&program, packet_limit(1, 2), 0);
    let udp = |source: &str| Frame::udp(ip(source)).build().bytes;
    program.expect(&udp("::ffff:198.18.0.60"), XDP_PASS, Reason::Pass, &[]);
    program.expect(&udp("::ffff:198.18.0.61"), XDP_PASS, Reason::Pass, &[]);
    program.expect(
        &udp("::ffff:198.18.0.62"),
        XDP_DROP,
        Reason::DropRateLimit,
        &[],
    );
    // The IPv4 addresses themselves have buckets of their own.
    program.expect(&udp("198.18.0.62"), XDP_PASS, Reason::Pass, &[]);
    let shown = |program: &LoadedProgram, name: &str| {
        let all = program.maps.top_rate_limited(10).expect("buckets");
        all.iter()
            .find(|(shown, _)| shown == name)
            .map(|(_, bucket)| (bucket.passed, bucket.dropped))
            .unwrap_or_else(|| panic!("no bucket {name} in {all:?}"))
    };
    assert_eq!(shown(&program, "::/64"), (2, 1));

    let mut config = program.maps.config().expect("config");
    config.ipv6_rate_mask = gateway::addr::ipv6_mask(128);
    program.maps.set_config(&config).expect("config");
    program.expect(&udp("198.18.1.70"), XDP_PASS, Reason::Pass, &[]);
    program.expect(&udp("::ffff:198.18.1.70"), XDP_PASS, Reason::Pass, &[]);
    program.expect(&udp("198.18.1.70"), XDP_DROP, Reason::DropRateLimit, &[]);
    program.expect(
        &udp("::ffff:198.18.1.70"),
        XDP_DROP,
        Reason::DropRateLimit,
        &[],
    );
    assert_eq!(shown(&program, "198.18.1.70"), (2, 2));
}

#[test]
fn monitor_mode_passes_but_counts_what_it_would_drop() {
    let mut program = LoadedProgram::load();
    block(&program, &["198.18.0.50", "198.18.6.0/24"]);
    set_limits(
        &program,
        RateLimit {
            pps: 1,
            burst: 1,
            ..RateLimit::default()
        },
        monitor::CIDR | monitor::BLOCKLIST | monitor::RATE_LIMIT,
    );
    program.expect(
        &Frame::udp(ip("198.18.0.50")).build().bytes,
        XDP_PASS,
        Reason::Pass,
        &[Reason::MonitorBlocked],
    );
    program.expect(
        &Frame::udp(ip("198.18.0.50")).build().bytes,
        XDP_PASS,
        Reason::Pass,
        &[Reason::MonitorBlocked, Reason::MonitorRateLimit],
    );
    program.expect(
        &Frame::udp(ip("198.18.6.1")).build().bytes,
        XDP_PASS,
        Reason::Pass,
        &[Reason::MonitorCidr],
    );

    // Only the CIDR class in monitor mode: the exact block is enforced again.
    set_limits(&program, RateLimit::default(), monitor::CIDR);
    program.expect(
        &Frame::udp(ip("198.18.0.50")).build().bytes,
        XDP_DROP,
        Reason::DropBlocked,
        &[],
    );
    program.expect(
        &Frame::udp(ip("198.18.6.1")).build().bytes,
        XDP_PASS,
        Reason::Pass,
        &[Reason::MonitorCidr],
    );
}

fn drops(program: &mut LoadedProgram, source: &str, reason: Reason) {
    let frame = Frame::udp(ip(source)).build().bytes;
    program.expect_named(source, &frame, XDP_DROP, reason, &[]);
}

fn passes(program: &mut LoadedProgram, source: &str, reason: Reason) {
    let frame = Frame::udp(ip(source)).build().bytes;
    program.expect_named(source, &frame, XDP_PASS, reason, &[]);
}

/// The program skips a list map that userspace knows is empty (`FILLED`): emptying a
/// list, refilling it, an add rolled back for lack of room, and entries another
/// tool put straight into the kernel must never leave an entry unenforced.
#[test]
fn emptied_lists_are_skipped_and_every_refilled_one_enforced() {
    let mut program = LoadedProgram::load();
    let blocked = cidrs(&["198.18.0.9", "198.18.5.0/24", "2001:2::9"]);
    let allowed = cidrs(&["198.18.6.0/24"]);
    for round in 0..2 {
        program
            .lists()
            .add(ListKind::Block, &blocked, None, "test", Source::Cli)
            .expect("blocking");
        program
            .lists()
            .add(ListKind::Allow, &allowed, None, "test", Source::Cli)
            .expect("allowing");
        drops(&mut program, "198.18.0.9", Reason::DropBlocked);
        drops(&mut program, "2001:2::9", Reason::DropBlocked);
        drops(&mut program, "198.18.5.1", Reason::DropCidr);
        passes(&mut program, "198.18.6.1", Reason::PassAllowlist);
        if round == 0 {
            program
                .lists()
                .remove(ListKind::Block, &blocked)
                .expect("unblocking");
            program
                .lists()
                .remove(ListKind::Allow, &allowed)
                .expect("unallowing");
        } else {
            program.lists().flush(ListKind::Block).expect("flushing");
            program.lists().flush(ListKind::Allow).expect("flushing");
        }
        for source in ["198.18.0.9", "2001:2::9", "198.18.5.1", "198.18.6.1"] {
            passes(&mut program, source, Reason::Pass);
        }
    }

    // An add too big for the blocklist (1,024 entries here) is rolled back whole,
    // leaving the map empty; the next add is enforced.
    let too_many: Vec<Cidr> = (0..1100u32)
        .map(|n| Cidr::host(IpAddr::from([198, 19, (n >> 8) as u8, n as u8])))
        .collect();
    program
        .lists()
        .add(ListKind::Block, &too_many, None, "test", Source::Cli)
        .expect_err("more than the map holds");
    passes(&mut program, "198.19.0.1", Reason::Pass);
    block(&program, &["198.18.0.9"]);
    drops(&mut program, "198.18.0.9", Reason::DropBlocked);
    program
        .lists()
        .remove(ListKind::Block, &cidrs(&["198.18.0.9"]))
        .expect("unblocking");

    // Another tool (bpftool) inserts behind the lists' back: the daemon's periodic
    // reconcile refreshes the flags, and from then on the entry counts.
    program
        .maps
        .blocklist_v4()
        .expect("blocklist")
        .map
        .insert(&v4("198.18.0.44"), &BlockEntry::default(), 0)
        .expect("raw insert");
    program.maps.refresh_filled().expect("refreshing the flags");
    drops(&mut program, "198.18.0.44", Reason::DropBlocked);
}

/// IPv4 sources and IPv4-mapped IPv6 sources (`::ffff:a.b.c.d`, which no honest
/// host sends) are one source: both are looked up in the IPv4 maps, so a block of
/// the IPv4 address covers both.
#[test]
fn ipv4_and_ipv4_mapped_ipv6_sources_are_the_same_source() {
    let mut program = LoadedProgram::load();
    block(&program, &["198.18.0.9", "198.18.5.0/24"]);
    for source in ["198.18.0.9", "::ffff:198.18.0.9"] {
        drops(&mut program, source, Reason::DropBlocked);
    }
    for source in ["198.18.5.1", "::ffff:198.18.5.1"] {
        drops(&mut program, source, Reason::DropCidr);
    }
    for source in ["198.18.0.10", "::ffff:198.18.0.10", "2001:2::9"] {
        passes(&mut program, source, Reason::Pass);
    }
    // Written as IPv6, a mapped entry is still the IPv4 one.
    block(&program, &["::ffff:198.18.0.10"]);
    for source in ["198.18.0.10", "::ffff:198.18.0.10"] {
        drops(&mut program, source, Reason::DropBlocked);
    }
    // An IPv6 prefix names IPv6 sources only, even one whose range holds
    // ::ffff:0:0/96: IPv4 sources live in their own maps.
    block(&program, &["::/64"]);
    for source in ["198.18.0.11", "::ffff:198.18.0.11"] {
        passes(&mut program, source, Reason::Pass);
    }
}

/// A load that fails (here: one map pinned at another size than asked for) takes back
/// the maps it pinned itself and leaves the others alone, so a refused load never
/// leaves fresh maps (a million entries each, at the defaults) pinned behind it.
#[test]
fn a_failed_load_unpins_the_maps_it_pinned() {
    use gateway::xdp::{Capacity, PinDir, XdpError};
    use gateway_common::consts::map_names;

    gateway_tests::require_root();
    let pins = PinDir::new(format!(
        "/sys/fs/bpf/gateway-failed-load-{}",
        gateway_tests::unique_suffix()
    ));
    let small = Capacity {
        rate_limit_entries: 1024,
        blocklist_entries: 1024,
        cidr_entries: 1024,
    };
    drop(gateway::xdp::load(&pins, &small).expect("the first load"));
    let kept = pins.map(map_names::BLOCKLIST_V6);
    for name in map_names::ALL {
        if pins.map(name) != kept {
            let _ = std::fs::remove_file(pins.map(name));
        }
    }
    let bigger = Capacity {
        blocklist_entries: 2048,
        ..small
    };
    let result = gateway::xdp::load(&pins, &bigger);
    let pinned: Vec<&str> = map_names::ALL
        .into_iter()
        .filter(|name| pins.map(name).exists())
        .collect();
    for name in map_names::ALL {
        let _ = std::fs::remove_file(pins.map(name));
    }
    let _ = std::fs::remove_dir(pins.path());
    assert!(
        matches!(result, Err(XdpError::Incompatible { .. })),
        "a load over a map pinned at another size must fail as incompatible"
    );
    assert_eq!(pinned, [map_names::BLOCKLIST_V6]);
}

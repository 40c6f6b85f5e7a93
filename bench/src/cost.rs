//! Per-packet cost with `BPF_PROG_TEST_RUN`: the kernel's own mean duration over a
//! large repeat count (each call has milliseconds of fixed set-up, so wall time says
//! nothing), for each verdict path of the gateway with its maps at several fill
//! levels, next to the reference programs and xdp-filter's program.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use anyhow::{Context as _, bail};
use gateway::xdp::{Capacity, RateLimit};
use gateway_common::{
    consts::{NO_EXPIRY, Reason, block_reason, capacity, cidr_flags},
    maps::{Addr4, BlockEntry, CidrRule, addr4},
};
use gateway_tests::{
    frames::{self, Frame},
    net::{NetNs, ip},
    program::LoadedProgram,
};
use serde::Serialize;

use crate::{
    machine::IdleWaiter,
    peers::XdpFilter,
    references::{self, References, XDP_DROP, XDP_PASS},
    stats::{Samples, Summary},
};

/// Every frame measured is this long, as the issue asks (without FCS).
pub const FRAME_LEN: usize = 64;
/// UDP payload that makes a 64-byte UDP/IPv4 frame (14 + 20 + 8 + 22).
const UDP_PAYLOAD: usize = 22;

const ALLOWED: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 1);
const ALLOW_CIDR: (Ipv4Addr, u32) = (Ipv4Addr::new(198, 18, 10, 0), 24);
const CIDR_BLOCKED: Ipv4Addr = Ipv4Addr::new(198, 18, 66, 1);
const BLOCK_CIDR: (Ipv4Addr, u32) = (Ipv4Addr::new(198, 18, 66, 0), 24);
const BLOCKED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 99);
const PASSING: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
const LIMITED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 21);

/// A rate limit every packet of a run conforms to (1 ns per token, 1 s of burst).
const GENEROUS: RateLimit = RateLimit {
    pps: 1_000_000_000,
    burst: 1_000_000_000,
    syn_pps: 0,
    syn_burst: 0,
};
/// The stingy limit's interval and burst window as the bench writes them: an hour.
const STINGY_NS: u64 = 3_600_000_000_000;
/// A rate limit the first packet exhausts.
const STINGY: RateLimit = RateLimit {
    pps: 1,
    burst: 1,
    syn_pps: 0,
    syn_burst: 0,
};

/// One verdict path: the frame that takes it and what must come out.
struct VerdictPath {
    name: &'static str,
    /// `None`: an ARP frame.
    src: Option<Ipv4Addr>,
    rate_limit: RateLimit,
    action: u32,
    reason: Reason,
}

const PATHS: [VerdictPath; 7] = [
    VerdictPath {
        name: "allowlisted",
        src: Some(ALLOWED),
        rate_limit: GENEROUS,
        action: XDP_PASS,
        reason: Reason::PassAllowlist,
    },
    VerdictPath {
        name: "CIDR-blocked",
        src: Some(CIDR_BLOCKED),
        rate_limit: GENEROUS,
        action: XDP_DROP,
        reason: Reason::DropCidr,
    },
    VerdictPath {
        name: "dynamically blocked",
        src: Some(BLOCKED),
        rate_limit: GENEROUS,
        action: XDP_DROP,
        reason: Reason::DropBlocked,
    },
    VerdictPath {
        name: "pass, rate limiting off",
        src: Some(PASSING),
        rate_limit: RateLimit {
            pps: 0,
            burst: 0,
            syn_pps: 0,
            syn_burst: 0,
        },
        action: XDP_PASS,
        reason: Reason::Pass,
    },
    VerdictPath {
        name: "rate-limited pass",
        src: Some(PASSING),
        rate_limit: GENEROUS,
        action: XDP_PASS,
        reason: Reason::Pass,
    },
    VerdictPath {
        name: "rate-limited drop",
        src: Some(LIMITED),
        rate_limit: STINGY,
        action: XDP_DROP,
        reason: Reason::DropRateLimit,
    },
    VerdictPath {
        name: "non-IP (ARP)",
        src: None,
        rate_limit: GENEROUS,
        action: XDP_PASS,
        reason: Reason::PassNonIp,
    },
];

/// How full the maps are while the paths are measured.
struct Fill {
    name: &'static str,
    /// Entries in the exact-address blocklist (the blocked source included).
    blocklist: usize,
    /// Prefixes in each of the allowlist and the CIDR blocklist (the test ones
    /// included); 0: both tries empty, which the program skips (most deployments
    /// have no allowlist, many no CIDR blocklist), and no allowlisted or CIDR-blocked
    /// path to measure.
    prefixes: usize,
}

const FILLS: [Fill; 5] = [
    Fill {
        name: "blocklist 1, tries 1",
        blocklist: 1,
        prefixes: 1,
    },
    Fill {
        name: "blocklist 10k",
        blocklist: 10_000,
        prefixes: 1,
    },
    Fill {
        name: "blocklist 1M",
        blocklist: 1_000_000,
        prefixes: 1,
    },
    Fill {
        name: "tries 100k prefixes",
        blocklist: 1,
        prefixes: 100_000,
    },
    Fill {
        name: "blocklist 1, tries empty",
        blocklist: 1,
        prefixes: 0,
    },
];

/// Scenario name of the reference programs, which have no state to fill.
pub const REFERENCE: &str = "reference";
pub const REF_DROP: &str = "bare XDP_DROP (floor)";
pub const REF_LOOKUP: &str = "single lookup + atomic counter";
pub const REF_XDP_FILTER: &str = "xdp-filter (ipv4,ipv6; blocked source)";

/// One measured figure: nanoseconds per packet.
#[derive(Clone, Debug, Serialize)]
pub struct CostRow {
    pub scenario: String,
    pub program: String,
    pub ns_per_packet: Summary,
}

pub struct Options {
    pub runs: usize,
    pub repeat: u32,
}

/// Measures everything; each run of every figure waits for a quiet machine first.
pub fn run(options: &Options, waiter: &mut IdleWaiter) -> anyhow::Result<Vec<CostRow>> {
    let mut samples = Samples::default();
    let mut refs = References::load()?;
    refs.list_for_lookup(BLOCKED)?;
    let blocked_frame = udp_frame(BLOCKED);

    let ns = NetNs::new(format!("gwb-xf-{}", gateway_tests::unique_suffix()));
    // No dummy driver on every kernel; a veth pair inside the namespace does as well.
    ip(&[
        "-n", &ns.name, "link", "add", "xf0", "type", "veth", "peer", "name", "xf1",
    ]);
    ip(&["-n", &ns.name, "link", "set", "xf0", "up"]);
    ip(&["-n", &ns.name, "link", "set", "xf1", "up"]);
    let xdp_filter = XdpFilter::load(&ns, "xf0", "skb", &[BLOCKED])?;
    let xdp_filter_program = xdp_filter.program()?;

    let reference_round = |samples: &mut Samples<(String, String)>,
                           refs: &mut References|
     -> anyhow::Result<()> {
        for (name, program) in [
            (REF_DROP, references::DROP),
            (REF_LOOKUP, references::LOOKUP),
        ] {
            let result = references::time(refs.program(program)?, &blocked_frame, options.repeat)?;
            expect_action(name, result.return_value, XDP_DROP)?;
            samples.push(key(REFERENCE, name), nanos(result.duration));
        }
        let result = references::time(&xdp_filter_program, &blocked_frame, options.repeat)?;
        expect_action(REF_XDP_FILTER, result.return_value, XDP_DROP)?;
        samples.push(key(REFERENCE, REF_XDP_FILTER), nanos(result.duration));
        Ok(())
    };

    let mut growing = LoadedProgram::load_with(&Capacity {
        rate_limit_entries: capacity::RATE_LIMIT,
        blocklist_entries: 1 << 20,
        cidr_entries: capacity::CIDR,
    });
    seed_blocked(&growing)?;
    seed_tries(&growing)?;
    let mut blocklist_len = 1;
    for fill in FILLS.iter().filter(|fill| fill.prefixes == 1) {
        fill_blocklist(&growing, blocklist_len, fill.blocklist)?;
        blocklist_len = fill.blocklist;
        for _ in 0..options.runs {
            waiter.wait()?;
            reference_round(&mut samples, &mut refs)?;
            measure_paths(&mut growing, fill, options.repeat, &mut samples)?;
        }
    }
    drop(growing);

    let mut wide = LoadedProgram::load_with(&Capacity {
        rate_limit_entries: capacity::RATE_LIMIT,
        blocklist_entries: capacity::BLOCKLIST,
        cidr_entries: 1 << 18,
    });
    seed_blocked(&wide)?;
    seed_tries(&wide)?;
    for fill in FILLS.iter().filter(|fill| fill.prefixes > 1) {
        fill_tries(&wide, fill.prefixes)?;
        for _ in 0..options.runs {
            waiter.wait()?;
            reference_round(&mut samples, &mut refs)?;
            measure_paths(&mut wide, fill, options.repeat, &mut samples)?;
        }
    }
    drop(wide);

    let mut empty = LoadedProgram::load_with(&Capacity::default());
    seed_blocked(&empty)?;
    for fill in FILLS.iter().filter(|fill| fill.prefixes == 0) {
        for _ in 0..options.runs {
            waiter.wait()?;
            reference_round(&mut samples, &mut refs)?;
            measure_paths(&mut empty, fill, options.repeat, &mut samples)?;
        }
    }

    Ok(samples
        .summaries()
        .into_iter()
        .map(|((scenario, program), ns_per_packet)| CostRow {
            scenario,
            program,
            ns_per_packet,
        })
        .collect())
}

fn key(scenario: &str, program: &str) -> (String, String) {
    (scenario.to_owned(), program.to_owned())
}

fn nanos(duration: Duration) -> f64 {
    duration.as_nanos() as f64
}

fn expect_action(name: &str, got: u32, want: u32) -> anyhow::Result<()> {
    if got != want {
        bail!("{name} returned XDP action {got}, expected {want}: the run measured the wrong path");
    }
    Ok(())
}

/// A 64-byte UDP/IPv4 frame from `src`.
pub fn udp_frame(src: Ipv4Addr) -> Vec<u8> {
    Frame::udp(IpAddr::V4(src))
        .payload(UDP_PAYLOAD)
        .build()
        .bytes
}

/// Times every verdict path the fill has entries for once, checking that each run
/// took the intended path: the action, and exactly `repeat` packets more on the
/// path's counter.
fn measure_paths(
    program: &mut LoadedProgram,
    fill: &Fill,
    repeat: u32,
    samples: &mut Samples<(String, String)>,
) -> anyhow::Result<()> {
    let needs_tries =
        |path: &&VerdictPath| matches!(path.reason, Reason::PassAllowlist | Reason::DropCidr);
    for path in PATHS
        .iter()
        .filter(|path| fill.prefixes > 0 || !needs_tries(path))
    {
        let frame = match path.src {
            Some(src) => udp_frame(src),
            None => {
                let mut arp = frames::arp();
                arp.resize(FRAME_LEN, 0);
                arp
            }
        };
        let mut config = program.maps.config()?;
        path.rate_limit.apply_to(&mut config);
        if path.rate_limit == STINGY {
            // One token an hour, not a second: a run of a million packets can take
            // over a second on a busy machine, and a refilled token would pass one.
            (config.rate_interval_ns, config.rate_burst_ns) = (STINGY_NS, STINGY_NS);
        }
        program.maps.set_config(&config)?;
        // Two packets first: a new source's bucket starts full, so the stingy limit
        // only drops from the second packet on.
        program.run(&frame);
        program.run(&frame);
        let before = program.counters()[path.reason as usize].packets;
        let result = program.test_run(&frame, repeat);
        let after = program.counters()[path.reason as usize].packets;
        expect_action(path.name, result.return_value, path.action)?;
        if after - before != u64::from(repeat) {
            bail!(
                "{}: {} counted {} of {repeat} packets",
                path.name,
                path.reason.name(),
                after - before
            );
        }
        samples.push(key(fill.name, path.name), nanos(result.duration));
    }
    Ok(())
}

fn v4(addr: Ipv4Addr) -> Addr4 {
    addr4(addr.octets())
}

/// The trie value of a permanent prefix on one list with no listed prefix around
/// it (`flags`: that list's pair of [`cidr_flags`]).
const fn forever(flags: u32) -> CidrRule {
    CidrRule {
        allow_expires_at_ns: NO_EXPIRY,
        block_expires_at_ns: NO_EXPIRY,
        own_allow_expires_at_ns: NO_EXPIRY,
        own_block_expires_at_ns: NO_EXPIRY,
        flags,
        own_allow_reason: block_reason::MANUAL,
        own_block_reason: block_reason::MANUAL,
        reserved: 0,
    }
}

/// An allowlisted prefix.
const ALLOWED_FOREVER: CidrRule = forever(cidr_flags::ALLOW | cidr_flags::ALLOWLISTED);
/// A CIDR-blocked prefix.
const BLOCKED_FOREVER: CidrRule = forever(cidr_flags::BLOCK | cidr_flags::BLOCKLISTED);

/// The dynamically blocked source.
fn seed_blocked(program: &LoadedProgram) -> anyhow::Result<()> {
    program
        .maps
        .blocklist_v4()?
        .insert(&v4(BLOCKED), &block_entry())?;
    Ok(())
}

/// The allowed and the blocked CIDR.
fn seed_tries(program: &LoadedProgram) -> anyhow::Result<()> {
    let (allow, allow_len) = ALLOW_CIDR;
    let (block, block_len) = BLOCK_CIDR;
    let mut trie = program.maps.cidr_v4()?;
    trie.insert(allow_len, v4(allow), &ALLOWED_FOREVER)?;
    trie.insert(block_len, v4(block), &BLOCKED_FOREVER)?;
    Ok(())
}

fn block_entry() -> BlockEntry {
    BlockEntry {
        expires_at_ns: NO_EXPIRY,
        reason: block_reason::MANUAL,
        ..BlockEntry::default()
    }
}

/// Filler IPv4 keys for the blocklist: 240.0.0.0/4 and up (reserved, never a
/// packet's source, and room for millions where the benchmarking range has 131,072
/// addresses). The measured sources are IPv4, so the fillers go into the maps they
/// look up.
fn filler_v4(index: usize) -> anyhow::Result<Addr4> {
    let base = u32::from(Ipv4Addr::new(240, 0, 0, 0));
    Ok(v4(Ipv4Addr::from(base + u32::try_from(index)?)))
}

/// Grows the blocklist from `from` to `to` entries.
fn fill_blocklist(program: &LoadedProgram, from: usize, to: usize) -> anyhow::Result<()> {
    let mut table = program.maps.blocklist_v4()?;
    let entry = block_entry();
    for index in from..to {
        table
            .insert(&filler_v4(index)?, &entry)
            .with_context(|| format!("filling the blocklist to {to} entries"))?;
    }
    Ok(())
}

/// Fills each list to `to` prefixes in the IPv4 CIDR trie, which both share: /32s
/// from 198.18.128.0 up, first the allowlist's then the CIDR blocklist's (up to
/// 198.21.141.64 at 100k each: map keys only, never a packet's source), clear of
/// every test source and in the same half of the address space as they are, so the
/// trie walk for a measured source goes as deep as it did with a trie per list.
fn fill_tries(program: &LoadedProgram, to: usize) -> anyhow::Result<()> {
    let base = u32::from(Ipv4Addr::new(198, 18, 128, 0));
    let mut trie = program.maps.cidr_v4()?;
    for (list, value) in [ALLOWED_FOREVER, BLOCKED_FOREVER].iter().enumerate() {
        for index in 1..to {
            let offset = u32::try_from(list * to + index)?;
            let addr = v4(Ipv4Addr::from(base + offset));
            trie.insert(32, addr, value)
                .with_context(|| format!("filling the CIDR trie to {to} prefixes per list"))?;
        }
    }
    Ok(())
}

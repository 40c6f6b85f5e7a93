//! On the wire: a client namespace floods the gateway namespace over a veth pair with
//! 64-byte UDP, and the receiver's packet rate and CPU per packet are measured for
//! each filter: none, nftables, xdp-filter, the gateway (blocklist, rate-limit drop,
//! pass with rate limiting), and a bare `XDP_DROP` as the ceiling of the rig.
//!
//! The generator is `bench_gen` run with `BPF_PROG_TEST_RUN` in live-frames mode on
//! the client's veth: the kernel hands the frames to the gateway's veth through
//! `ndo_xdp_xmit`, as a NIC driver would, with no socket buffers on the sending side
//! (a socket generator saturates before any XDP program does on a small machine).
//! Generator and receiver share one CPU: the generator's batches end in the veth's
//! NAPI poll on the same CPU, so the receive rate is what one CPU achieves for both.

use std::{
    ffi::CString,
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions, XdpMode};
use gateway::xdp::{KernelMaps, PinDir};
use gateway_common::consts::Reason;
use gateway_tests::{
    frames::Frame,
    gateway::Gateway,
    net::{NetNs, Topology},
};
use serde::Serialize;

use crate::{
    machine::{CpuTimes, IdleWaiter, pin_current_thread},
    peers::{Nftables, XdpFilter, in_ns},
    references::{self, References},
    stats::{Samples, Summary},
};

/// Namespace prefix of this rig; `cargo xtask bench` removes leftovers with it.
pub const NETNS_PREFIX: &str = "gwb";
/// The first flooding source; the others follow it.
pub const FIRST_SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 0);
/// Frames in the first `BPF_PROG_TEST_RUN` call; later calls are sized to last about
/// [`CALL_TIME`]. Each call sets up and tears down a page pool and idles the CPU for a
/// while at the end: with 100k-frame calls the bare-drop ceiling measured less than
/// half of what it is with one-second calls.
const FIRST_CALL_FRAMES: u32 = 1_000_000;
/// How long one generator call should last: long against its fixed cost, short
/// enough that the generator notices the stop flag soon.
const CALL_TIME: Duration = Duration::from_secs(1);
/// Frames the kernel builds and sends per batch in live-frames mode (its default).
const LIVE_BATCH: u32 = 64;
/// Traffic runs this long before the counters are read, so the rates are steady.
const WARM_UP: Duration = Duration::from_millis(300);

pub struct Options {
    pub runs: usize,
    pub seconds: Duration,
    pub sources: u32,
    /// The CPU the generator (and so the receiver's softirq) runs on.
    pub cpu: usize,
}

/// The receivers compared, in the order they run.
#[derive(Clone, Copy, Debug)]
enum Contender {
    None,
    Nftables,
    XdpFilter,
    GatewayBlocklist,
    GatewayRateLimitDrop,
    GatewayRateLimitPass,
    BareDrop,
}

impl Contender {
    const ALL: [Contender; 7] = [
        Contender::None,
        Contender::Nftables,
        Contender::XdpFilter,
        Contender::GatewayBlocklist,
        Contender::GatewayRateLimitDrop,
        Contender::GatewayRateLimitPass,
        Contender::BareDrop,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Contender::None => NO_FILTER,
            Contender::Nftables => NFTABLES,
            Contender::XdpFilter => XDP_FILTER,
            Contender::GatewayBlocklist => GATEWAY_BLOCKLIST,
            Contender::GatewayRateLimitDrop => "gateway native, sources over their rate limit",
            Contender::GatewayRateLimitPass => GATEWAY_PASS,
            Contender::BareDrop => BARE_DROP,
        }
    }
}

pub const NO_FILTER: &str = "no filter (kernel stack drops: no listener)";
pub const NFTABLES: &str = "nftables netdev ingress, address set";
pub const XDP_FILTER: &str = "xdp-filter native, same addresses";
pub const GATEWAY_BLOCKLIST: &str = "gateway native, sources in the blocklist";
pub const GATEWAY_PASS: &str = "gateway native, pass path with rate limiting on";
pub const BARE_DROP: &str = "bare XDP_DROP native (ceiling)";

/// One filter's figures.
#[derive(Clone, Debug, Serialize)]
pub struct WireRow {
    pub filter: String,
    /// Frames the gateway's veth took in, millions per second.
    pub received_mpps: Summary,
    /// Of those, dropped by the filter itself (its own counter), millions per second.
    pub dropped_mpps: Option<Summary>,
    /// Generated frames the client's veth could not pass on (the gateway's receive
    /// ring was full), millions per second: zero when the receiver kept up.
    pub lost_at_sender_mpps: Summary,
    /// Softirq time of all CPUs per received frame, nanoseconds.
    pub softirq_ns_per_packet: Summary,
    /// Busy time of all CPUs per received frame (generator included), nanoseconds.
    pub cpu_ns_per_packet: Summary,
}

/// What is set up on the gateway's side for one filter; torn down on drop (the
/// underscored fields are only held for that).
enum Receiver<'a> {
    None,
    Nftables(Nftables<'a>),
    XdpFilter { _filter: XdpFilter<'a> },
    Gateway(Gateway),
    BareDrop { _program: References },
}

/// Counters read at one moment.
struct Snapshot {
    at: Instant,
    received: u64,
    dropped: Option<u64>,
    /// Frames the client's veth could not hand to the gateway's (ring full).
    lost_at_sender: u64,
    cpu: CpuTimes,
}

pub fn run(options: &Options, waiter: &mut IdleWaiter) -> anyhow::Result<Vec<WireRow>> {
    let topology = Topology::with_prefix(NETNS_PREFIX, &["198.18.0.10"]);
    enable_napi(&topology)?;
    let sources: Vec<Ipv4Addr> = (0..options.sources)
        .map(|i| Ipv4Addr::from(u32::from(FIRST_SOURCE) + i))
        .collect();
    let template = template_frame(&topology)?;

    let mut rows = Vec::new();
    for filter in Contender::ALL {
        let receiver = set_up(filter, &topology, &sources)?;
        topology.wait_until_settled();
        let mut received = Samples::default();
        let mut dropped = Samples::default();
        let mut softirq = Samples::default();
        let mut cpu = Samples::default();
        let mut lost = Samples::default();
        for _ in 0..options.runs {
            waiter.wait()?;
            let (before, after) = flood(&topology, &receiver, &template, options)?;
            let seconds = after.at.duration_since(before.at).as_secs_f64();
            let frames = after.received.saturating_sub(before.received);
            if frames == 0 {
                bail!(
                    "{}: the gateway's veth received nothing; is the generator running?",
                    filter.name()
                );
            }
            received.push((), frames as f64 / seconds / 1e6);
            if let (Some(b), Some(a)) = (before.dropped, after.dropped) {
                dropped.push((), a.saturating_sub(b) as f64 / seconds / 1e6);
            }
            softirq.push((), before.cpu.softirq_ns(&after.cpu) / frames as f64);
            let lost_frames = after.lost_at_sender.saturating_sub(before.lost_at_sender);
            lost.push((), lost_frames as f64 / seconds / 1e6);
            cpu.push((), before.cpu.busy_ns(&after.cpu) / frames as f64);
        }
        drop(receiver);
        let one = |samples: Samples<()>| samples.summaries().into_iter().next().map(|(_, s)| s);
        rows.push(WireRow {
            filter: filter.name().to_owned(),
            received_mpps: one(received).ok_or_else(|| anyhow!("no runs"))?,
            dropped_mpps: one(dropped),
            lost_at_sender_mpps: one(lost).ok_or_else(|| anyhow!("no runs"))?,
            softirq_ns_per_packet: one(softirq).ok_or_else(|| anyhow!("no runs"))?,
            cpu_ns_per_packet: one(cpu).ok_or_else(|| anyhow!("no runs"))?,
        });
    }
    Ok(rows)
}

/// Turns on NAPI on the gateway's veth, which `ndo_xdp_xmit` needs, also when no XDP
/// program is attached there (GRO enables it too).
pub fn enable_napi(topology: &Topology) -> anyhow::Result<()> {
    in_ns(
        &topology.gateway,
        "ethtool",
        &["-K", &topology.gw_iface, "gro", "on"],
    )?;
    Ok(())
}

/// The frame the generator starts from: 64-byte UDP to the gateway's address and MAC
/// (so the stack accepts it when nothing filters), source rewritten per frame.
pub fn template_frame(topology: &Topology) -> anyhow::Result<Vec<u8>> {
    let gw_mac = mac_of(&topology.gateway, &topology.gw_iface)?;
    let client_mac = mac_of(&topology.client, &topology.client_iface)?;
    let frame = Frame::udp(IpAddr::V4(FIRST_SOURCE))
        .macs(gw_mac, client_mac)
        .payload(crate::cost::FRAME_LEN - 42)
        .build()
        .bytes;
    Ok(frame)
}

fn mac_of(ns: &NetNs, iface: &str) -> anyhow::Result<[u8; 6]> {
    let json = in_ns(ns, "ip", &["-j", "link", "show", "dev", iface])?;
    let value: serde_json::Value = serde_json::from_str(&json).context("`ip -j` output")?;
    let text = value
        .get(0)
        .and_then(|link| link.get("address"))
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| anyhow!("no MAC address for {iface} in {json}"))?;
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts
            .next()
            .ok_or_else(|| anyhow!("malformed MAC {text}"))?;
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("malformed MAC {text}"))?;
    }
    Ok(mac)
}

fn set_up<'a>(
    filter: Contender,
    topology: &'a Topology,
    sources: &[Ipv4Addr],
) -> anyhow::Result<Receiver<'a>> {
    let (ns, iface) = (&topology.gateway, topology.gw_iface.as_str());
    let addrs: Vec<String> = sources.iter().map(Ipv4Addr::to_string).collect();
    let gateway = |limit: Option<(&str, &str)>, block: bool| -> anyhow::Result<Receiver<'a>> {
        let gateway = Gateway::new(ns);
        gateway.ok(&["xdp", "attach", "--iface", iface, "--mode", "driver"]);
        if block {
            let mut args = vec!["blocklist", "add"];
            args.extend(addrs.iter().map(String::as_str));
            gateway.ok(&args);
        }
        if let Some((pps, burst)) = limit {
            gateway.ok(&["ratelimit", "set", "--pps", pps, "--burst", burst]);
        }
        Ok(Receiver::Gateway(gateway))
    };
    match filter {
        Contender::None => Ok(Receiver::None),
        Contender::Nftables => Ok(Receiver::Nftables(Nftables::install(ns, iface, sources)?)),
        Contender::XdpFilter => Ok(Receiver::XdpFilter {
            _filter: XdpFilter::load(ns, iface, "native", sources)?,
        }),
        Contender::GatewayBlocklist => gateway(None, true),
        // Each source floods at tens of thousands of packets a second.
        Contender::GatewayRateLimitDrop => gateway(Some(("100", "100")), false),
        Contender::GatewayRateLimitPass => gateway(Some(("1000000", "1000000")), false),
        Contender::BareDrop => {
            let iface = iface.to_owned();
            let refs = ns.run(move || -> anyhow::Result<References> {
                let mut refs = References::load()?;
                refs.program(references::DROP)?
                    .attach(if_index(&iface)?, XdpMode::Driver)
                    .with_context(|| format!("attaching the bare drop to {iface}"))?;
                Ok(refs)
            })?;
            Ok(Receiver::BareDrop { _program: refs })
        }
    }
}

impl Receiver<'_> {
    /// What the filter itself counts as dropped, where it counts.
    fn dropped(&self, topology: &Topology) -> anyhow::Result<Option<u64>> {
        match self {
            Receiver::None => Ok(None),
            Receiver::Nftables(nft) => nft.dropped().map(Some),
            Receiver::XdpFilter { .. } | Receiver::BareDrop { .. } => {
                veth_stat(&topology.gateway, &topology.gw_iface, "rx", "xdp_drops").map(Some)
            }
            Receiver::Gateway(gateway) => {
                let maps = KernelMaps::open(&PinDir::new(&gateway.pin_dir))?;
                let counters = maps.counters()?;
                Ok(Some(
                    Reason::ALL
                        .iter()
                        .filter(|reason| reason.name().starts_with("drop_"))
                        .map(|&reason| counters[reason as usize].packets)
                        .sum(),
                ))
            }
        }
    }
}

/// Sum of a veth's per-queue `<dir>_queue_<n>_<stat>` ethtool counters (`dir`: rx, tx).
pub fn veth_stat(ns: &NetNs, iface: &str, dir: &str, stat: &str) -> anyhow::Result<u64> {
    let text = in_ns(ns, "ethtool", &["-S", iface])?;
    Ok(sum_queue_stat(&text, dir, stat))
}

fn sum_queue_stat(text: &str, dir: &str, stat: &str) -> u64 {
    let prefix = format!("{dir}_queue_");
    let suffix = format!("_{stat}");
    text.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .filter(|(name, _)| name.starts_with(&prefix) && name.ends_with(&suffix))
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum()
}

/// Frames the gateway's veth has received (its rx packet counter).
pub fn received(topology: &Topology) -> anyhow::Result<u64> {
    link_stat(&topology.gateway, &topology.gw_iface, "rx/packets")
}

/// One of `ip -s link`'s counters of `iface` in `ns`, e.g. `rx/packets`, `tx/dropped`.
pub fn link_stat(ns: &NetNs, iface: &str, counter: &str) -> anyhow::Result<u64> {
    let json = in_ns(ns, "ip", &["-s", "-j", "link", "show", "dev", iface])?;
    let value: serde_json::Value = serde_json::from_str(&json).context("`ip -s -j` output")?;
    value
        .pointer(&format!("/0/stats64/{counter}"))
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| anyhow!("no {counter} count for {iface} in {json}"))
}

/// Reads the counters. Each read starts a process, which takes milliseconds on a busy
/// machine, so the time is stamped beside the main figure (frames received) and the
/// CPU times are read right next to it.
fn snapshot(topology: &Topology, receiver: &Receiver<'_>) -> anyhow::Result<Snapshot> {
    let received = received(topology)?;
    let at = Instant::now();
    let cpu = CpuTimes::now()?;
    let dropped = receiver.dropped(topology)?;
    let lost_at_sender = veth_stat(
        &topology.client,
        &topology.client_iface,
        "tx",
        "xdp_xmit_errors",
    )?;
    Ok(Snapshot {
        at,
        received,
        dropped,
        lost_at_sender,
        cpu,
    })
}

/// Stops the generator when dropped, whatever happened to the measurement.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Floods for the configured time and returns the counters at its steady start and end.
fn flood(
    topology: &Topology,
    receiver: &Receiver<'_>,
    template: &[u8],
    options: &Options,
) -> anyhow::Result<(Snapshot, Snapshot)> {
    let generator = Generator {
        iface: topology.client_iface.clone(),
        template: template.to_vec(),
        first: FIRST_SOURCE,
        sources: options.sources,
        cpu: options.cpu,
        pace: Pace::FlatOut,
    };
    with_flood(&topology.client, generator, || {
        let before = snapshot(topology, receiver)?;
        thread::sleep(options.seconds);
        let after = snapshot(topology, receiver)?;
        Ok((before, after))
    })
}

/// Runs `generator` in `ns` (the client side) and, once its traffic has run for
/// [`WARM_UP`], `during`; stops the generator afterwards, whatever happened.
pub fn with_flood<T>(
    ns: &NetNs,
    generator: Generator,
    during: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let flag = Arc::clone(&stop);
    thread::scope(|scope| {
        let handle = scope.spawn(|| ns.run(move || generator.run(&flag, &ready_tx)));
        let measured = {
            let _stop = StopOnDrop(Arc::clone(&stop));
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| anyhow!("the generator did not start"))
                .and_then(|()| {
                    thread::sleep(WARM_UP);
                    during()
                })
        };
        let generated = handle
            .join()
            .map_err(|_| anyhow!("the generator thread panicked"))?;
        // The generator's own error explains a measurement that never started.
        generated?;
        measured
    })
}

/// The generator's settings, moved into the client namespace's thread.
pub struct Generator {
    /// The client's veth, out of which the frames leave.
    pub iface: String,
    /// The frame to send (see [`template_frame`]).
    pub template: Vec<u8>,
    /// The first source address; `sources` consecutive ones take turns.
    pub first: Ipv4Addr,
    pub sources: u32,
    pub cpu: usize,
    pub pace: Pace,
}

/// How fast the generator sends (SCHED_FIFO either way, see [`realtime`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// As fast as its CPU allows, in calls of about a second: the drop-rate runs,
    /// where the receiver's speed sets the rate.
    FlatOut,
    /// At most this many frames per second, one call per [`PACED_SLOT`], sleeping
    /// out the rest of each slot: the same attack whatever the receiver does with it.
    /// The generator leaves its CPU to others only while the receiver keeps up.
    Rate(u32),
}

/// The time slice of a paced generator. Each live-frames call has a fixed cost that
/// includes idle time at its end: with 10 ms slices the flood reached about a third
/// of a 1 Mpps target, with 50 ms about two thirds (on a busy machine); longer slices
/// make the flood burstier.
const PACED_SLOT: Duration = Duration::from_millis(50);

impl Generator {
    /// Loads and configures `bench_gen`, signals `ready`, then sends until `stop`;
    /// returns the number of frames sent.
    fn run(self, stop: &AtomicBool, ready: &mpsc::Sender<()>) -> anyhow::Result<u64> {
        pin_current_thread(self.cpu)?;
        realtime()?;
        let mut refs = References::load()?;
        refs.configure_generator(self.first, self.sources)?;
        let ifindex = if_index(&self.iface)?;
        let frame_len = u32::try_from(self.template.len())?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. The frames leave through the ingress interface.
        let ctx: Vec<u8> = [0, frame_len, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|field: &u32| field.to_ne_bytes())
            .collect();
        let program = refs.program(references::GENERATOR)?;
        let mut sent = 0u64;
        let mut frames = match self.pace {
            Pace::FlatOut => FIRST_CALL_FRAMES,
            Pace::Rate(pps) => {
                let per_slot = f64::from(pps) * PACED_SLOT.as_secs_f64();
                (per_slot as u32).max(LIVE_BATCH)
            }
        };
        let started = Instant::now();
        let mut slots = 0u32;
        let _ = ready.send(());
        while !stop.load(Ordering::Relaxed) {
            let mut options = TestRunOptions::new();
            options.data_in = Some(&self.template);
            options.ctx_in = Some(&ctx);
            options.repeat = frames;
            options.attrs = TestRunAttrs::new().xdp_live_frames(LIVE_BATCH);
            let start = Instant::now();
            program
                .test_run(options)
                .context("BPF_PROG_TEST_RUN in live-frames mode")?;
            sent += u64::from(frames);
            match self.pace {
                Pace::FlatOut => frames = next_call_frames(frames, start.elapsed()),
                Pace::Rate(_) => {
                    slots += 1;
                    let due = started + PACED_SLOT * slots;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                }
            }
        }
        Ok(sent)
    }
}

/// Frames for the next call, so it lasts about [`CALL_TIME`] at the rate just seen.
fn next_call_frames(frames: u32, took: Duration) -> u32 {
    let rate = f64::from(frames) / took.as_secs_f64().max(1e-3);
    (rate * CALL_TIME.as_secs_f64()).clamp(100_000.0, 20_000_000.0) as u32
}

/// Makes this thread SCHED_FIFO, so whatever else runs on the machine (compilers, on a
/// shared box) cannot take its CPU half of the time and halve the measured rates.
/// The kernel's RT throttling still leaves other tasks 5% of the CPU.
fn realtime() -> anyhow::Result<()> {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: a valid sched_param; pid 0 is this thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        return Err(std::io::Error::last_os_error()).context("making the generator SCHED_FIFO");
    }
    Ok(())
}

fn if_index(iface: &str) -> anyhow::Result<u32> {
    let name = CString::new(iface)?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {iface} in the generator's namespace");
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_calls_to_last_a_second() {
        assert_eq!(
            next_call_frames(1_000_000, Duration::from_millis(250)),
            4_000_000
        );
        assert_eq!(
            next_call_frames(1_000_000, Duration::from_secs(100)),
            100_000
        );
        assert_eq!(next_call_frames(1_000_000, Duration::ZERO), 20_000_000);
    }

    #[test]
    fn sums_per_queue_stats() {
        let text = "NIC statistics:\n     peer_ifindex: 6\n     rx_queue_0_xdp_drops: 5\n     \
                    rx_queue_1_xdp_drops: 7\n     rx_queue_0_xdp_tx: 9\n";
        assert_eq!(sum_queue_stat(text, "rx", "xdp_drops"), 12);
        assert_eq!(sum_queue_stat(text, "rx", "xdp_packets"), 0);
        assert_eq!(sum_queue_stat(text, "rx", "xdp_tx"), 9);
        assert_eq!(sum_queue_stat(text, "tx", "xdp_drops"), 0);
    }
}

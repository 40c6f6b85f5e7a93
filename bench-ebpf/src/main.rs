//! Reference XDP programs the benchmark measures the gateway against, and the traffic
//! generator of its on-the-wire runs. They live apart from `gateway-ebpf` so the
//! product's object holds only the product.
//!
//! - [`bench_drop`]: returns `XDP_DROP` and nothing else: the floor of any XDP program.
//! - [`bench_lookup`]: the least a useful filter does — parse Ethernet and IPv4, one
//!   hash lookup of the source, an atomic hit counter — to price one lookup.
//! - [`bench_gen`]: run with `BPF_PROG_TEST_RUN` in live-frames mode, it rewrites the
//!   IPv4 source of each frame and sends it back out of the interface the run is bound
//!   to (`XDP_TX`), i.e. into the peer of a veth, the way a NIC driver hands frames on.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd: BPF has no CAS, so core's atomics lack fetch_add"
)]

mod generator;
mod lookup;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// The floor: the cost of running any XDP program at all.
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Ethernet + IPv4 parse, one hash lookup, one atomic add: drops listed sources.
#[xdp]
pub fn bench_lookup(ctx: XdpContext) -> u32 {
    lookup::run(&ctx)
}

/// Live-frames generator: next source address, fixed checksum, `XDP_TX`.
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    generator::run(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it only satisfies rustc.
    loop {}
}

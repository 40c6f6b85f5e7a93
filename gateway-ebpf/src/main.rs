//! The gateway's XDP program.
//!
//! Every frame walks the same short pipeline, each step in its own helper:
//! parse ([`parse`]) → allowlist and CIDR blocklist (one trie walk) → dynamic
//! blocklist → per-source rate limit ([`filter`]) → pass. Every verdict is counted per reason ([`counters`]).
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd: BPF has no CAS, so core's atomics lack fetch_add"
)]

mod counters;
mod filter;
mod maps;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use gateway_common::consts::Reason;

/// Entry point: classify the frame, count the verdict, return the action.
#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let reason = match parse::parse(&ctx) {
        Ok(parse::Frame::Ip(packet)) => filter::verdict(&packet, bytes),
        Ok(parse::Frame::NonIp) => Reason::PassNonIp,
        Err(parse::Malformed) => Reason::DropMalformed,
    };
    counters::count(reason, bytes);
    match reason {
        Reason::DropMalformed
        | Reason::DropCidr
        | Reason::DropBlocked
        | Reason::DropRateLimit
        | Reason::DropSynRateLimit => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it only satisfies rustc.
    loop {}
}

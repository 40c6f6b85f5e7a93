//! The live-frames traffic generator.
//!
//! `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` runs this program on every
//! frame it hands out and turns `XDP_TX` into a redirect out of the interface named
//! by the run's `ingress_ifindex`; for a veth, that is `ndo_xdp_xmit` into the peer's
//! receive ring, as a NIC driver would deliver frames. The kernel recycles frame
//! pages, so the program writes everything it varies on every frame.

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action,
    macros::map,
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

/// Index 0: the first source address (host byte order); index 1: how many
/// consecutive addresses to cycle through. Written by userspace before the run.
#[map]
static GEN_CONFIG: Array<u32> = Array::with_max_entries(2, 0);

/// Per-CPU frame sequence number, so each CPU cycles through the sources alone.
#[map]
static GEN_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Header length in 16-bit words of an IPv4 header without options: the template
/// userspace builds has none.
const IPV4_WORDS: usize = size_of::<Ipv4Hdr>() / 2;

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + EthHdr::LEN + size_of::<Ipv4Hdr>() > end {
        return xdp_action::XDP_ABORTED;
    }
    let (Some(first), Some(count), Some(seq)) =
        (GEN_CONFIG.get(0), GEN_CONFIG.get(1), GEN_SEQ.get_ptr_mut(0))
    else {
        return xdp_action::XDP_ABORTED;
    };
    if *count == 0 {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: a per-CPU slot, and XDP runs with preemption disabled.
    let n = unsafe {
        let n = *seq;
        *seq = n.wrapping_add(1);
        n
    };
    let src = first.wrapping_add(n % *count);
    let ip = (start + EthHdr::LEN) as *mut Ipv4Hdr;
    // SAFETY: the IPv4 header was checked to lie inside the frame.
    unsafe {
        (*ip).src_addr = src.to_be_bytes();
        (*ip).check = [0, 0];
        let words = ip as *const [u8; 2];
        let mut sum = 0u32;
        for i in 0..IPV4_WORDS {
            sum += u32::from(u16::from_be_bytes(*words.add(i)));
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        (*ip).check = (!(sum as u16)).to_be_bytes();
    }
    xdp_action::XDP_TX
}

//! The single-lookup reference: what one exact-match filter costs at minimum.

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    mem::size_of,
};

use aya_ebpf::{bindings::xdp_action, macros::map, maps::HashMap, programs::XdpContext};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

const ETH_P_IPV4: u16 = 0x0800;

/// Listed IPv4 sources (network byte order) and their hit counts.
#[map]
static LOOKUP: HashMap<u32, u64> = HashMap::with_max_entries(1024, 0);

/// Drops a frame whose IPv4 source is in [`LOOKUP`], counting the hit; passes the rest.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + EthHdr::LEN + size_of::<Ipv4Hdr>() > end {
        return xdp_action::XDP_PASS;
    }
    let eth = start as *const EthHdr;
    let ip = (start + EthHdr::LEN) as *const Ipv4Hdr;
    // SAFETY: both headers were checked to lie inside the frame.
    let (ether_type, src) = unsafe { ((*eth).ether_type, (*ip).src_addr) };
    if u16::from_be(ether_type) != ETH_P_IPV4 {
        return xdp_action::XDP_PASS;
    }
    match LOOKUP.get_ptr_mut(&u32::from_ne_bytes(src)) {
        Some(hits) => {
            // SAFETY: a valid, aligned u64 inside the map value; shared by all CPUs,
            // hence the atomic add.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(hits, 1) };
            xdp_action::XDP_DROP
        }
        None => xdp_action::XDP_PASS,
    }
}

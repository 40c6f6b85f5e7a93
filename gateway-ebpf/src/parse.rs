//! Frame parsing. Every read goes through [`ptr_at`], which checks it against
//! `data_end`; a frame that ends inside a header it announces is [`Malformed`].

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use gateway_common::maps::{Addr, IPV4_MAPPED_PREFIX};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    vlan::VlanHdr,
};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
/// 802.1ad outer tag plus 802.1Q inner tag; a frame with more tags passes unparsed.
const MAX_VLAN_TAGS: usize = 2;
const IPV4_FRAGMENT_OFFSET_MASK: u16 = 0x1fff;
const TCP_FLAGS_BYTE: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The frame ends inside a header it announces, or a header contradicts itself.
pub struct Malformed;

/// What the filter needs to know about an IP packet.
pub struct Packet {
    /// Source address, IPv4 mapped into IPv6.
    pub src: Addr,
    /// The source is a real IPv6 address (rate-limited by prefix).
    pub is_ipv6: bool,
    /// TCP segment with SYN set and ACK clear: a new connection attempt.
    pub tcp_syn: bool,
}

/// A parsed frame.
pub enum Frame {
    /// IPv4 or IPv6, possibly behind up to two VLAN tags.
    Ip(Packet),
    /// Anything else (ARP, LLDP, ...): not ours to judge.
    NonIp,
}

/// Returns a pointer to a `T` at `offset` from the start of the frame, or
/// [`Malformed`] when the frame is too short to hold it.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Malformed> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return Err(Malformed);
    }
    Ok((start + offset) as *const T)
}

/// Parses Ethernet, up to [`MAX_VLAN_TAGS`] VLAN tags and the IP header.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Frame, Malformed> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that the header lies inside the frame.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let vlan: *const VlanHdr = ptr_at(ctx, offset)?;
        // SAFETY: as above.
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        offset += VlanHdr::LEN;
    }
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(ctx, offset).map(Frame::Ip),
        ETH_P_IPV6 => parse_ipv6(ctx, offset).map(Frame::Ip),
        _ => Ok(Frame::NonIp),
    }
}

/// IPv4 with any header length (options included); the TCP header is read only for
/// first fragments, the only ones that carry it.
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, offset: usize) -> Result<Packet, Malformed> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, offset)?;
    // SAFETY: ptr_at checked that the fixed header lies inside the frame.
    let (vihl, proto, frags, v4) =
        unsafe { ((*ip).vihl, (*ip).proto, (*ip).frags, (*ip).src_addr) };
    let header_len = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
        return Err(Malformed);
    }
    if ctx.data() + offset + header_len > ctx.data_end() {
        return Err(Malformed);
    }
    let first_fragment = u16::from_be_bytes(frags) & IPV4_FRAGMENT_OFFSET_MASK == 0;
    let tcp_syn = proto == IPPROTO_TCP && first_fragment && is_syn(ctx, offset + header_len)?;
    let mut src = [0u8; 16];
    src[..12].copy_from_slice(&IPV4_MAPPED_PREFIX);
    src[12..].copy_from_slice(&v4);
    Ok(Packet {
        src,
        is_ipv6: false,
        tcp_syn,
    })
}

/// IPv6; SYN detection covers TCP directly after the fixed header (extension headers
/// in front of TCP are not walked).
#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, offset: usize) -> Result<Packet, Malformed> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, offset)?;
    // SAFETY: ptr_at checked that the header lies inside the frame.
    let (version, next_hdr, src) = unsafe { ((*ip).vcf[0] >> 4, (*ip).next_hdr, (*ip).src_addr) };
    if version != 6 {
        return Err(Malformed);
    }
    let tcp_syn = next_hdr == IPPROTO_TCP && is_syn(ctx, offset + Ipv6Hdr::LEN)?;
    Ok(Packet {
        src,
        is_ipv6: true,
        tcp_syn,
    })
}

/// Reads the TCP flags; a TCP header cut short is [`Malformed`].
#[inline(always)]
fn is_syn(ctx: &XdpContext, offset: usize) -> Result<bool, Malformed> {
    let tcp: *const TcpHdr = ptr_at(ctx, offset)?;
    // SAFETY: the whole fixed TCP header (20 bytes) is inside the frame.
    let flags = unsafe { *tcp.cast::<u8>().add(TCP_FLAGS_BYTE) };
    Ok(flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
}

//! Frame parsing. Every read goes through [`ptr_at`], which checks it against
//! `data_end`; a frame that ends inside a header it announces is [`Malformed`].
//!
//! The parser must see every packet the kernel stack would deliver, whatever framing
//! the stack undoes on the way: the stack strips any number of 802.1Q/802.1ad priority
//! tags (VLAN ID 0) and walks IPv6 extension headers to the upper layer. So the parser
//! walks both too, each up to a constant bound, and a frame that goes on past the
//! bound is [`Malformed`] (dropped), never "not IP" (passed unjudged).

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use gateway_common::{
    consts::parse_limits,
    maps::{Addr4, Addr6, IPV4_MAPPED_PREFIX, addr4},
};
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
/// VLAN tags walked before a frame counts as malformed (see [`parse_limits`]).
const MAX_VLAN_TAGS: usize = parse_limits::VLAN_TAGS;
/// IPv6 extension headers walked before a chain counts as malformed.
const MAX_IPV6_EXT_HEADERS: usize = parse_limits::IPV6_EXT_HEADERS;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPV4_FRAGMENT_OFFSET_MASK: u16 = 0x1fff;
const IPV6_FRAGMENT_OFFSET_MASK: u16 = 0xfff8;
const TCP_FLAGS_BYTE: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The frame ends inside a header it announces, a header contradicts itself, or the
/// framing is deeper than the parser walks.
pub struct Malformed;

/// A source address as the list maps key it.
#[derive(Clone, Copy)]
pub enum Src {
    /// An IPv4 source, or an IPv4-mapped IPv6 one (`::ffff:a.b.c.d`), which the
    /// lists treat as that IPv4 address.
    V4(Addr4),
    /// Any other IPv6 source.
    V6(Addr6),
}

/// What the filter needs to know about an IP packet.
pub struct Packet {
    /// Source address.
    pub src: Src,
    /// The packet is IPv6 (rate-limited by prefix, even from a mapped source).
    pub is_ipv6: bool,
    /// TCP segment with SYN set and ACK clear: a new connection attempt.
    pub tcp_syn: bool,
}

/// A parsed frame.
pub enum Frame {
    /// IPv4 or IPv6, possibly behind VLAN tags.
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

#[inline(always)]
fn is_vlan(ether_type: u16) -> bool {
    ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD
}

/// Parses Ethernet, up to [`MAX_VLAN_TAGS`] VLAN tags and the IP header.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Frame, Malformed> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that the header lies inside the frame.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ether_type) {
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
        // More tags than the bound: the stack would go on stripping them.
        ETH_P_8021Q | ETH_P_8021AD => Err(Malformed),
        _ => Ok(Frame::NonIp),
    }
}

/// IPv4 with any header length (options included); the TCP header is read only for
/// first fragments, the only ones that carry it. A later fragment is judged by its
/// source alone: it cannot open a connection without its first fragment, which was
/// charged to the SYN bucket.
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, offset: usize) -> Result<Packet, Malformed> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, offset)?;
    // SAFETY: ptr_at checked that the fixed header lies inside the frame.
    let (vihl, total_len, proto, frags, v4) = unsafe {
        (
            (*ip).vihl,
            (*ip).tot_len,
            (*ip).proto,
            (*ip).frags,
            (*ip).src_addr,
        )
    };
    let header_len = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
        return Err(Malformed);
    }
    if ctx.data() + offset + header_len > ctx.data_end() {
        return Err(Malformed);
    }
    let first_fragment = u16::from_be_bytes(frags) & IPV4_FRAGMENT_OFFSET_MASK == 0;
    let tcp_syn = proto == IPPROTO_TCP
        && first_fragment
        && is_syn(
            ctx,
            offset + header_len,
            ip_end(offset, usize::from(u16::from_be_bytes(total_len))),
        )?;
    Ok(Packet {
        src: Src::V4(addr4(v4)),
        is_ipv6: false,
        tcp_syn,
    })
}

/// IPv6, walking up to [`MAX_IPV6_EXT_HEADERS`] extension headers (Hop-by-Hop,
/// Routing, Fragment, Destination Options, AH) to find TCP; a chain that is cut short
/// or longer than the bound is [`Malformed`]. A non-first fragment carries no TCP
/// header and is judged by its source alone, as for IPv4.
#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, offset: usize) -> Result<Packet, Malformed> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, offset)?;
    // SAFETY: ptr_at checked that the header lies inside the frame.
    let (version, payload_len, mut next_hdr, src) = unsafe {
        (
            (*ip).vcf[0] >> 4,
            (*ip).payload_len,
            (*ip).next_hdr,
            (*ip).src_addr,
        )
    };
    if version != 6 {
        return Err(Malformed);
    }
    let src = match src.first_chunk::<12>() {
        Some(prefix) if *prefix == IPV4_MAPPED_PREFIX => {
            Src::V4(addr4([src[12], src[13], src[14], src[15]]))
        }
        _ => Src::V6(src),
    };
    let packet = |tcp_syn| Packet {
        src,
        is_ipv6: true,
        tcp_syn,
    };
    let end = ip_end(
        offset + Ipv6Hdr::LEN,
        usize::from(u16::from_be_bytes(payload_len)),
    );
    let mut cursor = offset + Ipv6Hdr::LEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let header_len = match next_hdr {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                let header: *const [u8; 2] = ptr_at(ctx, cursor)?;
                // SAFETY: ptr_at checked both bytes.
                let [next, len] = unsafe { *header };
                // AH counts its length in 4-byte units less two, the others in
                // 8-byte units less one (RFC 4302, RFC 8200).
                let header_len = if next_hdr == IPPROTO_AH {
                    (usize::from(len) + 2) * 4
                } else {
                    (usize::from(len) + 1) * 8
                };
                next_hdr = next;
                header_len
            }
            IPPROTO_FRAGMENT => {
                let header: *const [u8; 8] = ptr_at(ctx, cursor)?;
                // SAFETY: ptr_at checked the whole (fixed-size) header.
                let [next, _, offset_hi, offset_lo, ..] = unsafe { *header };
                if u16::from_be_bytes([offset_hi, offset_lo]) & IPV6_FRAGMENT_OFFSET_MASK != 0 {
                    return Ok(packet(false));
                }
                next_hdr = next;
                8
            }
            IPPROTO_TCP => return is_syn(ctx, cursor, end).map(packet),
            _ => return Ok(packet(false)),
        };
        cursor += header_len;
        // A header that runs past the frame is cut short, like any other.
        if ctx.data() + cursor > ctx.data_end() {
            return Err(Malformed);
        }
    }
    match next_hdr {
        IPPROTO_TCP => is_syn(ctx, cursor, end).map(packet),
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT | IPPROTO_DSTOPTS | IPPROTO_AH => {
            Err(Malformed)
        }
        _ => Ok(packet(false)),
    }
}

/// Where the IP packet ends, from its length field; a zero length (a GRO super-packet
/// in generic mode, or a jumbogram) leaves only the frame's end as the bound.
#[inline(always)]
fn ip_end(start: usize, len: usize) -> usize {
    if len == 0 { usize::MAX } else { start + len }
}

/// Reads the TCP flags. A TCP header cut short by the frame or by the IP length is
/// [`Malformed`]: the stack would discard it, and a first fragment too short to hold
/// it would hide its flags in the fragment that follows (or in Ethernet padding).
#[inline(always)]
fn is_syn(ctx: &XdpContext, offset: usize, ip_end: usize) -> Result<bool, Malformed> {
    let tcp: *const TcpHdr = ptr_at(ctx, offset)?;
    if offset + TcpHdr::LEN > ip_end {
        return Err(Malformed);
    }
    // SAFETY: the whole fixed TCP header (20 bytes) is inside the frame.
    let flags = unsafe { *tcp.cast::<u8>().add(TCP_FLAGS_BYTE) };
    Ok(flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
}

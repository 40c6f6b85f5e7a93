//! Hand-built Ethernet frames, with correct IP and L4 checksums so that a real stack
//! accepts them (the XDP program never reads them). [`Built::boundaries`] lists where
//! each header ends, for truncation tests.

use std::net::IpAddr;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// TCI of a priority tag: PCP 5, VLAN ID 0 (the stack strips it and goes on).
pub const PRIORITY_TCI: u16 = 0xa000;
/// TCI of an ordinary tag: VLAN ID 7.
pub const VLAN_7_TCI: u16 = 0x0007;

/// An IPv6 extension header in front of the upper layer.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    /// Hop-by-Hop Options, 8 bytes of padding.
    HopByHop,
    /// Routing header, type 0 with no segments left (the stack skips it), 24 bytes.
    Routing,
    /// Destination Options, 16 bytes: a skippable option and padding.
    DestOpts,
    /// Fragment header: offset in 8-byte units, and whether more fragments follow.
    Fragment { offset: u16, more: bool },
    /// Authentication Header with a 12-byte ICV, 24 bytes.
    Ah,
}

impl Ext {
    fn next_header_value(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Routing => 43,
            Ext::Fragment { .. } => 44,
            Ext::Ah => 51,
            Ext::DestOpts => 60,
        }
    }

    /// The header's bytes, announcing `next` as what follows.
    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            // PadN options fill everything after the two-byte prefix.
            Ext::HopByHop => vec![next, 0, 1, 4, 0, 0, 0, 0],
            // An unknown option the receiver skips (type 0x1e: action 00), then PadN;
            // Linux refuses more than 7 bytes of padding in a row.
            Ext::DestOpts => vec![next, 1, 0x1e, 6, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0],
            Ext::Routing => {
                let mut bytes = vec![next, 2, 0, 0];
                bytes.resize(24, 0);
                bytes
            }
            Ext::Fragment { offset, more } => {
                let field = (offset << 3) | u16::from(more);
                let [hi, lo] = field.to_be_bytes();
                vec![next, 0, hi, lo, 0, 0, 0x12, 0x34]
            }
            Ext::Ah => {
                // Payload length 4: (4 + 2) * 4 = 24 bytes.
                let mut bytes = vec![next, 4, 0, 0, 0, 0, 0x10, 0x01, 0, 0, 0, 1];
                bytes.resize(24, 0x5c);
                bytes
            }
        }
    }
}

/// What follows the IP header.
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Udp,
    Tcp { flags: u8 },
}

/// A frame under construction.
#[derive(Clone, Debug)]
pub struct Frame {
    macs: [[u8; 6]; 2],
    /// (TPID, TCI) of each VLAN tag, outermost first.
    vlan_tags: Vec<(u16, u16)>,
    src: IpAddr,
    l4: L4,
    ipv4_options: Vec<u8>,
    /// IPv4 fragment offset (8-byte units) and more-fragments flag.
    ipv4_fragment: (u16, bool),
    ipv6_ext: Vec<Ext>,
    src_port: u16,
    payload: usize,
}

/// Bytes of a built frame and the offsets at which each header ends.
pub struct Built {
    pub bytes: Vec<u8>,
    /// Ends of: Ethernet, each VLAN tag, IP (with options), each IPv6 extension
    /// header, L4 header.
    pub boundaries: Vec<usize>,
    /// Whether the program must see the L4 header (TCP, first fragment).
    pub l4_required: bool,
}

impl Frame {
    /// A UDP datagram from `src` with a small payload.
    pub fn udp(src: IpAddr) -> Self {
        Self {
            macs: [[0x02, 0, 0, 0, 0, 1], [0x02, 0, 0, 0, 0, 2]],
            vlan_tags: Vec::new(),
            src,
            l4: L4::Udp,
            ipv4_options: Vec::new(),
            ipv4_fragment: (0, false),
            ipv6_ext: Vec::new(),
            src_port: 12345,
            payload: 18,
        }
    }

    /// A TCP segment from `src` with these flags.
    pub fn tcp(src: IpAddr, flags: u8) -> Self {
        Self {
            l4: L4::Tcp { flags },
            ..Self::udp(src)
        }
    }

    /// The same frame from another source of the same family.
    pub fn source(mut self, src: IpAddr) -> Self {
        assert_eq!(src.is_ipv6(), self.src.is_ipv6(), "same family");
        self.src = src;
        self
    }

    /// The L4 source port (the destination is 7000 for TCP, 7001 for UDP).
    pub fn src_port(mut self, port: u16) -> Self {
        self.src_port = port;
        self
    }

    /// Adds a VLAN tag with this TPID and VLAN ID 7 (outermost first).
    pub fn vlan(self, tpid: u16) -> Self {
        self.vlan_tci(tpid, VLAN_7_TCI)
    }

    /// Adds a priority tag (VLAN ID 0) with this TPID (outermost first).
    pub fn priority_tag(self, tpid: u16) -> Self {
        self.vlan_tci(tpid, PRIORITY_TCI)
    }

    /// Adds `count` priority tags of this TPID.
    pub fn priority_tags(self, tpid: u16, count: usize) -> Self {
        (0..count).fold(self, |frame, _| frame.priority_tag(tpid))
    }

    /// Adds a VLAN tag with this TPID and TCI (outermost first).
    pub fn vlan_tci(mut self, tpid: u16, tci: u16) -> Self {
        self.vlan_tags.push((tpid, tci));
        self
    }

    /// Adds an IPv6 extension header (in order, after those added before).
    pub fn ext(mut self, ext: Ext) -> Self {
        self.ipv6_ext.push(ext);
        self
    }

    /// Makes an IPv4 frame a fragment at `offset` (8-byte units).
    pub fn ipv4_fragment(mut self, offset: u16, more: bool) -> Self {
        self.ipv4_fragment = (offset, more);
        self
    }

    /// True when this is a fragment other than the first: it carries no L4 header.
    fn later_fragment(&self) -> bool {
        self.ipv4_fragment.0 != 0
            || self
                .ipv6_ext
                .iter()
                .any(|ext| matches!(ext, Ext::Fragment { offset, .. } if *offset != 0))
    }

    /// Destination and source MAC addresses, for frames a real interface must accept.
    pub fn macs(mut self, dst: [u8; 6], src: [u8; 6]) -> Self {
        self.macs = [dst, src];
        self
    }

    /// Bytes after the L4 header (the default makes a 60-byte UDP/IPv4 frame).
    pub fn payload(mut self, len: usize) -> Self {
        self.payload = len;
        self
    }

    /// IPv4 options (padded by the caller to a multiple of 4 bytes).
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        self.ipv4_options = options.to_vec();
        self
    }

    pub fn build(&self) -> Built {
        assert!(
            self.ipv6_ext.is_empty() || self.src.is_ipv6(),
            "extension headers are IPv6 only"
        );
        let mut bytes = Vec::new();
        let mut boundaries = Vec::new();
        bytes.extend_from_slice(&self.macs[0]);
        bytes.extend_from_slice(&self.macs[1]);
        let ether_type = match self.src {
            IpAddr::V4(_) => ETH_P_IPV4,
            IpAddr::V6(_) => ETH_P_IPV6,
        };
        let first_type = self.vlan_tags.first().map_or(ether_type, |tag| tag.0);
        bytes.extend_from_slice(&first_type.to_be_bytes());
        boundaries.push(bytes.len());
        for (index, (_, tci)) in self.vlan_tags.iter().enumerate() {
            let next = self
                .vlan_tags
                .get(index + 1)
                .map_or(ether_type, |tag| tag.0);
            bytes.extend_from_slice(&tci.to_be_bytes());
            bytes.extend_from_slice(&next.to_be_bytes());
            boundaries.push(bytes.len());
        }
        let (proto, l4_len) = match self.l4 {
            L4::Udp => (17u8, 8usize),
            L4::Tcp { .. } => (6, 20),
        };
        let l4_total = l4_len + self.payload;
        let mut ext_bytes = Vec::new();
        let mut ext_ends = Vec::new();
        for (index, ext) in self.ipv6_ext.iter().enumerate() {
            let next = self
                .ipv6_ext
                .get(index + 1)
                .map_or(proto, |ext| ext.next_header_value());
            ext_bytes.extend_from_slice(&ext.bytes(next));
            ext_ends.push(ext_bytes.len());
        }
        let l3 = bytes.len();
        match self.src {
            IpAddr::V4(src) => {
                let header_len = 20 + self.ipv4_options.len();
                let ihl = u8::try_from(header_len / 4).expect("IPv4 header length fits IHL");
                bytes.push(0x40 | ihl);
                bytes.push(0);
                let total = u16::try_from(header_len + l4_total).expect("small frame");
                bytes.extend_from_slice(&total.to_be_bytes());
                let (offset, more) = self.ipv4_fragment;
                let fragment = if offset == 0 && !more {
                    0x4000 // Don't fragment.
                } else {
                    offset | if more { 0x2000 } else { 0 }
                };
                bytes.extend_from_slice(&[0, 1]);
                bytes.extend_from_slice(&fragment.to_be_bytes());
                bytes.extend_from_slice(&[64, proto, 0, 0]);
                bytes.extend_from_slice(&src.octets());
                bytes.extend_from_slice(&[198, 18, 0, 1]);
                bytes.extend_from_slice(&self.ipv4_options);
            }
            IpAddr::V6(src) => {
                bytes.extend_from_slice(&[0x60, 0, 0, 0]);
                let len = u16::try_from(ext_bytes.len() + l4_total).expect("small frame");
                bytes.extend_from_slice(&len.to_be_bytes());
                let next = self
                    .ipv6_ext
                    .first()
                    .map_or(proto, |ext| ext.next_header_value());
                bytes.extend_from_slice(&[next, 64]);
                bytes.extend_from_slice(&src.octets());
                bytes.extend_from_slice(
                    &"2001:2::1"
                        .parse::<std::net::Ipv6Addr>()
                        .expect("valid")
                        .octets(),
                );
            }
        }
        boundaries.push(bytes.len());
        let ip_end = bytes.len();
        bytes.extend_from_slice(&ext_bytes);
        boundaries.extend(ext_ends.iter().map(|end| ip_end + end));
        let l4 = bytes.len();
        let src_port = self.src_port.to_be_bytes();
        match self.l4 {
            L4::Udp => {
                bytes.extend_from_slice(&src_port);
                bytes.extend_from_slice(&[0x1b, 0x59]);
                let len = u16::try_from(l4_total).expect("small frame");
                bytes.extend_from_slice(&len.to_be_bytes());
                bytes.extend_from_slice(&[0, 0]);
            }
            L4::Tcp { flags } => {
                bytes.extend_from_slice(&src_port);
                bytes.extend_from_slice(&[0x1b, 0x58, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags]);
                bytes.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
            }
        }
        boundaries.push(bytes.len());
        bytes.resize(bytes.len() + self.payload, 0xab);
        self.fill_checksums(&mut bytes, l3, l4, proto);
        Built {
            bytes,
            boundaries,
            l4_required: matches!(self.l4, L4::Tcp { .. }) && !self.later_fragment(),
        }
    }
}

impl Frame {
    /// Writes the IPv4 header checksum and the TCP or UDP checksum (over the
    /// pseudo-header of RFC 793 / RFC 8200) into a built frame.
    fn fill_checksums(&self, bytes: &mut [u8], l3: usize, l4: usize, proto: u8) {
        let l4_len = u32::try_from(bytes.len() - l4).expect("small frame");
        let mut pseudo = Vec::new();
        match self.src {
            IpAddr::V4(_) => {
                let header = l3..l3 + 20 + self.ipv4_options.len();
                let sum = checksum(&bytes[header]);
                bytes[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
                pseudo.extend_from_slice(&bytes[l3 + 12..l3 + 20]);
                pseudo.extend_from_slice(&[0, proto]);
                pseudo.extend_from_slice(&u16::try_from(l4_len).expect("small").to_be_bytes());
            }
            IpAddr::V6(_) => {
                pseudo.extend_from_slice(&bytes[l3 + 8..l3 + 40]);
                pseudo.extend_from_slice(&l4_len.to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, proto]);
            }
        }
        let at = l4 + if proto == 6 { 16 } else { 6 };
        pseudo.extend_from_slice(&bytes[l4..]);
        let sum = checksum(&pseudo);
        bytes[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }
}

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|pair| {
            u32::from(u16::from_be_bytes([
                pair[0],
                pair.get(1).copied().unwrap_or(0),
            ]))
        })
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded")
}

/// An ARP request: not IP, so the program must pass it untouched.
pub fn arp() -> Vec<u8> {
    let mut bytes = vec![0xff; 6];
    bytes.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    bytes.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    bytes.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    bytes.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 198, 18, 0, 2]);
    bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 18, 0, 1]);
    bytes.resize(60, 0);
    bytes
}

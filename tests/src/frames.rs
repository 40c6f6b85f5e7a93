//! Hand-built Ethernet frames. Checksums are left zero: the XDP program never reads
//! them. [`Frame::boundaries`] lists where each header ends, for truncation tests.

use std::net::IpAddr;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

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
    vlan_tpids: Vec<u16>,
    src: IpAddr,
    l4: L4,
    ipv4_options: Vec<u8>,
    payload: usize,
}

/// Bytes of a built frame and the offsets at which each header ends.
pub struct Built {
    pub bytes: Vec<u8>,
    /// Ends of: Ethernet, each VLAN tag, IP (with options), L4 header.
    pub boundaries: Vec<usize>,
    /// Whether the program must see the L4 header (TCP, first fragment).
    pub l4_required: bool,
}

impl Frame {
    /// A UDP datagram from `src` with a small payload.
    pub fn udp(src: IpAddr) -> Self {
        Self {
            macs: [[0x02, 0, 0, 0, 0, 1], [0x02, 0, 0, 0, 0, 2]],
            vlan_tpids: Vec::new(),
            src,
            l4: L4::Udp,
            ipv4_options: Vec::new(),
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

    /// Adds a VLAN tag with this TPID (outermost first).
    pub fn vlan(mut self, tpid: u16) -> Self {
        self.vlan_tpids.push(tpid);
        self
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
        let mut bytes = Vec::new();
        let mut boundaries = Vec::new();
        bytes.extend_from_slice(&self.macs[0]);
        bytes.extend_from_slice(&self.macs[1]);
        let ether_type = match self.src {
            IpAddr::V4(_) => ETH_P_IPV4,
            IpAddr::V6(_) => ETH_P_IPV6,
        };
        let mut types = self.vlan_tpids.clone();
        types.push(ether_type);
        bytes.extend_from_slice(&types[0].to_be_bytes());
        boundaries.push(bytes.len());
        for next in &types[1..] {
            bytes.extend_from_slice(&[0x00, 0x07]);
            bytes.extend_from_slice(&next.to_be_bytes());
            boundaries.push(bytes.len());
        }
        let (proto, l4_len) = match self.l4 {
            L4::Udp => (17u8, 8usize),
            L4::Tcp { .. } => (6, 20),
        };
        let l4_total = l4_len + self.payload;
        match self.src {
            IpAddr::V4(src) => {
                let header_len = 20 + self.ipv4_options.len();
                let ihl = u8::try_from(header_len / 4).expect("IPv4 header length fits IHL");
                bytes.push(0x40 | ihl);
                bytes.push(0);
                let total = u16::try_from(header_len + l4_total).expect("small frame");
                bytes.extend_from_slice(&total.to_be_bytes());
                bytes.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
                bytes.extend_from_slice(&src.octets());
                bytes.extend_from_slice(&[198, 18, 0, 1]);
                bytes.extend_from_slice(&self.ipv4_options);
            }
            IpAddr::V6(src) => {
                bytes.extend_from_slice(&[0x60, 0, 0, 0]);
                let len = u16::try_from(l4_total).expect("small frame");
                bytes.extend_from_slice(&len.to_be_bytes());
                bytes.extend_from_slice(&[proto, 64]);
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
        match self.l4 {
            L4::Udp => {
                bytes.extend_from_slice(&[0x30, 0x39, 0x1b, 0x59]);
                let len = u16::try_from(l4_total).expect("small frame");
                bytes.extend_from_slice(&len.to_be_bytes());
                bytes.extend_from_slice(&[0, 0]);
            }
            L4::Tcp { flags } => {
                bytes.extend_from_slice(&[
                    0x30, 0x39, 0x1b, 0x58, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags,
                ]);
                bytes.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
            }
        }
        boundaries.push(bytes.len());
        bytes.resize(bytes.len() + self.payload, 0xab);
        Built {
            bytes,
            boundaries,
            l4_required: matches!(self.l4, L4::Tcp { .. }),
        }
    }
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

//! Addresses and CIDRs as the operator writes them and as the maps store them.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use gateway_common::maps::{Addr4, Addr6, IPV4_MAPPED_PREFIX, addr4};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// An IPv4 or IPv6 network; a bare address is a host network (/32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(IpNet);

/// The input is not an address or a CIDR, or its host bits are set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error(
        "'{0}' is not an IP address or CIDR (expected e.g. 198.18.0.7, 198.18.0.0/24 or 2001:2::/48)"
    )]
    Invalid(String),
    #[error("'{input}' has host bits set after the /{prefix} prefix: did you mean {network}?")]
    HostBits {
        input: String,
        prefix: u8,
        network: String,
    },
}

/// Where a CIDR lives in the kernel: the IPv4 maps, with 4-byte keys and prefixes
/// up to 32, or the IPv6 maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKey {
    V4 { prefix_len: u32, addr: Addr4 },
    V6 { prefix_len: u32, addr: Addr6 },
}

/// An IPv4-mapped IPv6 network (`::ffff:a.b.c.d/n`, n ≥ 96) as the IPv4 network it
/// stands for: the kernel looks mapped sources up in the IPv4 maps, so that is
/// where such an entry must go (and how it reads back).
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

impl Cidr {
    /// A host network for one address (an IPv4-mapped IPv6 address counts as its
    /// IPv4 address).
    pub fn host(addr: IpAddr) -> Self {
        Self(IpNet::from(addr.to_canonical()))
    }

    /// The /`prefix_len` network around `addr` (the whole prefix when longer
    /// than the family allows).
    pub fn network_of(addr: IpAddr, prefix_len: u8) -> Self {
        let addr = addr.to_canonical();
        IpNet::new(addr, prefix_len).map_or_else(|_| Self::host(addr), |net| Self(net.trunc()))
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.0.addr()
    }

    /// Prefix length within its own family.
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    /// Whether `ip` is in the network; an IPv4-mapped IPv6 address (from a
    /// dual-stack socket) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }

    /// Whether `other` is this network or a longer prefix inside it (same family).
    pub fn covers(&self, other: &Cidr) -> bool {
        self.0.contains(&other.0)
    }

    /// The next shorter prefix containing this one; `None` for /0.
    pub fn parent(&self) -> Option<Cidr> {
        let len = self.0.prefix_len().checked_sub(1)?;
        IpNet::new(self.0.addr(), len)
            .ok()
            .map(|net| Self(net.trunc()))
    }

    /// The last network in `Ord` order that this one covers: its highest address as a
    /// host. With [`Cidr`]'s order (address, then prefix length) a network and
    /// everything inside it are exactly the range from the network to this.
    pub fn last_covered(&self) -> Cidr {
        Self(IpNet::from(self.0.broadcast()))
    }

    /// True for a single address (/32 or /128).
    pub fn is_host(&self) -> bool {
        self.0.prefix_len() == self.0.max_prefix_len()
    }

    /// The map key: which family's maps, the prefix length and the address.
    pub fn key(&self) -> MapKey {
        match self.0 {
            IpNet::V4(net) => MapKey::V4 {
                prefix_len: u32::from(net.prefix_len()),
                addr: addr4(net.network().octets()),
            },
            IpNet::V6(net) => MapKey::V6 {
                prefix_len: u32::from(net.prefix_len()),
                addr: net.network().octets(),
            },
        }
    }

    /// Rebuilds a CIDR from an IPv4 map key; `None` for a prefix longer than 32.
    pub fn from_v4_key(prefix_len: u32, addr: Addr4) -> Option<Self> {
        let ip = IpAddr::V4(Ipv4Addr::from(addr.to_ne_bytes()));
        IpNet::new(ip, u8::try_from(prefix_len).ok()?)
            .ok()
            .map(|net| Self(net.trunc()))
    }

    /// Rebuilds a CIDR from an IPv6 map key; `None` for a prefix longer than 128.
    pub fn from_v6_key(prefix_len: u32, addr: Addr6) -> Option<Self> {
        let ip = IpAddr::V6(Ipv6Addr::from(addr));
        IpNet::new(ip, u8::try_from(prefix_len).ok()?)
            .ok()
            .map(|net| Self(canonical(net.trunc())))
    }
}

/// Maps an IPv4 address into 16 bytes (`::ffff:a.b.c.d`), the form rate-limit
/// events name IPv4 sources in.
pub fn map_v4(octets: [u8; 4]) -> Addr6 {
    let mut addr = [0; 16];
    addr[..12].copy_from_slice(&IPV4_MAPPED_PREFIX);
    addr[12..].copy_from_slice(&octets);
    addr
}

/// The address 16 bytes stand for (IPv4 for mapped ones), as in a rate-limit event.
pub fn addr_to_ip(addr: Addr6) -> IpAddr {
    match Ipv6Addr::from(addr).to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(Ipv6Addr::from(addr)),
    }
}

/// The 16 bytes of an address (IPv4 mapped), as a rate-limit event names it.
pub fn ip_to_addr(ip: IpAddr) -> Addr6 {
    match ip {
        IpAddr::V4(v4) => map_v4(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The mask that keeps the first `prefix` bits of an IPv6 address.
pub fn ipv6_mask(prefix: u8) -> Addr6 {
    let bits = u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0);
    bits.to_be_bytes()
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let input = input.trim();
        if let Ok(ip) = input.parse::<IpAddr>() {
            return Ok(Self::host(ip));
        }
        let net: IpNet = input
            .parse()
            .map_err(|_| CidrError::Invalid(input.to_owned()))?;
        if net.addr() != net.network() {
            return Err(CidrError::HostBits {
                input: input.to_owned(),
                prefix: net.prefix_len(),
                network: net.trunc().to_string(),
            });
        }
        Ok(Self(canonical(net)))
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Cidr> for String {
    fn from(cidr: Cidr) -> Self {
        cidr.to_string()
    }
}

impl fmt::Display for Cidr {
    /// Hosts print as bare addresses, networks in CIDR notation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            self.0.addr().fmt(f)
        } else {
            self.0.fmt(f)
        }
    }
}

impl From<Ipv4Addr> for Cidr {
    fn from(addr: Ipv4Addr) -> Self {
        Self::host(IpAddr::V4(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_and_networks() {
        let host: Cidr = "198.18.0.7".parse().expect("host");
        assert!(host.is_host());
        assert_eq!(host.to_string(), "198.18.0.7");
        let net: Cidr = "2001:2::/48".parse().expect("network");
        assert_eq!(net.prefix_len(), 48);
        assert_eq!(net.to_string(), "2001:2::/48");
    }

    #[test]
    fn rejects_garbage_and_host_bits() {
        assert!(matches!(
            "198.18.0.300".parse::<Cidr>(),
            Err(CidrError::Invalid(_))
        ));
        assert!(matches!(
            "198.18.0.0/33".parse::<Cidr>(),
            Err(CidrError::Invalid(_))
        ));
        let err = "198.18.0.7/24".parse::<Cidr>().expect_err("host bits");
        assert!(
            err.to_string().contains("did you mean 198.18.0.0/24"),
            "{err}"
        );
    }

    #[test]
    fn keys_round_trip_for_both_families() {
        for text in [
            "198.18.0.0/15",
            "198.18.3.4",
            "2001:2::/48",
            "2001:2::9",
            "0.0.0.0/0",
        ] {
            let cidr: Cidr = text.parse().expect("valid");
            let back = match cidr.key() {
                MapKey::V4 { prefix_len, addr } => Cidr::from_v4_key(prefix_len, addr),
                MapKey::V6 { prefix_len, addr } => Cidr::from_v6_key(prefix_len, addr),
            };
            assert_eq!(back, Some(cidr), "{text}");
        }
        let key = "198.18.0.0/15".parse::<Cidr>().expect("valid").key();
        assert_eq!(
            key,
            MapKey::V4 {
                prefix_len: 15,
                addr: addr4([198, 18, 0, 0])
            }
        );
        assert_eq!(Cidr::from_v4_key(33, 0), None);
        assert_eq!(Cidr::from_v6_key(129, [0; 16]), None);
    }

    /// The kernel looks IPv4-mapped sources up in the IPv4 maps, so a mapped
    /// address or network is the IPv4 one, however it was written.
    #[test]
    fn ipv4_mapped_entries_are_ipv4() {
        let v4: Cidr = "198.18.0.7".parse().expect("valid");
        assert_eq!("::ffff:198.18.0.7".parse::<Cidr>(), Ok(v4));
        assert_eq!(Cidr::host("::ffff:198.18.0.7".parse().expect("ip")), v4);
        let net: Cidr = "::ffff:198.18.0.0/112".parse().expect("valid");
        assert_eq!(net.to_string(), "198.18.0.0/16");
        assert!(matches!(net.key(), MapKey::V4 { prefix_len: 16, .. }));
        let mut mapped = [0u8; 16];
        mapped[10..].copy_from_slice(&[0xff, 0xff, 198, 18, 0, 7]);
        assert_eq!(Cidr::from_v6_key(128, mapped), Some(v4));
        // A wider IPv6 prefix stays IPv6: it names IPv6 sources only.
        let wide: Cidr = "::/64".parse().expect("valid");
        assert!(matches!(wide.key(), MapKey::V6 { prefix_len: 64, .. }));
    }

    #[test]
    fn ipv6_masks() {
        assert_eq!(ipv6_mask(0), [0; 16]);
        assert_eq!(ipv6_mask(128), [0xff; 16]);
        let m64 = ipv6_mask(64);
        assert_eq!(&m64[..8], &[0xff; 8]);
        assert_eq!(&m64[8..], &[0; 8]);
        assert_eq!(ipv6_mask(60)[7], 0xf0);
    }
}

//! The XDP attach mode the kernel actually runs, asked of the kernel itself
//! (rtnetlink `RTM_GETLINK`, the interface's `IFLA_XDP` attributes): with
//! `mode = auto` the requested mode says nothing about whether the driver took
//! the program natively or the kernel fell back to generic XDP.

use std::{io, mem::size_of};

use serde::Serialize;

/// How the kernel runs an XDP program on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelMode {
    /// In the driver (`XDP_ATTACHED_DRV`).
    Native,
    /// In the kernel stack, after the socket buffer is built (`XDP_ATTACHED_SKB`).
    Generic,
    /// On the NIC (`XDP_ATTACHED_HW`).
    Offload,
}

impl KernelMode {
    pub fn as_str(self) -> &'static str {
        match self {
            KernelMode::Native => "native",
            KernelMode::Generic => "generic",
            KernelMode::Offload => "offload",
        }
    }
}

// From <linux/if_link.h> and <linux/netlink.h>; the libc crate does not carry the
// IFLA_XDP_* nest.
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_SKB: u8 = 2;
const XDP_ATTACHED_HW: u8 = 3;
const XDP_ATTACHED_MULTI: u8 = 4;
/// An attribute type without the nested / byte-order flag bits.
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDR: usize = 16;
const IFINFOMSG: usize = 16;

/// Every XDP program attached to interface `ifindex` with the mode it runs in
/// (more than one only when programs are attached in several modes at once).
pub fn attached(ifindex: u32) -> io::Result<Vec<(KernelMode, u32)>> {
    let reply = get_link(ifindex)?;
    parse_link(&reply).ok_or_else(truncated)
}

/// The mode program `program_id` runs in on interface `ifindex`; `None` when
/// that program is not attached there.
pub fn mode_of(ifindex: u32, program_id: u32) -> io::Result<Option<KernelMode>> {
    Ok(attached(ifindex)?
        .into_iter()
        .find(|(_, id)| *id == program_id)
        .map(|(mode, _)| mode))
}

/// A netlink socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_GENERIC`).
pub(super) fn netlink_socket(protocol: i32) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: socket(2) has no memory-safety preconditions.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor the caller owns from here on.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// The `RTM_NEWLINK` message the kernel answers `RTM_GETLINK` with.
fn get_link(ifindex: u32) -> io::Result<Vec<u8>> {
    let fd = netlink_socket(libc::NETLINK_ROUTE)?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let index = i32::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
    let mut request = [0u8; NLMSG_HDR + IFINFOMSG];
    let len = u32::try_from(request.len()).unwrap_or(u32::MAX);
    request[0..4].copy_from_slice(&len.to_ne_bytes());
    request[4..6].copy_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
    let flags = u16::try_from(libc::NLM_F_REQUEST).unwrap_or(1);
    request[6..8].copy_from_slice(&flags.to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence number
    // ifinfomsg: family AF_UNSPEC, type 0, then the index.
    request[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&index.to_ne_bytes());
    // SAFETY: the buffer is valid for its length; the kernel is the default peer.
    let sent = unsafe { libc::send(raw, request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: the buffer is valid for writes of its length.
        let got = unsafe { libc::recv(raw, buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        let got = usize::try_from(got).map_err(|_| io::Error::last_os_error())?;
        let mut rest = &buffer[..got];
        while rest.len() >= NLMSG_HDR {
            let len = read_u32(rest, 0) as usize;
            if len < NLMSG_HDR || len > rest.len() {
                return Err(truncated());
            }
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            let message = &rest[..len];
            if kind == libc::NLMSG_ERROR as u16 {
                let code = i32::from_ne_bytes(
                    message
                        .get(NLMSG_HDR..NLMSG_HDR + 4)
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(truncated)?,
                );
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
            } else if kind == libc::RTM_NEWLINK {
                return Ok(message.to_vec());
            }
            rest = &rest[align(len).min(rest.len())..];
        }
    }
}

/// The XDP programs in an `RTM_NEWLINK` message; `None` when it is malformed.
fn parse_link(message: &[u8]) -> Option<Vec<(KernelMode, u32)>> {
    let attributes = message.get(NLMSG_HDR + IFINFOMSG..)?;
    let xdp = attributes_of(attributes)
        .find(|(kind, _)| *kind == IFLA_XDP)?
        .1;
    let mut attached = None;
    let mut ids = [0u32; 8];
    for (kind, value) in attributes_of(xdp) {
        match kind {
            IFLA_XDP_ATTACHED => attached = value.first().copied(),
            IFLA_XDP_PROG_ID..=IFLA_XDP_HW_PROG_ID if value.len() >= 4 => {
                ids[usize::from(kind)] = read_u32(value, 0);
            }
            _ => {}
        }
    }
    let single = |mode| vec![(mode, ids[usize::from(IFLA_XDP_PROG_ID)])];
    Some(match attached? {
        XDP_ATTACHED_DRV => single(KernelMode::Native),
        XDP_ATTACHED_SKB => single(KernelMode::Generic),
        XDP_ATTACHED_HW => single(KernelMode::Offload),
        XDP_ATTACHED_MULTI => [
            (KernelMode::Native, IFLA_XDP_DRV_PROG_ID),
            (KernelMode::Generic, IFLA_XDP_SKB_PROG_ID),
            (KernelMode::Offload, IFLA_XDP_HW_PROG_ID),
        ]
        .into_iter()
        .map(|(mode, kind)| (mode, ids[usize::from(kind)]))
        .filter(|(_, id)| *id != 0)
        .collect(),
        _ => Vec::new(),
    })
}

/// The (type, payload) netlink attributes in `bytes`, stopping at a malformed one.
fn attributes_of(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > bytes.len() {
            return None;
        }
        let value = &bytes[4..len];
        bytes = &bytes[align(len).min(bytes.len())..];
        Some((kind, value))
    })
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + size_of::<u32>())
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = u16::try_from(4 + value.len()).expect("small");
        let mut out = [len.to_ne_bytes(), kind.to_ne_bytes()].concat();
        out.extend_from_slice(value);
        out.resize(align(out.len()), 0);
        out
    }

    fn link(xdp: &[Vec<u8>]) -> Vec<u8> {
        let mut message = vec![0u8; NLMSG_HDR + IFINFOMSG];
        message.extend(attribute(3, b"veth0\0")); // IFLA_IFNAME
        message.extend(attribute(IFLA_XDP | 0x8000, &xdp.concat()));
        message
    }

    #[test]
    fn reads_the_mode_the_kernel_reports() {
        let generic = link(&[
            attribute(IFLA_XDP_ATTACHED, &[XDP_ATTACHED_SKB]),
            attribute(IFLA_XDP_PROG_ID, &42u32.to_ne_bytes()),
        ]);
        assert_eq!(parse_link(&generic), Some(vec![(KernelMode::Generic, 42)]));
        let multi = link(&[
            attribute(IFLA_XDP_ATTACHED, &[XDP_ATTACHED_MULTI]),
            attribute(IFLA_XDP_DRV_PROG_ID, &7u32.to_ne_bytes()),
            attribute(IFLA_XDP_SKB_PROG_ID, &9u32.to_ne_bytes()),
        ]);
        assert_eq!(
            parse_link(&multi),
            Some(vec![(KernelMode::Native, 7), (KernelMode::Generic, 9)])
        );
        let none = link(&[attribute(IFLA_XDP_ATTACHED, &[0])]);
        assert_eq!(parse_link(&none), Some(Vec::new()));
        // Cut off anywhere: no panic, and no mode made up.
        for end in 0..generic.len() {
            assert_eq!(parse_link(&generic[..end]), None, "cut at {end}");
        }
    }

    #[test]
    fn asks_the_kernel_about_loopback() {
        // Loopback exists in every namespace and has no XDP program here.
        assert_eq!(attached(1).expect("RTM_GETLINK on lo"), Vec::new());
        let err = attached(u32::try_from(i32::MAX).expect("fits")).expect_err("no such ifindex");
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{err}");
    }
}

//! What `gateway doctor` asks the kernel before anything is attached: whether it
//! has the map and program types the object uses, whether the verifier accepts the
//! real program, and whether an interface's driver runs XDP natively (the netdev
//! generic-netlink family's `xdp-features`, Linux 6.3 and later).

use std::{
    io,
    os::fd::{AsRawFd as _, OwnedFd},
};

use aya::{
    EbpfLoader,
    maps::MapType,
    programs::ProgramType,
    sys::{is_map_supported, is_program_supported},
};

use super::{LOAD_CAPS, XdpError, attach::xdp_program, require};

/// The map types `gateway-ebpf` declares, with the names `bpftool` uses.
const MAP_TYPES: [(MapType, &str); 6] = [
    (MapType::Hash, "hash"),
    (MapType::LruHash, "lru_hash"),
    (MapType::LpmTrie, "lpm_trie"),
    (MapType::Array, "array"),
    (MapType::PerCpuArray, "percpu_array"),
    (MapType::RingBuf, "ringbuf"),
];

/// Each feature the program needs (the XDP program type, then its map types)
/// and whether the kernel has it; `Err` when the probe itself failed (usually:
/// no CAP_BPF).
pub fn features() -> Vec<(&'static str, Result<bool, String>)> {
    let mut found = vec![(
        "prog_type xdp",
        is_program_supported(ProgramType::Xdp).map_err(|err| err.to_string()),
    )];
    for (map_type, name) in MAP_TYPES {
        found.push((
            name,
            is_map_supported(map_type).map_err(|err| err.to_string()),
        ));
    }
    found
}

/// Loads the real program through the verifier, with private maps that vanish
/// with it: nothing is pinned or attached.
pub fn verify() -> Result<(), XdpError> {
    require("loading the XDP program", &LOAD_CAPS)?;
    let mut ebpf = EbpfLoader::new()
        .load(super::attach::OBJECT)
        .map_err(|err| XdpError::Load(err.to_string()))?;
    xdp_program(&mut ebpf)?
        .load()
        .map_err(|err| XdpError::Load(err.to_string()))
}

// From <linux/genetlink.h> and <linux/netdev.h>.
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
/// `NETDEV_XDP_ACT_BASIC`: the driver runs XDP_PASS/DROP/ABORTED/TX natively.
pub const XDP_ACT_BASIC: u64 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const HEADERS: usize = 16 + 4;

/// The driver's `xdp-features` bits for interface `ifindex`; `Ok(None)` when the
/// kernel has no netdev family to ask (before 6.3).
pub fn xdp_features(ifindex: u32) -> io::Result<Option<u64>> {
    let socket = super::kernel_mode::netlink_socket(libc::NETLINK_GENERIC)?;
    let reply = match request(
        &socket,
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        CTRL_ATTR_FAMILY_NAME,
        b"netdev\0",
    ) {
        Ok(reply) => reply,
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(err) => return Err(err),
    };
    let Some(family) = attribute(&reply, CTRL_ATTR_FAMILY_ID) else {
        return Ok(None);
    };
    let family = u16::from_ne_bytes(fixed(family)?);
    let reply = request(
        &socket,
        family,
        NETDEV_CMD_DEV_GET,
        NETDEV_A_DEV_IFINDEX,
        &ifindex.to_ne_bytes(),
    )?;
    attribute(&reply, NETDEV_A_DEV_XDP_FEATURES)
        .map(|bits| fixed(bits).map(u64::from_ne_bytes))
        .transpose()
}

fn fixed<const N: usize>(bytes: &[u8]) -> io::Result<[u8; N]> {
    bytes
        .get(..N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "short generic netlink attribute",
            )
        })
}

/// Sends one generic-netlink request carrying one attribute and returns the
/// attributes of the reply (or its error).
fn request(socket: &OwnedFd, family: u16, cmd: u8, attr: u16, value: &[u8]) -> io::Result<Vec<u8>> {
    let attr_len = 4 + value.len();
    let total = HEADERS + attr_len.next_multiple_of(4);
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(&u32::try_from(total).unwrap_or(0).to_ne_bytes());
    message.extend_from_slice(&family.to_ne_bytes());
    message.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    message.extend_from_slice(&[0; 8]); // sequence, port id
    message.extend_from_slice(&[cmd, 1, 0, 0]); // command, version, reserved
    message.extend_from_slice(&u16::try_from(attr_len).unwrap_or(0).to_ne_bytes());
    message.extend_from_slice(&attr.to_ne_bytes());
    message.extend_from_slice(value);
    message.resize(total, 0);
    // SAFETY: the buffer is valid for its length; the kernel is the default peer.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = vec![0u8; 16384];
    // SAFETY: the buffer is valid and writable for its length.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    reply.truncate(n);
    let kind = reply.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    if kind == Some(NLMSG_ERROR) {
        let code = i32::from_ne_bytes(fixed(reply.get(16..).unwrap_or_default())?);
        return Err(io::Error::from_raw_os_error(-code));
    }
    Ok(reply.get(HEADERS..).unwrap_or_default().to_vec())
}

/// The payload of attribute `kind` among netlink attributes.
fn attribute(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let this = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        let payload = attrs.get(4..len)?;
        if this == kind {
            return Some(payload);
        }
        attrs = attrs.get(len.next_multiple_of(4)..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_attributes_and_stops_at_truncation() {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&6u16.to_ne_bytes());
        attrs.extend_from_slice(&1u16.to_ne_bytes());
        attrs.extend_from_slice(&[0x10, 0x00, 0, 0]);
        attrs.extend_from_slice(&12u16.to_ne_bytes());
        attrs.extend_from_slice(&(3u16 | 0x8000).to_ne_bytes());
        attrs.extend_from_slice(&7u64.to_ne_bytes());
        assert_eq!(attribute(&attrs, 1), Some(&[0x10, 0][..]));
        assert_eq!(attribute(&attrs, 3), Some(&7u64.to_ne_bytes()[..]));
        assert_eq!(attribute(&attrs, 9), None);
        // A length past the end is not read.
        assert_eq!(attribute(&attrs[..10], 3), None);
    }
}

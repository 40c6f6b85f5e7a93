//! Raw Ethernet frames sent through an `AF_PACKET` socket, for framings no ordinary
//! socket produces (priority tags on a kernel without 802.1Q, extension headers in
//! front of an IPv6 SYN), and the TCP answers they draw.

use std::{
    collections::HashSet,
    ffi::CString,
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use crate::net::NetNs;

/// What one [`send_syns`] saw.
pub struct SynReport {
    /// Distinct source ports that drew a SYN-ACK.
    pub answered: usize,
    /// How long the sending took (a rate limit refills meanwhile).
    pub sending: Duration,
}

/// Sends `syns` (TCP SYNs to a listening port, each with its source port) out of
/// `iface` in `ns`, then listens on it for `wait` and counts the ports among them that
/// got a SYN-ACK (answers to other ports, such as retransmissions for earlier SYNs,
/// do not count).
pub fn send_syns(ns: &NetNs, iface: &str, syns: Vec<(u16, Vec<u8>)>, wait: Duration) -> SynReport {
    let iface = iface.to_owned();
    ns.run(move || {
        let socket = open(&iface).unwrap_or_else(|err| panic!("AF_PACKET on {iface}: {err}"));
        let start = Instant::now();
        for (_, frame) in &syns {
            // SAFETY: a valid socket and a buffer of the given length.
            let sent =
                unsafe { libc::send(socket.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            assert_eq!(
                usize::try_from(sent).ok(),
                Some(frame.len()),
                "sending a raw frame: {}",
                io::Error::last_os_error()
            );
        }
        let sending = start.elapsed();
        let deadline = Instant::now() + wait;
        let mut answered = HashSet::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            // SAFETY: a valid socket and a buffer of the given length.
            let got =
                unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if let Ok(len) = usize::try_from(got)
                && let Some(port) = syn_ack_port(&buf[..len])
                && syns.iter().any(|(sent, _)| *sent == port)
            {
                answered.insert(port);
            }
        }
        SynReport {
            answered: answered.len(),
            sending,
        }
    })
}

/// A packet socket bound to `iface`, receiving everything, with a short receive
/// timeout so the listening loop can watch its deadline.
fn open(iface: &str) -> io::Result<OwnedFd> {
    let all = u16::try_from(libc::ETH_P_ALL).expect("fits").to_be();
    // SAFETY: plain socket creation; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh, valid descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = CString::new(iface).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = u16::try_from(libc::AF_PACKET).expect("fits");
    addr.sll_protocol = all;
    addr.sll_ifindex = i32::try_from(index).map_err(io::Error::other)?;
    // SAFETY: the address is a sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const addr).cast(),
            u32::try_from(size_of::<libc::sockaddr_ll>()).expect("fits"),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            u32::try_from(size_of::<libc::timeval>()).expect("fits"),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// The destination port of `frame` if it is a TCP SYN-ACK, untagged IPv4 or IPv6
/// without extension headers (as the gateway's stack answers).
fn syn_ack_port(frame: &[u8]) -> Option<u16> {
    let ether_type = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let tcp = match ether_type {
        0x0800 if *frame.get(23)? == 6 => 14 + usize::from(frame.get(14)? & 0x0f) * 4,
        0x86dd if *frame.get(20)? == 6 => 14 + 40,
        _ => return None,
    };
    let flags = *frame.get(tcp + 13)?;
    if flags & 0x12 != 0x12 {
        return None;
    }
    Some(u16::from_be_bytes([
        *frame.get(tcp + 2)?,
        *frame.get(tcp + 3)?,
    ]))
}

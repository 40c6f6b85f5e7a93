//! The systemd notify protocol (`sd_notify(3)`), so the unit can be `Type=notify`:
//! READY=1 once the gateway filters and serves, RELOADING=1 … READY=1 around a
//! reload, STOPPING=1 when it drains, and WATCHDOG=1 from the main loop, so a
//! wedged loop gets the daemon restarted. A datagram per message to
//! `$NOTIFY_SOCKET`; nothing happens when that is unset.

use std::{
    io,
    os::{linux::net::SocketAddrExt as _, unix::net::UnixDatagram},
    time::Duration,
};

/// Where the messages go, read once at start.
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (honoured only when
    /// `$WATCHDOG_PID` is unset or this process).
    pub fn from_env() -> Self {
        let watchdog_for_us =
            std::env::var("WATCHDOG_PID").map_or(true, |pid| pid.parse() == Ok(std::process::id()));
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse().ok())
            .filter(|&usec: &u64| usec > 0 && watchdog_for_us)
            .map(Duration::from_micros);
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .and_then(|path| Self::connect(&path).ok());
        Self { socket, watchdog }
    }

    /// A notifier for the socket at `path` (`@name`: an abstract socket).
    pub fn connect(path: &str) -> io::Result<(UnixDatagram, std::os::unix::net::SocketAddr)> {
        let addr = match path.strip_prefix('@') {
            Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name)?,
            None => std::os::unix::net::SocketAddr::from_pathname(path)?,
        };
        Ok((UnixDatagram::unbound()?, addr))
    }

    /// How often to send WATCHDOG=1: half the unit's `WatchdogSec`.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| timeout / 2)
    }

    /// Sends one message; a failure is logged, never fatal (systemd may be gone
    /// while the gateway keeps filtering).
    fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.socket
            && let Err(err) = socket.send_to_addr(message.as_bytes(), addr)
        {
            tracing::warn!(%err, message, "sd_notify to $NOTIFY_SOCKET failed");
        }
    }

    pub fn ready(&self) {
        self.send("READY=1\nSTATUS=running");
    }

    /// Before a reload; [`ready`](Self::ready) after it, whatever its verdict.
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

/// CLOCK_MONOTONIC in microseconds, as systemd compares RELOADING=1 against it.
fn monotonic_usec() -> u128 {
    // SAFETY: timespec is plain old data, and clock_gettime only writes it.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `now` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
    .as_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_each_message_as_one_datagram() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier {
            socket: Some(Notifier::connect(path.to_str().expect("UTF-8")).expect("connect")),
            watchdog: Some(Duration::from_secs(10)),
        };
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(5)));
        let mut buf = [0; 256];
        let mut next = || {
            let n = listener.recv(&mut buf).expect("recv");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        notifier.ready();
        assert_eq!(next(), "READY=1\nSTATUS=running");
        notifier.reloading();
        let reloading = next();
        let usec: u128 = reloading
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .and_then(|usec| usec.parse().ok())
            .unwrap_or_else(|| panic!("{reloading:?}"));
        assert!(usec > 0 && usec <= monotonic_usec());
        notifier.stopping();
        assert_eq!(next(), "STOPPING=1");
        notifier.watchdog();
        assert_eq!(next(), "WATCHDOG=1");
        let abstract_name = format!("@gateway-notify-test-{}", std::process::id());
        let listener = UnixDatagram::bind_addr(
            &std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name[1..])
                .expect("abstract"),
        )
        .expect("bind abstract");
        let notifier = Notifier {
            socket: Some(Notifier::connect(&abstract_name).expect("connect")),
            watchdog: None,
        };
        notifier.ready();
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=running");
    }
}

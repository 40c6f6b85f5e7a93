//! Linux capabilities instead of the uid: what the gateway needs is CAP_BPF,
//! CAP_NET_ADMIN and CAP_PERFMON (and CAP_NET_BIND_SERVICE for a port below 1024),
//! so it runs as an unprivileged user with exactly those, and a missing one is
//! named in the error rather than "run as root".

use std::{fmt, fs, io, os::unix::fs::MetadataExt as _, path::Path};

/// One capability the gateway asks about (numbers from `linux/capability.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    NetBindService,
    NetAdmin,
    SysAdmin,
    Perfmon,
    Bpf,
}

impl Cap {
    /// The capabilities `gateway run` needs with XDP, and the shipped unit grants
    /// (with [`Cap::NetBindService`]).
    pub const XDP: [Cap; 3] = [Cap::Bpf, Cap::NetAdmin, Cap::Perfmon];

    fn number(self) -> u32 {
        match self {
            Cap::NetBindService => 10,
            Cap::NetAdmin => 12,
            Cap::SysAdmin => 21,
            Cap::Perfmon => 38,
            Cap::Bpf => 39,
        }
    }

    /// The name as `capabilities(7)` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Cap::NetBindService => "CAP_NET_BIND_SERVICE",
            Cap::NetAdmin => "CAP_NET_ADMIN",
            Cap::SysAdmin => "CAP_SYS_ADMIN",
            Cap::Perfmon => "CAP_PERFMON",
            Cap::Bpf => "CAP_BPF",
        }
    }

    /// Whether this thread holds the capability in its effective set (false when
    /// the set cannot be read).
    pub fn held(self) -> bool {
        effective().is_ok_and(|set| set & (1 << self.number()) != 0)
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Capabilities an operation needs and this process lacks.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} needs {names}, which this process does not hold; run it as root, or as the \
     gateway user with those capabilities (the shipped unit's AmbientCapabilities, or \
     `setpriv --inh-caps +{flags} --ambient-caps +{flags}`)",
    names = names(&self.missing),
    flags = flags(&self.missing)
)]
pub struct MissingCapability {
    pub what: &'static str,
    pub missing: Vec<Cap>,
}

fn names(caps: &[Cap]) -> String {
    caps.iter()
        .map(|cap| cap.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn flags(caps: &[Cap]) -> String {
    caps.iter()
        .map(|cap| cap.name()["CAP_".len()..].to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",+")
}

/// Fails naming every capability in `caps` this process lacks for `what`.
pub fn require(what: &'static str, caps: &[Cap]) -> Result<(), MissingCapability> {
    let missing: Vec<Cap> = caps.iter().copied().filter(|cap| !cap.held()).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingCapability { what, missing })
    }
}

/// The effective set of the calling thread, from `/proc/thread-self/status` (the
/// same bits `capget(2)` returns, without an unsafe call).
pub fn effective() -> io::Result<u64> {
    let status = fs::read_to_string("/proc/thread-self/status")?;
    parse_effective(&status)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CapEff line"))
}

fn parse_effective(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The first port below which binding needs CAP_NET_BIND_SERVICE
/// (`net.ipv4.ip_unprivileged_port_start`, 1024 unless changed).
pub fn unprivileged_port_start() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(1024)
}

/// When root runs a command on a state directory another user owns (the daemon's
/// `gateway` user), makes the files it creates belong to that user, so a CLI run
/// with sudo does not leave state, audit or pinned files the daemon cannot open.
/// `setfsuid`/`setfsgid` change only the owner of new files and file access
/// checks; CAP_BPF and CAP_NET_ADMIN stay. Call it before any thread starts:
/// the file-system ids are per thread, and new threads inherit them.
pub fn act_as_owner_of(state_dir: &Path) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let Ok(meta) = fs::metadata(state_dir) else {
        return;
    };
    if meta.uid() == 0 {
        return;
    }
    // SAFETY: plain syscalls on this (only) thread; the gid first, while the
    // fsuid is still 0 and may change it.
    unsafe {
        libc::setfsgid(meta.gid());
        libc::setfsuid(meta.uid());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set_and_names_what_is_missing() {
        let status = "Name:\tgateway\nCapInh:\t0000000000000000\nCapEff:\t000000c000001400\n";
        let set = parse_effective(status).expect("parsed");
        assert_eq!(set, (1 << 39) | (1 << 38) | (1 << 12) | (1 << 10));
        assert_eq!(parse_effective("CapEff:\tzz\n"), None);
        assert_eq!(parse_effective("CapPrm:\t1\n"), None);
        let err = MissingCapability {
            what: "loading the XDP program",
            missing: vec![Cap::Bpf, Cap::Perfmon],
        };
        let text = err.to_string();
        assert!(text.contains("needs CAP_BPF, CAP_PERFMON"), "{text}");
        assert!(text.contains("--ambient-caps +bpf,+perfmon"), "{text}");
    }
}

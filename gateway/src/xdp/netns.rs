//! Namespaces. `--netns NAME` (and `xdp.netns`) enters only the network namespace
//! of `/run/netns/NAME`, so the pin directory stays in the host's bpffs and the
//! program outlives the command. `ip netns exec` also gives its command a private
//! mount namespace with a fresh /sys: a bpffs mounted there (and the pinned program
//! with it) vanishes when the command exits, so the gateway refuses to mount one in
//! a mount namespace other than the host's.

use std::{fs, fs::File, io, os::fd::AsRawFd as _, path::Path};

use super::{PinDir, XdpError, is_bpffs};

/// Where `ip netns add` keeps named network namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Moves this thread (and the threads it starts afterwards) into the network
/// namespace `/run/netns/NAME`. Call it before any other thread exists: the
/// daemon's and the CLI's sockets, interface lookups and XDP attachments then all
/// happen in that namespace. The mount namespace is left alone.
pub fn enter(name: &str) -> Result<(), XdpError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(XdpError::NetnsName(name.to_owned()));
    }
    let path = Path::new(NETNS_DIR).join(name);
    let netns_error = |source| XdpError::Netns {
        name: name.to_owned(),
        path: path.clone(),
        source,
    };
    let file = File::open(&path).map_err(netns_error)?;
    // SAFETY: setns with an fd we own and a namespace type; it only changes the
    // calling thread's namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(netns_error(io::Error::last_os_error()));
    }
    Ok(())
}

/// Refuses, before `path` gets a bpffs mounted, when this process runs in a mount
/// namespace other than the host's: the mount would be private to this command.
pub(super) fn check_mount_namespace(path: &Path) -> Result<(), XdpError> {
    let Ok(ours) = fs::read_link("/proc/self/ns/mnt") else {
        return Ok(());
    };
    match host_mount_namespace() {
        Some(host) if host != ours => Err(XdpError::ForeignMountNamespace {
            path: path.to_owned(),
            ours: ours.display().to_string(),
            host: host.display().to_string(),
        }),
        _ => Ok(()),
    }
}

/// Whether this process shares pid 1's mount namespace (`None`: cannot tell).
pub fn host_mount_namespace_is_ours() -> Option<bool> {
    let ours = fs::read_link("/proc/self/ns/mnt").ok()?;
    Some(host_mount_namespace()? == ours)
}

/// Whether the mount at `path` propagates to its peers (`shared:` in
/// `/proc/self/mountinfo`), so pins made under it in another mount namespace reach
/// the host's.
pub fn mount_is_shared(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        fields.get(4).is_some_and(|point| Path::new(point) == path)
            && fields
                .iter()
                .skip(6)
                .take_while(|f| **f != "-")
                .any(|f| f.starts_with("shared:"))
    })
}

/// The mount namespace of pid 1; where pid 1 cannot be inspected (a sandbox that
/// hides it), that of kthreadd, whose kernel threads live in the initial one.
fn host_mount_namespace() -> Option<std::path::PathBuf> {
    fs::read_link("/proc/1/ns/mnt").ok().or_else(|| {
        let kthreadd = fs::read_to_string("/proc/2/comm").ok()?;
        (kthreadd.trim() == "kthreadd")
            .then(|| fs::read_link("/proc/2/ns/mnt").ok())
            .flatten()
    })
}

/// Nothing is pinned under `pins`: [`XdpError::NotAttached`], or, under `ip netns
/// exec` (the host's bpffs hidden by a private /sys), the error that says so.
pub(super) fn not_attached(pins: &PinDir) -> XdpError {
    let parent = pins.path().parent().unwrap_or(pins.path());
    if !is_bpffs(parent)
        && let Err(err) = check_mount_namespace(parent)
    {
        return err;
    }
    XdpError::NotAttached {
        dir: pins.path().to_owned(),
    }
}

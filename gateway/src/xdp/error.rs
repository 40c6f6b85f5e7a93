//! Errors of the kernel plane, each saying what went wrong and what to do about it.

use std::{io, path::PathBuf};

/// A failure to load, attach, find or change the XDP program and its maps.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error(transparent)]
    Capability(#[from] crate::caps::MissingCapability),
    #[error(
        "{path} is not a BPF filesystem and mounting one there failed: {source}; \
         mount it with `mount -t bpf bpf {path}`"
    )]
    Bpffs { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not a BPF filesystem, and the gateway mounts one only with CAP_SYS_ADMIN, \
         which it should not hold in production: mount it on the host (`mount -t bpf bpf \
         {path}`; systemd does at boot on most distributions) before starting the gateway"
    )]
    NoBpffs { path: PathBuf },
    #[error(
        "nothing attached: no pinned gateway maps under {dir}; run `gateway xdp attach --iface IF` \
         (or `gateway run`) first"
    )]
    NotAttached { dir: PathBuf },
    #[error("no network interface named '{0}' in this network namespace; list them with `ip link`")]
    UnknownInterface(String),
    #[error(
        "the gateway is already attached (program {program_id}, pinned at {link}); \
         run `gateway xdp detach` first"
    )]
    AlreadyAttached { program_id: u32, link: PathBuf },
    #[error(
        "{iface} already has another XDP program attached; remove it first \
         (`ip link set dev {iface} xdp off`, or `xdp-loader unload {iface} --all`)"
    )]
    InterfaceBusy { iface: String },
    #[error("attaching the XDP program to {iface} in {mode} mode failed: {source}{hint}")]
    Attach {
        iface: String,
        mode: &'static str,
        source: Box<aya::programs::ProgramError>,
        hint: &'static str,
    },
    #[error("loading the XDP program into the kernel failed: {0}")]
    Load(String),
    #[error(
        "pinned map {path} was created with a different layout or size: {source}; \
         run `gateway xdp detach` to remove the old maps, then attach again"
    )]
    Incompatible {
        path: PathBuf,
        source: Box<aya::maps::MapError>,
    },
    #[error(
        "the maps under {dir} were made by an older gateway (map layout {found}, this one \
         needs {wanted}); restart the daemon (`gateway run` recreates them and restores the \
         lists from the state directory), or run `gateway xdp detach` and attach again"
    )]
    OldLayout {
        dir: PathBuf,
        found: u32,
        wanted: u32,
    },
    #[error("{what} pinned map {path} failed: {source}")]
    Map {
        what: &'static str,
        path: PathBuf,
        source: Box<aya::maps::MapError>,
    },
    #[error(
        "map {name} is full: it holds at most {capacity} entries and had room for {room} more, \
         fewer than this change adds; nothing was changed. Add at most {room} new entries, \
         remove entries, or raise its capacity (`gateway xdp attach --blocklist-entries N` / \
         `--cidr-entries N`, or [xdp.capacity] in the config) and re-attach"
    )]
    MapFull {
        name: &'static str,
        capacity: u32,
        /// New keys the map still had room for.
        room: usize,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} has no BPF filesystem, and this command runs in a private mount namespace \
         ({ours}; the host's is {host}), as `ip netns exec` makes: a bpffs mounted here, and the \
         program pinned in it, would vanish when the command exits. Run \
         `gateway --netns NAME ...` instead (it enters only the network namespace), or \
         `nsenter --net=/run/netns/NAME gateway ...`"
    )]
    ForeignMountNamespace {
        path: PathBuf,
        ours: String,
        host: String,
    },
    #[error("--netns {0:?}: give the name of a namespace in /run/netns (see `ip netns list`)")]
    NetnsName(String),
    #[error("entering network namespace {name} ({path}) failed: {source}; see `ip netns list`")]
    Netns {
        name: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("pinning {path} failed: {source}")]
    Pin {
        path: PathBuf,
        source: Box<aya::pin::PinError>,
    },
}

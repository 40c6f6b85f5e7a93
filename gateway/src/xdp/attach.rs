//! Loading, attaching, detaching and describing the XDP program.

use std::{
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt as _, fs::DirBuilderExt as _},
    path::Path,
};

use aya::{
    Ebpf, EbpfError, EbpfLoader, include_bytes_aligned,
    maps::MapError,
    programs::{ProgramError, Xdp, XdpMode, links::FdLink, links::PinnedLink},
};
use gateway_common::{
    consts::{LAYOUT_VERSION, PROGRAM_NAME, capacity, map_names},
    maps::XdpConfig,
};
use serde::{Deserialize, Serialize};

use super::{KernelMaps, LOAD_CAPS, MAP_CAPS, PinDir, XdpError, require};
use crate::{addr::ipv6_mask, caps::Cap};

/// IPv6 sources share a rate-limit bucket per /64 unless configured otherwise.
pub const DEFAULT_IPV6_RATE_LIMIT_PREFIX: u8 = 64;

/// The XDP object built by `build.rs` from `gateway-ebpf`.
pub(super) static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-xdp"));

/// `statfs` magic of a BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Map capacities, fixed when the maps are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capacity {
    /// Per-source rate-limit buckets, in each of the IPv4 and the IPv6 map (LRU: the
    /// least recently seen sources of that family are evicted).
    pub rate_limit_entries: u32,
    /// Exact-address blocks, in each of the IPv4 and the IPv6 map.
    pub blocklist_entries: u32,
    /// CIDRs in each family's trie, of the allowlist and the CIDR blocklist
    /// together (a prefix on both is one entry).
    pub cidr_entries: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            rate_limit_entries: capacity::RATE_LIMIT,
            blocklist_entries: capacity::BLOCKLIST,
            cidr_entries: capacity::CIDR,
        }
    }
}

/// How the program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Native (driver) mode where the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Native mode in the NIC driver: fastest; fails where the driver lacks XDP.
    Driver,
    /// Generic mode in the kernel stack: works everywhere, slower.
    Skb,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Driver => "driver",
            Mode::Skb => "skb",
        }
    }
}

impl From<Mode> for XdpMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Auto => XdpMode::Default,
            Mode::Driver => XdpMode::Driver,
            Mode::Skb => XdpMode::Skb,
        }
    }
}

/// Where and how the program was attached (saved in the state directory for
/// `gateway xdp status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub interface: String,
    pub ifindex: u32,
    pub mode: Mode,
    pub program_id: u32,
    /// Unix seconds.
    pub attached_at: u64,
}

/// One map as `gateway xdp status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct MapStatus {
    pub name: &'static str,
    pub kind: &'static str,
    pub capacity: u32,
    /// Current entries, for the maps where that means something.
    pub entries: Option<usize>,
}

/// What `gateway xdp status` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Program id of the pinned link.
    pub program_id: u32,
    pub maps: Vec<MapStatus>,
}

/// Loads the object into the kernel with every map pinned under `pins` (reusing maps
/// already pinned there, unless an older gateway made them: those are removed and
/// made afresh, empty, for the caller to restore the lists into), without attaching
/// it.
pub fn load(pins: &PinDir, capacity: &Capacity) -> Result<Ebpf, XdpError> {
    require("loading the XDP program", &LOAD_CAPS)?;
    ensure_bpffs(pins)?;
    if pinned_layout_is_old(pins)? {
        remove_map_pins(pins)?;
    }
    // What this load pins it takes back if the load fails: a refused program must
    // not leave fresh (and, sized for a million entries, large) maps pinned.
    let new_pins: Vec<_> = map_names::ALL
        .iter()
        .map(|name| pins.map(name))
        .filter(|path| !path.exists())
        .collect();
    load_pinned(pins, capacity).inspect_err(|_| {
        for path in &new_pins {
            let _ = remove_pin(path);
        }
    })
}

/// [`load`] once stale pins are gone.
fn load_pinned(pins: &PinDir, capacity: &Capacity) -> Result<Ebpf, XdpError> {
    let mut loader = EbpfLoader::new();
    for name in map_names::ALL {
        loader.map_pin_path(name, pins.map(name));
    }
    for name in [map_names::RATE_LIMIT_V4, map_names::RATE_LIMIT_V6] {
        loader.map_max_entries(name, capacity.rate_limit_entries);
    }
    for name in [map_names::BLOCKLIST_V4, map_names::BLOCKLIST_V6] {
        loader.map_max_entries(name, capacity.blocklist_entries);
    }
    for name in [map_names::CIDR_V4, map_names::CIDR_V6] {
        loader.map_max_entries(name, capacity.cidr_entries);
    }
    let mut ebpf = loader.load(OBJECT).map_err(|err| match err {
        EbpfError::MapError(source @ MapError::IncompatiblePinnedMap { .. }) => {
            XdpError::Incompatible {
                path: pins.path().to_owned(),
                source: Box::new(source),
            }
        }
        other => XdpError::Load(other.to_string()),
    })?;
    xdp_program(&mut ebpf)?
        .load()
        .map_err(|err| XdpError::Load(err.to_string()))?;
    // Fresh maps hold an all-zero config, whose IPv6 mask would put every IPv6 source
    // in one bucket; start from the documented /64 instead. Reused maps keep theirs.
    let maps = KernelMaps::open_any(pins)?;
    if maps.config()? == XdpConfig::default() {
        maps.set_config(&XdpConfig {
            ipv6_rate_mask: ipv6_mask(DEFAULT_IPV6_RATE_LIMIT_PREFIX),
            ..XdpConfig::default()
        })?;
    }
    maps.refresh_filled()?;
    Ok(ebpf)
}

/// Whether the maps pinned under `pins` were made by a gateway with another map
/// layout ([`LAYOUT_VERSION`]), so they cannot be reused.
pub fn pinned_layout_is_old(pins: &PinDir) -> Result<bool, XdpError> {
    if !pins.map(map_names::CONFIG).exists() {
        return Ok(false);
    }
    Ok(KernelMaps::open_any(pins)?.config()?.layout != LAYOUT_VERSION)
}

/// Removes every pinned map, including ones this gateway does not know (an older
/// one's), but not the pinned link.
fn remove_map_pins(pins: &PinDir) -> Result<(), XdpError> {
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| XdpError::Io { path, source }
    };
    let link = pins.link();
    for entry in fs::read_dir(pins.path()).map_err(io_error(pins.path()))? {
        let path = entry.map_err(io_error(pins.path()))?.path();
        if path != link {
            remove_pin(&path)?;
        }
    }
    Ok(())
}

pub(super) fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or_else(|| XdpError::Load(format!("the object has no program named {PROGRAM_NAME}")))?
        .try_into()
        .map_err(|err: ProgramError| XdpError::Load(err.to_string()))
}

/// Loads the program, attaches it to `iface` and pins the attachment, so it keeps
/// filtering after this process exits.
pub fn attach(
    pins: &PinDir,
    iface: &str,
    mode: Mode,
    capacity: &Capacity,
) -> Result<Attachment, XdpError> {
    require("attaching the XDP program", &LOAD_CAPS)?;
    if let Some(program_id) = pinned_program_id(pins)? {
        return Err(XdpError::AlreadyAttached {
            program_id,
            link: pins.link(),
        });
    }
    let ifindex = if_index(iface)?;
    let mut ebpf = load(pins, capacity)?;
    let program = xdp_program(&mut ebpf)?;
    let link_id = program
        .attach(ifindex, mode.into())
        .map_err(|source| attach_error(iface, mode, source))?;
    let link = program
        .take_link(link_id)
        .map_err(|source| attach_error(iface, mode, source))?;
    let link = FdLink::try_from(link).map_err(|err| {
        XdpError::Load(format!(
            "the kernel attached XDP without a bpf_link ({err}), which cannot be pinned; \
             a kernel of 5.9 or later is needed"
        ))
    })?;
    let link = link.pin(pins.link()).map_err(|source| XdpError::Pin {
        path: pins.link(),
        source: Box::new(source),
    })?;
    let program_id = FdLink::from(link)
        .info()
        .map_err(|err| XdpError::Load(err.to_string()))?
        .program_id();
    Ok(Attachment {
        interface: iface.to_owned(),
        ifindex,
        mode,
        program_id,
        attached_at: crate::clock::unix_now(),
    })
}

fn attach_error(iface: &str, mode: Mode, source: ProgramError) -> XdpError {
    let busy = match &source {
        ProgramError::SyscallError(err) => matches!(
            err.io_error.raw_os_error(),
            Some(libc::EBUSY | libc::EEXIST)
        ),
        _ => source.to_string().contains("busy"),
    };
    if busy {
        return XdpError::InterfaceBusy {
            iface: iface.to_owned(),
        };
    }
    let hint = match mode {
        Mode::Driver => "; the driver may not support native XDP: try --mode skb",
        Mode::Auto | Mode::Skb => "; try --mode driver or --mode skb",
    };
    XdpError::Attach {
        iface: iface.to_owned(),
        mode: mode.as_str(),
        source: Box::new(source),
        hint,
    }
}

/// Removes the pinned attachment (which detaches the program) and the pinned maps.
/// The state file keeps the lists, so the next attach restores them.
pub fn detach(pins: &PinDir) -> Result<(), XdpError> {
    require("detaching the XDP program", &MAP_CAPS)?;
    let link = pins.link();
    let mut found = remove_pin(&link)?;
    for name in map_names::ALL {
        found |= pins.map(name).exists();
    }
    if !found {
        return Err(super::netns::not_attached(pins));
    }
    // Every pin, an older gateway's maps included.
    remove_map_pins(pins)?;
    match fs::remove_dir(pins.path()) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(XdpError::Io {
            path: pins.path().to_owned(),
            source,
        }),
    }
}

/// Whether the interface an attachment names still exists with the same index. A
/// deleted (or deleted and recreated) interface leaves behind a pinned link that
/// filters nothing.
pub fn attachment_is_live(attachment: &Attachment) -> bool {
    if_index(&attachment.interface).is_ok_and(|index| index == attachment.ifindex)
}

/// Removes only the pinned link, detaching the program but keeping the maps, so the
/// next attach reuses them with every list entry and bucket.
pub fn unpin_link(pins: &PinDir) -> Result<bool, XdpError> {
    require("detaching the XDP program", &MAP_CAPS)?;
    remove_pin(&pins.link())
}

fn remove_pin(path: &Path) -> Result<bool, XdpError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(XdpError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Program id of the pinned attachment, `None` when nothing is pinned.
pub fn pinned_program_id(pins: &PinDir) -> Result<Option<u32>, XdpError> {
    if !pins.link().exists() {
        return Ok(None);
    }
    let link = PinnedLink::from_pin(pins.link())
        .map_err(|err| XdpError::Load(format!("opening {}: {err}", pins.link().display())))?;
    let info = FdLink::from(link)
        .info()
        .map_err(|err| XdpError::Load(err.to_string()))?;
    Ok(Some(info.program_id()))
}

/// The pinned program and the size and fill of every map.
pub fn status(pins: &PinDir) -> Result<Status, XdpError> {
    require("reading the XDP program's status", &MAP_CAPS)?;
    let program_id = pinned_program_id(pins)?.ok_or_else(|| super::netns::not_attached(pins))?;
    let maps = KernelMaps::open(pins)?;
    let maps = map_names::ALL
        .into_iter()
        .map(|name| map_status(&maps, name))
        .collect::<Result<_, _>>()?;
    Ok(Status { program_id, maps })
}

fn map_status(maps: &KernelMaps, name: &'static str) -> Result<MapStatus, XdpError> {
    let kind = match name {
        map_names::CIDR_V4 | map_names::CIDR_V6 => "lpm_trie",
        map_names::BLOCKLIST_V4 | map_names::BLOCKLIST_V6 => "hash",
        map_names::RATE_LIMIT_V4 | map_names::RATE_LIMIT_V6 => "lru_hash",
        map_names::CONFIG | map_names::FILLED => "array",
        map_names::COUNTERS => "percpu_array",
        _ => "ringbuf",
    };
    Ok(MapStatus {
        name,
        kind,
        capacity: maps.capacity(name)?,
        entries: maps.entry_count(name)?,
    })
}

/// Makes sure the parent of the pin directory is a BPF filesystem (mounting one when
/// it is not) and that the pin directory exists.
fn ensure_bpffs(pins: &PinDir) -> Result<(), XdpError> {
    let dir = pins.path();
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| XdpError::Io { path, source }
    };
    fs::create_dir_all(parent).map_err(io_error(parent))?;
    if !is_bpffs(parent) {
        super::netns::check_mount_namespace(parent)?;
        // Only a gateway run as root (development, tests) mounts bpffs itself.
        if !Cap::SysAdmin.held() {
            return Err(XdpError::NoBpffs {
                path: parent.to_owned(),
            });
        }
        mount_bpffs(parent).map_err(|source| XdpError::Bpffs {
            path: parent.to_owned(),
            source,
        })?;
    }
    // 0700: the maps hold every client address and the lists.
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(XdpError::Io {
            path: dir.to_owned(),
            source,
        }),
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// Whether `path` is on a BPF filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(path) = c_path(path) else {
        return false;
    };
    // SAFETY: statfs is plain old data; a zeroed value is valid and the kernel fills it.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is writable.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    #[expect(
        clippy::useless_conversion,
        reason = "f_type is i64 on x86_64 but a narrower type on other targets"
    )]
    let f_type = i64::from(stat.f_type);
    rc == 0 && f_type == BPF_FS_MAGIC
}

fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = c_path(path)?;
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The index of interface `iface` in this network namespace.
pub fn if_index(iface: &str) -> Result<u32, XdpError> {
    let unknown = || XdpError::UnknownInterface(iface.to_owned());
    let name = CString::new(iface).map_err(|_| unknown())?;
    // SAFETY: `name` is NUL-terminated.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(unknown()),
        index => Ok(index),
    }
}

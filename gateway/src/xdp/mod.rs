//! The kernel plane from userspace: load and attach the XDP program, pin it, and read
//! and write its maps from any process.
//!
//! Everything lives under one bpffs directory (default `/sys/fs/bpf/gateway`): a file
//! per map, named as in [`gateway_common::consts::map_names`], and `link`, the pinned
//! XDP attachment. The program stays attached while that file exists, whatever happens
//! to the process that attached it.

mod attach;
mod batch;
mod error;
pub mod kernel_mode;
mod maps;
pub mod netns;
pub mod probe;

use std::path::{Path, PathBuf};

use crate::caps::Cap;

pub use attach::{
    Attachment, Capacity, DEFAULT_IPV6_RATE_LIMIT_PREFIX, MapStatus, Mode, Status, attach,
    attachment_is_live, detach, if_index, is_bpffs, load, pinned_layout_is_old, pinned_program_id,
    status, unpin_link,
};
pub use error::XdpError;
pub use maps::{HostTable, KernelMaps, KeyOps, RateLimit, Table, TrieTable, Undo};

/// Default bpffs directory for the pinned maps and link.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/gateway";

/// Where the pinned objects live.
#[derive(Clone, Debug)]
pub struct PinDir(PathBuf);

impl PinDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The pinned XDP link.
    pub fn link(&self) -> PathBuf {
        self.0.join("link")
    }

    /// The pinned map called `name`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

/// Loading the program and attaching it to an interface: the verifier needs
/// CAP_PERFMON for the program's pointer arithmetic (BPF_PROG_LOAD fails with
/// EACCES without it), attaching XDP needs CAP_NET_ADMIN.
const LOAD_CAPS: [Cap; 3] = Cap::XDP;
/// Opening pinned maps and links (any `bpf(2)` call when unprivileged BPF is off).
const MAP_CAPS: [Cap; 1] = [Cap::Bpf];

/// Fails with [`XdpError::Capability`] naming what this process lacks for `what`.
fn require(what: &'static str, caps: &[Cap]) -> Result<(), XdpError> {
    Ok(crate::caps::require(what, caps)?)
}

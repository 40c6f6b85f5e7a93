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

use std::path::{Path, PathBuf};

pub use attach::{
    Attachment, Capacity, DEFAULT_IPV6_RATE_LIMIT_PREFIX, MapStatus, Mode, Status, attach,
    attachment_is_live, detach, if_index, load, pinned_layout_is_old, pinned_program_id, status,
    unpin_link,
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

/// Fails with [`XdpError::NotRoot`] unless the effective user is root.
pub fn require_root() -> Result<(), XdpError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(XdpError::NotRoot);
    }
    Ok(())
}

//! Builds the XDP program (`gateway-ebpf`) with the pinned nightly and bpf-linker,
//! so the daemon always embeds the object that matches its own `gateway-common`.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};

/// Must match `xtask`'s `EBPF_TOOLCHAIN`.
const EBPF_TOOLCHAIN: &str = "nightly-2026-10-01";

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR is not set"))?;
    let ebpf_dir = manifest_dir.join("../gateway-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context(
        "building the XDP program failed; if the nightly toolchain or bpf-linker is missing, \
         run `cargo xtask setup`",
    )
}

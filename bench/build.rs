//! Builds the reference XDP programs (`bench-ebpf`) with the pinned nightly and
//! bpf-linker, exactly as `gateway/build.rs` builds the product's program.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};

/// Must match `xtask`'s `EBPF_TOOLCHAIN` (a unit test there checks).
const EBPF_TOOLCHAIN: &str = "nightly-2026-10-01";

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR is not set"))?;
    let ebpf_dir = manifest_dir.join("../bench-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "bench-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context(
        "building the reference XDP programs failed; if the nightly toolchain or bpf-linker \
         is missing, run `cargo xtask setup`",
    )
}

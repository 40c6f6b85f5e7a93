//! Builds the XDP program (`gateway-ebpf`) with the pinned nightly and bpf-linker,
//! so the daemon always embeds the object that matches its own `gateway-common`,
//! and stamps the binary with the commit it was built from (`gateway_build_info`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow};

/// Must match `xtask`'s `EBPF_TOOLCHAIN`.
const EBPF_TOOLCHAIN: &str = "nightly-2026-10-01";

/// Overrides the commit, for builds outside a git checkout (a source tarball).
const COMMIT_OVERRIDE: &str = "GATEWAY_BUILD_COMMIT";

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR is not set"))?;
    println!("cargo::rustc-env=GATEWAY_COMMIT={}", commit(&manifest_dir));
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

/// The commit checked out (12 hex digits), `$GATEWAY_BUILD_COMMIT`, or
/// `unknown` outside a git checkout.
///
/// Cargo re-runs this script when `HEAD` or the branch it points to moves, so
/// the stamp follows commits. That re-run also re-enters the eBPF build, which
/// is an up-to-date check (about a second) unless `gateway-ebpf` changed.
fn commit(dir: &Path) -> String {
    println!("cargo::rerun-if-env-changed={COMMIT_OVERRIDE}");
    if let Some(commit) = std::env::var(COMMIT_OVERRIDE)
        .ok()
        .filter(|c| !c.is_empty())
    {
        return commit;
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".to_owned();
    };
    // HEAD names the branch; the branch file (or packed-refs) holds the commit.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        let loose = git(&["rev-parse", "--git-path", &branch]);
        watched.push(match loose {
            Some(path) if dir.join(&path).exists() => Some(path),
            _ => git(&["rev-parse", "--git-path", "packed-refs"]),
        });
    }
    for path in watched.into_iter().flatten() {
        println!("cargo::rerun-if-changed={}", dir.join(path).display());
    }
    commit
}

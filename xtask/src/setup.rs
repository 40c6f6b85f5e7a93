//! `cargo xtask setup`: installs the toolchains, bpf-linker and the Debian packages the
//! build and the tests need; a second run only checks and takes a few seconds.

use std::{
    env, fs, io,
    os::unix::fs as unix_fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, anyhow, bail};

use crate::util::{self, Workspace};

/// The nightly that builds the XDP programs. Must equal `EBPF_TOOLCHAIN` in
/// `gateway/build.rs` and `bench/build.rs` (a unit test below checks).
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-10-01";
/// rust-src for `-Z build-std=core`; clippy to lint the eBPF crate for its own target.
const EBPF_COMPONENTS: &[&str] = &["rust-src", "clippy"];
/// Components of the userspace toolchain (whose channel is in `rust-toolchain.toml`).
const USERSPACE_COMPONENTS: &[&str] = &["clippy", "rustfmt"];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// `bpf-linker --version` must print `bpf-linker 0.13` or `bpf-linker 0.13.<patch>`.
const BPF_LINKER_SERIES: &str = "0.13";
/// Under `$CARGO_HOME`: the LLVM prefix bpf-linker is built against. It must outlive the
/// build, since the binary's RUNPATH points into it.
const LLVM_PREFIX_DIR: &str = "gateway-bpf-linker-llvm";
/// The nightly's libLLVM, if globbing `lib/libLLVM.so.*` in its sysroot finds nothing.
const KNOWN_LIBLLVM: &str = "libLLVM.so.23.1-rust-1.101.0-nightly";

/// `ip`, `nsenter`, `bpftool` and `sysctl`/`pgrep` for the privileged tests; `wrk`
/// for the L7 rate-limit test under real load; `script` (bsdutils) for `gateway top`
/// in a pseudo-terminal; `curl` for the commands the demo prints (and its check);
/// `redis-server` (with `redis-cli`) for the fleet tests and `demo --fleet`.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "util-linux",
    "bpftool",
    "procps",
    "wrk",
    "bsdutils",
    "curl",
    "redis-server",
];

/// What setup did, for the one-line summary.
#[derive(Default)]
struct Summary {
    installed: Vec<String>,
    present: Vec<String>,
}

/// Installs whatever is missing and prints a one-line summary.
pub fn run(ws: &Workspace) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut summary = Summary::default();
    ensure_toolchain(&ws.toolchain, USERSPACE_COMPONENTS, &mut summary)
        .context("installing the userspace toolchain")?;
    ensure_toolchain(EBPF_TOOLCHAIN, EBPF_COMPONENTS, &mut summary)
        .context("installing the eBPF toolchain")?;
    ensure_bpf_linker(ws, &mut summary).context("installing bpf-linker")?;
    ensure_debian_packages(DEBIAN_PACKAGES, &mut summary).context("installing Debian packages")?;

    let installed = if summary.installed.is_empty() {
        "nothing".to_owned()
    } else {
        summary.installed.join(", ")
    };
    println!(
        "setup done in {:.1}s: installed {installed}; already present: {}",
        start.elapsed().as_secs_f64(),
        summary.present.join(", ")
    );
    Ok(())
}

/// Installs toolchain `name` with `components`, or adds the components it lacks.
fn ensure_toolchain(name: &str, components: &[&str], summary: &mut Summary) -> anyhow::Result<()> {
    let label = format!("toolchain {name} ({})", components.join(", "));
    let toolchains = util::stdout_of(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|line| is_toolchain(line, name)) {
        util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            name,
            "--profile",
            "minimal",
            "-c",
            &components.join(","),
        ]))?;
        summary.installed.push(label);
        return Ok(());
    }
    let installed = util::stdout_of(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        name,
        "--installed",
    ]))?;
    let missing: Vec<&str> = components
        .iter()
        .copied()
        .filter(|component| !installed.lines().any(|line| is_component(line, component)))
        .collect();
    if missing.is_empty() {
        summary.present.push(label);
    } else {
        util::run(
            Command::new("rustup")
                .args(["component", "add", "--toolchain", name])
                .args(&missing),
        )?;
        summary
            .installed
            .push(format!("{} for {name}", missing.join(", ")));
    }
    Ok(())
}

/// Whether a `rustup toolchain list` line names toolchain `name`, e.g. `1.99.0` matches
/// `1.99.0-x86_64-unknown-linux-gnu (active)`, but `nightly` does not match
/// `nightly-2026-10-01-x86_64-unknown-linux-gnu`.
fn is_toolchain(line: &str, name: &str) -> bool {
    let Some(toolchain) = line.split_whitespace().next() else {
        return false;
    };
    toolchain == name
        || toolchain
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('-'))
            // A host triple starts with the architecture, never with a digit (a date does).
            .is_some_and(|triple| triple.starts_with(|c: char| c.is_ascii_alphabetic()))
}

/// Whether a `rustup component list --installed` line names `component`, e.g. `clippy`
/// matches `clippy-x86_64-unknown-linux-gnu` and `rust-src` matches `rust-src`.
fn is_component(line: &str, component: &str) -> bool {
    let line = line.trim();
    line == component
        || line
            .strip_prefix(component)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// Builds bpf-linker against the nightly's libLLVM unless a working 0.13 is on `PATH`.
fn ensure_bpf_linker(ws: &Workspace, summary: &mut Summary) -> anyhow::Result<()> {
    let label = format!("bpf-linker {BPF_LINKER_SERIES}");
    let Some(problem) = bpf_linker_problem()? else {
        summary.present.push(label);
        return Ok(());
    };
    println!("building bpf-linker {BPF_LINKER_VERSION}: {problem}");

    let sysroot = util::stdout_of(Command::new("rustc").args([
        &format!("+{EBPF_TOOLCHAIN}"),
        "--print",
        "sysroot",
    ]))?;
    let libllvm = find_libllvm(&Path::new(sysroot.trim()).join("lib"))?;
    let prefix = cargo_home()?.join(LLVM_PREFIX_DIR);
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    let file_name = libllvm
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", libllvm.display()))?;
    for link in [Path::new("libLLVM.so"), Path::new(file_name)] {
        replace_symlink(&libllvm, &prefix_lib.join(link))?;
    }

    util::run(
        ws.cargo()
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    if let Some(problem) = bpf_linker_problem()? {
        bail!(
            "bpf-linker was installed into {}, but the one on PATH still fails the check \
             ({problem}); put that directory first on PATH",
            cargo_home()?.join("bin").display()
        );
    }
    summary.installed.push(label);
    Ok(())
}

/// Why the `bpf-linker` on `PATH` is unusable, or `None` if it is version 0.13 and its
/// libLLVM resolves.
fn bpf_linker_problem() -> anyhow::Result<Option<String>> {
    let Some(path) = util::find_in_path("bpf-linker") else {
        return Ok(Some("bpf-linker is not on PATH".to_owned()));
    };
    // Without `LD_LIBRARY_PATH`: rustup points it at a toolchain's lib dir, which would
    // hide a libLLVM that only resolves through it.
    let output = util::capture(Command::new("ldd").arg(&path).env_remove("LD_LIBRARY_PATH"))?;
    // ldd fails on a statically linked binary; then there is no libLLVM to resolve.
    let libraries = String::from_utf8_lossy(&output.stdout);
    if let Some(line) = libraries
        .lines()
        .find(|line| line.contains("libLLVM") && line.contains("not found"))
    {
        return Ok(Some(format!(
            "{} cannot load its LLVM: {}",
            path.display(),
            line.trim()
        )));
    }
    let output = util::capture(Command::new(&path).arg("--version"))?;
    let version = String::from_utf8_lossy(&output.stdout);
    let version = version.trim();
    let version_ok = version
        .strip_prefix("bpf-linker ")
        .and_then(|version| version.strip_prefix(BPF_LINKER_SERIES))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'));
    if !output.status.success() || !version_ok {
        return Ok(Some(format!(
            "`{} --version` printed `{version}` ({}; stderr: `{}`), not `bpf-linker {BPF_LINKER_SERIES}.*`",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(None)
}

/// The nightly's `libLLVM.so.*` in its sysroot's `lib` directory.
fn find_libllvm(lib: &Path) -> anyhow::Result<PathBuf> {
    let entries = fs::read_dir(lib).with_context(|| format!("listing {}", lib.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", lib.display()))?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("libLLVM.so.")
        {
            found.push(entry.path());
        }
    }
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => {
            let known = lib.join(KNOWN_LIBLLVM);
            if known.is_file() {
                Ok(known)
            } else {
                bail!(
                    "no libLLVM.so.* in {}; is the {EBPF_TOOLCHAIN} toolchain complete?",
                    lib.display()
                )
            }
        }
        several => bail!(
            "several libLLVM.so.* in {}: {several:?}; cannot tell which one rustc uses",
            lib.display()
        ),
    }
}

/// Makes `link` a symlink to `target`, replacing whatever link was there.
fn replace_symlink(target: &Path, link: &Path) -> anyhow::Result<()> {
    match fs::read_link(link) {
        Ok(existing) if existing == target => return Ok(()),
        Ok(_) => fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(err)
                .with_context(|| format!("{} exists and is not a symlink", link.display()));
        }
    }
    println!("linking {} -> {}", link.display(), target.display());
    unix_fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

/// `$CARGO_HOME`, by default `~/.cargo`: where `cargo install` puts binaries.
fn cargo_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|home| !home.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(|home| PathBuf::from(home).join(".cargo"))
        .ok_or_else(|| anyhow!("neither CARGO_HOME nor HOME is set"))
}

/// Installs those of `packages` that are missing (for tasks with peers of their own,
/// such as `bench`) and prints what it did.
pub fn install_debian_packages(packages: &[&str]) -> anyhow::Result<()> {
    let mut summary = Summary::default();
    ensure_debian_packages(packages, &mut summary)?;
    if !summary.installed.is_empty() {
        println!("installed {}", summary.installed.join(", "));
    }
    Ok(())
}

/// Installs the missing `packages` with apt-get (needs root).
fn ensure_debian_packages(packages: &[&str], summary: &mut Summary) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for &package in packages {
        let output =
            util::capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
                .context("`cargo xtask setup` installs packages on Debian and Ubuntu only")?;
        if String::from_utf8_lossy(&output.stdout).contains("install ok installed") {
            summary.present.push(package.to_owned());
        } else {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !util::is_root()? {
        bail!(
            "Debian packages {} are missing and installing them needs root: \
             run `sudo -E cargo xtask setup` (or `apt-get install {}` as root)",
            missing.join(", "),
            missing.join(" ")
        );
    }
    util::run(Command::new("apt-get").arg("update"))?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    summary
        .installed
        .extend(missing.iter().map(|&package| package.to_owned()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ebpf_toolchain_matches_the_build_scripts() -> anyhow::Result<()> {
        for script in ["../gateway/build.rs", "../bench/build.rs"] {
            let build_rs = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
            let text = fs::read_to_string(&build_rs)?;
            let expected = format!("const EBPF_TOOLCHAIN: &str = \"{EBPF_TOOLCHAIN}\";");
            assert!(
                text.contains(&expected),
                "{} lacks `{expected}`",
                build_rs.display()
            );
        }
        Ok(())
    }

    #[test]
    fn recognises_toolchains() {
        assert!(is_toolchain(
            "1.99.0-x86_64-unknown-linux-gnu (active)",
            "1.99.0"
        ));
        assert!(is_toolchain(
            "nightly-2026-10-01-x86_64-unknown-linux-gnu",
            EBPF_TOOLCHAIN
        ));
        assert!(is_toolchain("1.99.0", "1.99.0"));
        assert!(!is_toolchain(
            "nightly-2026-10-01-x86_64-unknown-linux-gnu",
            "nightly"
        ));
        assert!(!is_toolchain("1.99.1-x86_64-unknown-linux-gnu", "1.99.0"));
        assert!(!is_toolchain("", "1.99.0"));
    }

    #[test]
    fn recognises_components() {
        assert!(is_component("clippy-x86_64-unknown-linux-gnu", "clippy"));
        assert!(is_component("rust-src", "rust-src"));
        assert!(!is_component(
            "rust-std-x86_64-unknown-linux-gnu",
            "rust-src"
        ));
        assert!(!is_component(
            "rustfmt-x86_64-unknown-linux-gnu",
            "rust-src"
        ));
    }
}

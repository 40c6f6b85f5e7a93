//! `cargo xtask dist`: the release artifacts from a checkout — the release
//! `gateway` (the eBPF object inside), its man pages and completions, a tarball
//! and a `.deb` (cargo-deb) — in `target/dist/`. `--check` then installs the
//! `.deb` on this machine with `dpkg -i`, runs the installed binary as the
//! `gateway` user with the installed unit's capabilities on a veth in a private
//! namespace, and purges the package and the user again.

use std::{
    fs,
    os::unix::{fs::MetadataExt as _, net::UnixDatagram},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};

use crate::{setup, util, util::Workspace};

/// cargo-deb, pinned: `cargo install --locked` builds exactly this one.
const CARGO_DEB_VERSION: &str = "3.8.0";
const SHELLS: [(&str, &str); 3] = [
    ("bash", "gateway.bash"),
    ("zsh", "_gateway"),
    ("fish", "gateway.fish"),
];

#[derive(clap::Args)]
pub struct Args {
    /// Then install the .deb on this machine (as root), run it as the `gateway`
    /// user with the unit's capabilities on a veth, and purge it again.
    #[arg(long)]
    pub check: bool,
}

pub fn run(ws: &Workspace, args: &Args) -> anyhow::Result<()> {
    setup::run(ws)?;
    ensure_cargo_deb()?;
    let target = ws.target_dir()?;
    // [package.metadata.deb] names the generated pages as ../target/dist/….
    ensure!(
        target == ws.root.join("target"),
        "cargo xtask dist needs the target directory at {}/target (unset CARGO_TARGET_DIR)",
        ws.root.display()
    );
    let binary = ws.build_gateway(true)?;
    let dist = target.join("dist");
    let generated = dist.join("generated");
    let _ = fs::remove_dir_all(&dist);
    generate(&binary, &generated)?;
    let version = version(&binary)?;
    let tarball = tarball(ws, &binary, &generated, &dist, &version)?;
    util::run(
        ws.cargo()
            .args(["deb", "--package", "gateway", "--no-build", "--output"])
            .arg(&dist),
    )?;
    let deb = fs::read_dir(&dist)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .context("cargo deb wrote no .deb into target/dist")?;
    println!("{}\n{}", tarball.display(), deb.display());
    if args.check {
        check(&deb, &version)?;
    }
    Ok(())
}

/// Installs cargo-deb at [`CARGO_DEB_VERSION`] unless that one is there.
fn ensure_cargo_deb() -> anyhow::Result<()> {
    let present = util::capture(Command::new("cargo").args(["deb", "--version"]))
        .map(|out| String::from_utf8_lossy(&out.stdout).contains(CARGO_DEB_VERSION))
        .unwrap_or(false);
    if !present {
        util::run(Command::new("cargo").args([
            "install",
            "--locked",
            "cargo-deb",
            "--version",
            CARGO_DEB_VERSION,
        ]))?;
    }
    Ok(())
}

/// Man pages and completions, from the binary's own clap definition.
fn generate(binary: &Path, out: &Path) -> anyhow::Result<()> {
    util::run(
        Command::new(binary)
            .args(["generate", "man"])
            .arg(out.join("man")),
    )?;
    let completions = out.join("completions");
    fs::create_dir_all(&completions)?;
    for (shell, file) in SHELLS {
        let script =
            util::stdout_of(Command::new(binary).args(["generate", "completions", shell]))?;
        fs::write(completions.join(file), script)?;
    }
    Ok(())
}

/// `0.1.0` from `gateway 0.1.0`.
fn version(binary: &Path) -> anyhow::Result<String> {
    let out = util::stdout_of(Command::new(binary).arg("--version"))?;
    out.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .context("`gateway --version` printed no version")
}

/// `gateway-VERSION-ARCH-linux.tar.gz`: the binary, unit, logrotate, example
/// config, dashboard, man pages, completions, README and docs.
fn tarball(
    ws: &Workspace,
    binary: &Path,
    generated: &Path,
    dist: &Path,
    version: &str,
) -> anyhow::Result<PathBuf> {
    let name = format!("gateway-{version}-{}-linux", std::env::consts::ARCH);
    let stage = dist.join(&name);
    let deploy = ws.root.join("deploy");
    let files: [(&Path, &str); 7] = [
        (binary, "bin/gateway"),
        (
            &deploy.join("systemd/gateway.service"),
            "systemd/gateway.service",
        ),
        (&deploy.join("logrotate/gateway"), "logrotate/gateway"),
        (
            &deploy.join("gateway.example.toml"),
            "examples/gateway.example.toml",
        ),
        (
            &deploy.join("grafana/gateway.json"),
            "examples/grafana-gateway.json",
        ),
        (&ws.root.join("README.md"), "README.md"),
        (&deploy.join("debian/postinst"), "debian/postinst"),
    ];
    for (from, to) in files {
        copy(from, &stage.join(to))?;
    }
    for (dir, to) in [
        (generated.join("man"), "man/man1"),
        (generated.join("completions"), "completions"),
        (ws.root.join("docs"), "docs"),
    ] {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if let Some(file) = path.file_name() {
                copy(&path, &stage.join(to).join(file))?;
            }
        }
    }
    let tarball = dist.join(format!("{name}.tar.gz"));
    util::run(
        Command::new("tar")
            .arg("-C")
            .arg(dist)
            .args(["--owner=0", "--group=0", "-czf"])
            .arg(&tarball)
            .arg(&name),
    )?;
    Ok(tarball)
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// What `--check` made on this machine, undone on drop in reverse order.
#[derive(Default)]
struct Installed {
    package: bool,
    user_created: bool,
    netns: Option<String>,
    pin_dir: Option<PathBuf>,
    config: Option<PathBuf>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(pins) = &self.pin_dir {
            let _ = Command::new("/usr/bin/gateway")
                .args(["xdp", "detach"])
                .env("GATEWAY_PIN_DIR", pins.join("gateway"))
                .env("GATEWAY_STATE_DIR", "/var/lib/gateway")
                .output();
            let _ = fs::remove_dir_all(pins);
        }
        if let Some(netns) = &self.netns {
            let _ = Command::new("ip").args(["netns", "del", netns]).status();
        }
        if let Some(config) = &self.config {
            let _ = fs::remove_file(config);
        }
        if self.package {
            let _ = Command::new("dpkg").args(["--purge", "gateway"]).status();
        }
        if self.user_created {
            let _ = Command::new("userdel").arg("gateway").status();
            // Gone with the user where USERGROUPS_ENAB is on (Debian's default).
            let _ = Command::new("groupdel").arg("gateway").output();
        }
    }
}

/// Installs `deb`, checks what it put where, runs the installed daemon as the
/// unit would (user, capabilities, sd_notify) on a veth, then removes it all.
fn check(deb: &Path, version: &str) -> anyhow::Result<()> {
    ensure!(
        util::is_root()?,
        "`cargo xtask dist --check` installs a package: run it as root"
    );
    let installed_before = Command::new("dpkg-query")
        .args(["-W", "gateway"])
        .output()?
        .status
        .success();
    ensure!(
        !installed_before,
        "a gateway package is installed on this machine already; --check will not touch it"
    );
    // What the package depends on and the check runs: adduser, deb-systemd-helper,
    // systemd-analyze, setpriv and nsenter.
    setup::install_debian_packages(&["adduser", "init-system-helpers", "systemd", "util-linux"])?;
    let mut undo = Installed::default();
    undo.user_created = !Command::new("getent")
        .args(["passwd", "gateway"])
        .output()?
        .status
        .success();
    undo.package = true;
    util::run(Command::new("dpkg").arg("-i").arg(deb))?;

    // The layout, the user and its directories, the enabled (not started) unit.
    for path in [
        "/usr/bin/gateway",
        "/usr/lib/systemd/system/gateway.service",
        "/etc/logrotate.d/gateway",
        "/usr/share/man/man1/gateway.1.gz",
        "/usr/share/man/man1/gateway-doctor.1.gz",
        "/usr/share/bash-completion/completions/gateway",
        "/usr/share/doc/gateway/examples/gateway.example.toml",
        "/usr/share/doc/gateway/install.md",
        "/etc/systemd/system/multi-user.target.wants/gateway.service",
    ] {
        ensure!(
            Path::new(path).exists(),
            "the package did not install {path}"
        );
    }
    let uid: u32 = util::stdout_of(Command::new("id").args(["-u", "gateway"]))?
        .trim()
        .parse()
        .context("the package made no gateway user")?;
    ensure!(uid != 0, "the gateway user is root");
    for (dir, mode) in [("/var/lib/gateway", 0o700), ("/var/log/gateway", 0o750)] {
        let meta = fs::metadata(dir).with_context(|| format!("{dir} missing"))?;
        ensure!(
            meta.uid() == uid && meta.mode() & 0o777 == mode,
            "{dir}: uid {} mode {:o}, wanted the gateway user and {mode:o}",
            meta.uid(),
            meta.mode() & 0o777
        );
    }
    let shown = util::stdout_of(Command::new("/usr/bin/gateway").arg("--version"))?;
    ensure!(shown.contains(version), "installed binary says {shown:?}");
    let score = util::stdout_of(Command::new("systemd-analyze").args([
        "security",
        "--offline=true",
        "/usr/lib/systemd/system/gateway.service",
    ]))?;
    println!("{}", score.lines().last().unwrap_or_default());

    // The unit's capabilities, read from the installed unit, as setpriv sets them.
    let unit = fs::read_to_string("/usr/lib/systemd/system/gateway.service")?;
    let caps: Vec<String> = unit
        .lines()
        .find_map(|line| line.strip_prefix("AmbientCapabilities="))
        .context("the unit has no AmbientCapabilities=")?
        .split_whitespace()
        .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    let caps = format!("-all,{}", caps.join(","));

    // A namespace with a veth to protect, and a pin directory of its own.
    let suffix = std::process::id();
    let netns = format!("gwdist-{suffix}");
    util::run(Command::new("ip").args(["netns", "add", &netns]))?;
    undo.netns = Some(netns.clone());
    let (iface, peer) = (format!("gd{suffix}a"), format!("gd{suffix}b"));
    util::run(Command::new("ip").args([
        "-n", &netns, "link", "add", &iface, "type", "veth", "peer", "name", &peer,
    ]))?;
    for dev in [&iface, &peer, &"lo".to_owned()] {
        util::run(Command::new("ip").args(["-n", &netns, "link", "set", dev, "up"]))?;
    }
    let pins = PathBuf::from(format!("/sys/fs/bpf/gwdist-{suffix}"));
    undo.pin_dir = Some(pins.clone());
    // What the unit's `ExecStartPre=+install -d -m 0700 -o gateway …` does.
    util::run(
        Command::new("install")
            .args(["-d", "-m", "0700", "-o", "gateway", "-g", "gateway"])
            .arg(&pins),
    )?;
    let config = PathBuf::from("/etc/gateway/gateway.toml");
    ensure!(!config.exists(), "{} exists already", config.display());
    fs::write(
        &config,
        format!("[xdp]\ninterface = \"{iface}\"\n[admin]\naddress = \"127.0.0.1:443\"\n"),
    )?;
    undo.config = Some(config.clone());
    util::run(Command::new("chown").args(["root:gateway", "/etc/gateway/gateway.toml"]))?;
    util::run(Command::new("chmod").args(["0640", "/etc/gateway/gateway.toml"]))?;

    let notify_dir = tempfile_dir()?;
    let notify_path = notify_dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path)?;
    util::run(Command::new("chmod").arg("0777").arg(&notify_dir))?;
    util::run(Command::new("chmod").arg("0666").arg(&notify_path))?;
    notify.set_read_timeout(Some(Duration::from_secs(120)))?;
    let as_gateway = |args: &[&str]| {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{netns}"))
            .args([
                "setpriv",
                "--reuid=gateway",
                "--regid=gateway",
                "--clear-groups",
                &format!("--inh-caps={caps}"),
                &format!("--ambient-caps={caps}"),
                &format!("--bounding-set={caps}"),
                "/usr/bin/gateway",
            ])
            .args(args)
            .env("GATEWAY_STATE_DIR", "/var/lib/gateway")
            .env("GATEWAY_PIN_DIR", pins.join("gateway"));
        command
    };
    // The unit's ExecStartPre, then its ExecStart.
    util::run(&mut as_gateway(&[
        "check",
        "--config",
        "/etc/gateway/gateway.toml",
    ]))?;
    let mut daemon = as_gateway(&["run", "--config", "/etc/gateway/gateway.toml"])
        .env("NOTIFY_SOCKET", &notify_path)
        .spawn()
        .context("starting the installed daemon")?;
    let mut buf = [0; 256];
    let ready = notify.recv(&mut buf).map(|n| buf[..n].to_vec());
    let result = (|| {
        let ready = ready.context("no READY=1 from the installed daemon")?;
        ensure!(
            ready.starts_with(b"READY=1"),
            "{:?}",
            String::from_utf8_lossy(&ready)
        );
        let status = util::stdout_of(&mut as_gateway(&["xdp", "status", "--json"]))?;
        ensure!(status.contains(&iface), "xdp status: {status}");
        println!("the installed gateway protects {iface} as the gateway user: {status}");
        Ok(())
    })();
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = fs::remove_dir_all(&notify_dir);
    result?;
    drop(undo);
    let leftover = Command::new("dpkg-query")
        .args(["-W", "gateway"])
        .output()?;
    if leftover.status.success() {
        bail!("dpkg --purge left the gateway package installed");
    }
    println!("dist check passed: installed, ran as the gateway user, purged");
    Ok(())
}

/// A fresh directory under /tmp (xtask has no tempfile dependency).
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("gateway-dist-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir)?;
    Ok(dir)
}

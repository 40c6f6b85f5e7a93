//! Least privilege: the daemon and the CLI run as an unprivileged user (`nobody`)
//! with exactly CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_NET_BIND_SERVICE, set by
//! `setpriv` as the shipped unit sets them; each capability left out is refused
//! with its name; the daemon speaks the systemd notify protocol; and a CLI run as
//! root leaves nothing in the state directory that the daemon's user cannot open.

use std::{
    os::unix::{fs::MetadataExt as _, fs::PermissionsExt as _, net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use gateway_tests::{gateway, net::Topology, unique_suffix};

const NOBODY: u32 = 65534;
/// The capabilities of deploy/systemd/gateway.service, as setpriv spells them.
const CAPS: [&str; 4] = ["bpf", "perfmon", "net_admin", "net_bind_service"];

/// A pin directory on bpffs and a state directory, both owned by `nobody`, as the
/// unit's `ExecStartPre=+install …` and `StateDirectory=` make them.
struct Rig {
    topology: Topology,
    bpf_parent: PathBuf,
    state: tempfile::TempDir,
}

impl Rig {
    fn new() -> Self {
        let topology = Topology::new(&["198.18.0.2"]);
        let bpf_parent = PathBuf::from(format!("/sys/fs/bpf/gwpriv-{}", unique_suffix()));
        std::fs::create_dir(&bpf_parent).expect("creating a directory on bpffs");
        let state = tempfile::tempdir().expect("state dir");
        for dir in [&bpf_parent, &state.path().to_owned()] {
            chown(dir, NOBODY);
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        }
        Self {
            topology,
            bpf_parent,
            state,
        }
    }

    fn pin_dir(&self) -> PathBuf {
        self.bpf_parent.join("gateway")
    }

    /// `gateway <args>` in the gateway namespace as `nobody` with `caps` only
    /// (`None`: as root, unchanged).
    fn command(&self, caps: Option<&[&str]>, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net={}", self.topology.gateway.path()));
        if let Some(caps) = caps {
            let list: String = caps.iter().map(|cap| format!(",+{cap}")).collect();
            command.args([
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                &format!("--inh-caps=-all{list}"),
                &format!("--ambient-caps=-all{list}"),
                &format!("--bounding-set=-all{list}"),
            ]);
        }
        command
            .arg(gateway::binary())
            .args(args)
            .env("GATEWAY_PIN_DIR", self.pin_dir())
            .env("GATEWAY_STATE_DIR", self.state.path())
            .stdin(Stdio::null());
        command
    }

    fn output(&self, caps: Option<&[&str]>, args: &[&str]) -> Output {
        self.command(caps, args)
            .output()
            .unwrap_or_else(|err| panic!("running gateway {args:?}: {err}"))
    }

    /// Writes the daemon's config (XDP on the veth, admin on port 80, which needs
    /// CAP_NET_BIND_SERVICE) where `nobody` can read it.
    fn config(&self) -> String {
        let path = self.state.path().join("gateway.toml");
        std::fs::write(
            &path,
            format!(
                "[xdp]\ninterface = \"{}\"\n[admin]\naddress = \"127.0.0.1:80\"\n",
                self.topology.gw_iface
            ),
        )
        .expect("writing the config");
        chown(&path, NOBODY);
        path.to_str().expect("UTF-8").to_owned()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.output(None, &["xdp", "detach"]);
        let _ = std::fs::remove_dir_all(&self.bpf_parent);
    }
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown");
}

fn without(cap: &str) -> Vec<&'static str> {
    CAPS.into_iter().filter(|c| *c != cap).collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The next notify message other than WATCHDOG=1, counting those in `pings`.
fn recv(socket: &UnixDatagram, pings: &mut u32) -> String {
    let mut buf = [0; 512];
    loop {
        let n = socket
            .recv(&mut buf)
            .expect("a notify message within the timeout");
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if message != "WATCHDOG=1" {
            return message;
        }
        *pings += 1;
    }
}

#[test]
fn daemon_and_cli_run_as_nobody_with_exactly_the_units_capabilities() {
    gateway_tests::require_root();
    let rig = Rig::new();
    let config = rig.config();

    // Each capability left out: refused before anything starts, by name, exit 77.
    for cap in CAPS {
        let output = rig.output(Some(&without(cap)), &["run", "--config", &config]);
        let name = format!("CAP_{}", cap.to_ascii_uppercase());
        assert_eq!(
            output.status.code(),
            Some(77),
            "run without {name}: {}",
            stderr(&output)
        );
        assert!(stderr(&output).contains(&name), "{}", stderr(&output));
    }
    assert!(
        !rig.pin_dir().exists(),
        "a refused start must not load anything"
    );

    // All four: the daemon attaches XDP and says READY=1 on $NOTIFY_SOCKET.
    let notify_dir = tempfile::tempdir().expect("notify dir");
    std::fs::set_permissions(notify_dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let notify_path = notify_dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("binding the notify socket");
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let log = rig.state.path().join("daemon.log");
    let log_file = std::fs::File::create(&log).expect("log");
    let mut daemon = rig
        .command(Some(&CAPS), &["run", "--config", &config])
        .env("NOTIFY_SOCKET", &notify_path)
        // WatchdogSec=60 s: the main loop pings at once, then every 30 s.
        .env("WATCHDOG_USEC", "60000000")
        .stdout(log_file.try_clone().expect("fd"))
        .stderr(log_file)
        .spawn()
        .expect("spawning the daemon");
    let mut pings = 0;
    let ready = recv(&notify, &mut pings);
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        ready.starts_with("READY=1"),
        "{ready:?}; log:\n{}",
        daemon_log()
    );

    // The pins and the state are the daemon user's alone.
    let pins = std::fs::metadata(rig.pin_dir()).expect("pin dir");
    assert_eq!((pins.uid(), pins.mode() & 0o777), (NOBODY, 0o700));
    for entry in std::fs::read_dir(rig.pin_dir()).expect("pins") {
        let meta = entry.expect("entry").metadata().expect("meta");
        assert_eq!(meta.uid(), NOBODY);
        assert_eq!(meta.mode() & 0o077, 0, "a pin others can open");
    }

    // The CLI as nobody with the capabilities: works; without CAP_BPF: named, 77.
    let status = rig.output(Some(&CAPS), &["xdp", "status", "--json"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let add = rig.output(Some(&CAPS), &["blocklist", "add", "198.18.0.9"]);
    assert!(add.status.success(), "{}", stderr(&add));
    let refused = rig.output(Some(&without("bpf")), &["blocklist", "list", "--json"]);
    assert_eq!(refused.status.code(), Some(77), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("CAP_BPF"), "{}", stderr(&refused));

    // `gateway reload` (the unit's ExecReload): RELOADING=1 with the clock, READY=1.
    let reload = rig.output(Some(&CAPS), &["reload"]);
    assert!(reload.status.success(), "{}", stderr(&reload));
    let reloading = recv(&notify, &mut pings);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert!(recv(&notify, &mut pings).starts_with("READY=1"));

    // Root running the CLI on nobody's state directory leaves only nobody's files.
    let add = rig.output(None, &["blocklist", "add", "198.18.0.10"]);
    assert!(add.status.success(), "{}", stderr(&add));
    for entry in std::fs::read_dir(rig.state.path()).expect("state dir") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("meta");
        if entry.file_name() != "daemon.log" {
            assert_eq!(
                meta.uid(),
                NOBODY,
                "{} belongs to uid {} after a CLI run as root",
                entry.path().display(),
                meta.uid()
            );
        }
    }
    let list = rig.output(Some(&CAPS), &["blocklist", "list", "--json"]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("198.18.0.9") && list.contains("198.18.0.10"),
        "{list}"
    );

    // SIGTERM: STOPPING=1, and a clean exit.
    // nsenter and setpriv exec, so the child is the gateway itself.
    let pid = libc::pid_t::try_from(daemon.id()).expect("pid");
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(recv(&notify, &mut pings), "STOPPING=1");
    assert!(pings >= 1, "no WATCHDOG=1 from the main loop");
    let exit = daemon.wait().expect("waiting for the daemon");
    assert!(exit.success(), "{exit}; log:\n{}", daemon_log());
}

#[test]
fn without_cap_sys_admin_the_gateway_asks_for_bpffs_instead_of_mounting_it() {
    gateway_tests::require_root();
    let rig = Rig::new();
    let not_bpffs = tempfile::tempdir().expect("dir");
    chown(not_bpffs.path(), NOBODY);
    let pins = not_bpffs.path().join("gateway");
    let output = rig
        .command(
            Some(&CAPS),
            &["xdp", "attach", "--iface", &rig.topology.gw_iface],
        )
        .env("GATEWAY_PIN_DIR", &pins)
        .output()
        .expect("running gateway");
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("is not a BPF filesystem") && text.contains("mount -t bpf bpf"),
        "{text}"
    );
}

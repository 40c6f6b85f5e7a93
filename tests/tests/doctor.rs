//! `gateway doctor` against the real kernel: as root in a namespace with a veth,
//! every check passes and the verifier accepts the program; as `nobody` without
//! capabilities it says what it could not try; a missing interface and a port
//! another process holds fail the run (exit 1) with the report still printed.

use std::process::{Command, Output};

use gateway_tests::{gateway::Gateway, net::Topology};
use serde_json::Value;

/// `gateway doctor --json` in `netns`, as root or (`user`) as nobody without
/// capabilities.
fn doctor(gateway: &Gateway, netns: &str, config: &str, user: bool) -> (Output, Value) {
    let path = gateway.state_dir.path().join("doctor.toml");
    std::fs::write(&path, config).expect("writing the config");
    let path = path.to_str().expect("UTF-8").to_owned();
    let args = ["doctor", "--json", "--config", &path];
    let output = if user {
        // The state dir is root's 0700: nobody gets its own, with a copy of the config.
        let dir = tempfile::tempdir().expect("dir");
        let copy = dir.path().join("doctor.toml");
        std::fs::copy(&path, &copy).expect("copy");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod");
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).expect("chown");
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={netns}"))
            .args([
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
            ])
            .args(["--inh-caps=-all", "--bounding-set=-all"])
            .arg(gateway_tests::gateway::binary())
            .args(["doctor", "--json", "--config"])
            .arg(&copy)
            .env("GATEWAY_PIN_DIR", &gateway.pin_dir)
            .env("GATEWAY_STATE_DIR", dir.path());
        command.output().expect("running setpriv")
    } else {
        gateway.output(&args)
    };
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "doctor printed no JSON ({err}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, report)
}

fn status<'a>(report: &'a Value, check: &str) -> Vec<&'a str> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["check"] == check)
        .map(|c| c["status"].as_str().expect("status"))
        .collect()
}

#[test]
fn doctor_checks_the_host_against_the_real_kernel() {
    let topology = Topology::new(&["198.18.0.2"]);
    let gateway = Gateway::new(&topology.gateway);
    let netns = topology.gateway.path();
    let config = format!(
        "[xdp]\ninterface = \"{}\"\n[admin]\naddress = \"127.0.0.1:9091\"\n",
        topology.gw_iface
    );

    let (output, report) = doctor(&gateway, &netns, &config, false);
    assert!(output.status.success(), "{report:#}");
    assert_eq!(report["ok"], true);
    for check in [
        "kernel",
        "btf",
        "bpf features",
        "verifier",
        "capabilities",
        "config",
        "port",
    ] {
        assert_eq!(status(&report, check), ["ok"], "{check}: {report:#}");
    }
    // veth has native XDP on kernels that report xdp-features (6.3+); whatever the
    // driver says, the check names it rather than guessing.
    let iface = status(&report, "interface");
    assert!(matches!(iface[..], ["ok"] | ["warn"]), "{report:#}");
    // /sys/fs/bpf is mounted and nsenter kept the host's mount namespace.
    assert_eq!(status(&report, "bpffs"), ["ok"], "{report:#}");

    // Without capabilities: nothing fails that is only unknowable from here.
    let (_, report) = doctor(&gateway, &netns, &config, true);
    assert_eq!(status(&report, "verifier"), ["unknown"], "{report:#}");
    assert_eq!(status(&report, "capabilities"), ["warn"], "{report:#}");
    let caps = report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["check"] == "capabilities"))
        .expect("capabilities check");
    assert!(
        caps["detail"]
            .as_str()
            .is_some_and(|d| d.contains("CAP_BPF")),
        "{caps}"
    );

    // A missing interface and a port someone else holds: exit 1, each named.
    let holder = topology
        .gateway
        .run(|| std::net::TcpListener::bind("127.0.0.1:9092").expect("holding a port"));
    let broken = "[xdp]\ninterface = \"nosuch0\"\n[admin]\naddress = \"127.0.0.1:9092\"\n";
    let (output, report) = doctor(&gateway, &netns, broken, false);
    assert_eq!(output.status.code(), Some(1), "{report:#}");
    assert_eq!(report["ok"], false);
    assert_eq!(status(&report, "interface"), ["fail"], "{report:#}");
    assert_eq!(status(&report, "config"), ["fail"], "{report:#}");
    assert_eq!(status(&report, "port"), ["fail"], "{report:#}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("\"exit_code\":1") && stderr.contains("interface"),
        "{stderr}"
    );
    drop(holder);
}

//! `gateway doctor`: whether this host can run the gateway, asked of the host
//! itself — kernel, BPF features and the verifier, the driver's XDP support,
//! capabilities, bpffs, the config and its ports — one line per check.

use std::{net::SocketAddr, path::Path};

use gateway::{
    caps::Cap,
    config::Config,
    xdp::{self, probe},
};
use serde::Serialize;

use super::{Context, table};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Fail,
    /// Could not be told from here (a kernel too old to say, a capability missing).
    Unknown,
}

#[derive(Debug, Serialize)]
struct Check {
    check: &'static str,
    status: Status,
    detail: String,
}

/// Some check failed; the report was printed.
#[derive(Debug, thiserror::Error)]
#[error("doctor: {0} check(s) failed: {1}")]
pub struct DoctorFailed(usize, String);

/// The oldest kernel with everything the gateway uses: XDP through a pinnable
/// bpf_link (5.9), CAP_BPF/CAP_PERFMON and the ring buffer (5.8).
const MIN_KERNEL: (u32, u32) = (5, 9);

pub fn run(ctx: &Context, path: &Path, netns: Option<&str>) -> anyhow::Result<()> {
    let mut checks = vec![kernel(), btf()];
    checks.extend(features());
    checks.push(capabilities());
    checks.push(bpffs(ctx.pins.path()));
    let config = Config::load_checked(path);
    match &config {
        Ok(config) => {
            let mut problems = Vec::new();
            let mut warnings = Vec::new();
            super::check_findings(config, netns, &mut problems, &mut warnings);
            checks.push(listed("config", path, &problems, &warnings));
            if config.xdp.enabled {
                checks.push(interface(&config.xdp.interface));
            }
            checks.extend(ports(ctx, config));
        }
        Err(err) => checks.push(Check {
            check: "config",
            status: Status::Fail,
            detail: format!("{err:#}"),
        }),
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|check| check.status == Status::Fail)
        .map(|check| check.check)
        .collect();
    if ctx.json {
        super::print_json(&serde_json::json!({ "ok": failed.is_empty(), "checks": checks }))?;
    } else {
        let rows: Vec<Vec<String>> = checks
            .iter()
            .map(|check| {
                vec![
                    check.check.to_owned(),
                    format!("{:?}", check.status).to_lowercase(),
                    table::escape(&check.detail).into_owned(),
                ]
            })
            .collect();
        table::print(&["CHECK", "STATUS", "DETAIL"], &rows)?;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(DoctorFailed(failed.len(), failed.join(", ")).into())
    }
}

fn kernel() -> Check {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>().ok());
    let version = parts.next().flatten().zip(parts.next().flatten());
    let (status, note) = match version {
        Some(version) if version >= MIN_KERNEL => (Status::Ok, String::new()),
        Some(_) => (
            Status::Fail,
            format!(
                "; the gateway needs {}.{} or later",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        ),
        None => (Status::Unknown, "; version not understood".to_owned()),
    };
    Check {
        check: "kernel",
        status,
        detail: format!("Linux {release}{note}"),
    }
}

fn btf() -> Check {
    let present = Path::new("/sys/kernel/btf/vmlinux").exists();
    Check {
        check: "btf",
        status: Status::Ok,
        detail: if present {
            "/sys/kernel/btf/vmlinux present (not required: the program uses no CO-RE relocations)"
        } else {
            "no /sys/kernel/btf/vmlinux; not required (the program uses no CO-RE relocations)"
        }
        .to_owned(),
    }
}

/// The program and map types, then a verifier load of the real program.
fn features() -> Vec<Check> {
    let mut missing = Vec::new();
    let mut unknown = None;
    for (name, found) in probe::features() {
        match found {
            Ok(true) => {}
            Ok(false) => missing.push(name),
            Err(err) => unknown = Some(err),
        }
    }
    let types = match (missing.is_empty(), unknown) {
        (false, _) => Check {
            check: "bpf features",
            status: Status::Fail,
            detail: format!("the kernel lacks {}", missing.join(", ")),
        },
        (true, Some(err)) => Check {
            check: "bpf features",
            status: Status::Unknown,
            detail: format!("probing failed ({err}); run doctor with CAP_BPF"),
        },
        (true, None) => Check {
            check: "bpf features",
            status: Status::Ok,
            detail: "XDP programs; hash, lru_hash, lpm_trie, array, percpu_array, ringbuf maps"
                .to_owned(),
        },
    };
    let verifier = if Cap::XDP.iter().all(|cap| cap.held()) {
        match probe::verify() {
            Ok(()) => Check {
                check: "verifier",
                status: Status::Ok,
                detail: "the kernel's verifier accepts the XDP program".to_owned(),
            },
            Err(err) => Check {
                check: "verifier",
                status: Status::Fail,
                detail: err.to_string(),
            },
        }
    } else {
        Check {
            check: "verifier",
            status: Status::Unknown,
            detail: "not tried: loading needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON".to_owned(),
        }
    };
    vec![types, verifier]
}

fn capabilities() -> Check {
    let all = [
        Cap::Bpf,
        Cap::NetAdmin,
        Cap::Perfmon,
        Cap::NetBindService,
        Cap::SysAdmin,
    ];
    let held: Vec<&str> = all
        .iter()
        .filter(|cap| cap.held())
        .map(|cap| cap.name())
        .collect();
    let missing: Vec<&str> = Cap::XDP
        .iter()
        .filter(|cap| !cap.held())
        .map(|cap| cap.name())
        .collect();
    Check {
        check: "capabilities",
        status: if missing.is_empty() {
            Status::Ok
        } else {
            Status::Warn
        },
        detail: format!(
            "held: {}{}",
            if held.is_empty() {
                "none".to_owned()
            } else {
                held.join(", ")
            },
            if missing.is_empty() {
                String::new()
            } else {
                format!("; `gateway run` with XDP also needs {}", missing.join(", "))
            }
        ),
    }
}

/// bpffs under the pin directory, in the host's mount namespace or shared with it.
fn bpffs(pin_dir: &Path) -> Check {
    let parent = pin_dir.parent().unwrap_or(pin_dir);
    if !xdp::is_bpffs(parent) {
        return Check {
            check: "bpffs",
            status: Status::Fail,
            detail: format!(
                "{} is not a BPF filesystem: mount it on the host (`mount -t bpf bpf {}`)",
                parent.display(),
                parent.display()
            ),
        };
    }
    let (status, how) = match xdp::netns::host_mount_namespace_is_ours() {
        Some(true) => (Status::Ok, "in the host's mount namespace (pid 1's)"),
        _ if xdp::netns::mount_is_shared(parent) => (
            Status::Ok,
            "a shared mount: pins made here reach the host's mount namespace",
        ),
        Some(false) => (
            Status::Fail,
            "in a private mount namespace: pins made here vanish with it (use nsenter --net, not ip netns exec)",
        ),
        None => (Status::Unknown, "pid 1's mount namespace cannot be read"),
    };
    Check {
        check: "bpffs",
        status,
        detail: format!("{} mounted, {how}", parent.display()),
    }
}

/// Whether the interface's driver runs XDP natively (netdev `xdp-features`).
fn interface(iface: &str) -> Check {
    let (status, detail) = match xdp::if_index(iface) {
        Err(err) => (Status::Fail, err.to_string()),
        Ok(index) => match probe::xdp_features(index) {
            Ok(Some(bits)) if bits & probe::XDP_ACT_BASIC != 0 => (
                Status::Ok,
                format!("{iface}: the driver runs XDP natively (xdp-features {bits:#x})"),
            ),
            Ok(Some(bits)) => (
                Status::Warn,
                format!(
                    "{iface}: no native XDP in the driver (xdp-features {bits:#x}); mode = auto falls back to generic XDP, which filters after the kernel built the packet"
                ),
            ),
            Ok(None) => (
                Status::Unknown,
                format!("{iface}: the kernel has no netdev xdp-features to ask (before 6.3)"),
            ),
            Err(err) => (
                Status::Unknown,
                format!("{iface}: asking for xdp-features failed: {err}"),
            ),
        },
    };
    Check {
        check: "interface",
        status,
        detail,
    }
}

/// Each listener's and the admin endpoint's port: free, or held by this state
/// directory's running daemon.
fn ports(ctx: &Context, config: &Config) -> Vec<Check> {
    let daemon = ctx.state.running_daemon().ok().flatten();
    let admin = config
        .admin
        .enabled
        .then(|| ("admin".to_owned(), config.admin.address));
    config
        .listeners
        .iter()
        .map(|listener| (format!("listener {}", listener.name), listener.address))
        .chain(admin)
        .map(|(name, address)| port(&name, address, daemon))
        .collect()
}

fn port(name: &str, address: SocketAddr, daemon: Option<u32>) -> Check {
    let (status, detail) = match std::net::TcpListener::bind(address) {
        Ok(_) => (Status::Ok, format!("{name} {address}: free")),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => match daemon {
            Some(pid) => (
                Status::Ok,
                format!("{name} {address}: in use, by the running daemon (pid {pid})"),
            ),
            None => (
                Status::Fail,
                format!("{name} {address}: in use by another process"),
            ),
        },
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => (
            Status::Warn,
            format!("{name} {address}: binding needs CAP_NET_BIND_SERVICE, which doctor lacks"),
        ),
        Err(err) => (Status::Fail, format!("{name} {address}: {err}")),
    };
    Check {
        check: "port",
        status,
        detail,
    }
}

fn listed(check: &'static str, path: &Path, problems: &[String], warnings: &[String]) -> Check {
    let (status, detail) = if !problems.is_empty() {
        (Status::Fail, problems.join("; "))
    } else if !warnings.is_empty() {
        (Status::Warn, warnings.join("; "))
    } else {
        (Status::Ok, format!("{} is valid", path.display()))
    };
    Check {
        check,
        status,
        detail,
    }
}

//! The peers the gateway is compared with, set up the way an operator would: an
//! nftables netdev-ingress drop rule over an address set, and xdp-filter (xdp-tools).
//! Both are removed on drop, also when a run fails.

use std::{
    fs,
    io::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};
use aya::programs::Xdp;
use aya_obj::programs::XdpAttachType;
use gateway_tests::net::NetNs;

/// Runs `program args...` inside `ns` (only the network namespace changes, so bpffs
/// stays visible: `ip netns exec` would remount /sys and hide it), returning stdout.
pub fn in_ns(ns: &NetNs, program: &str, args: &[&str]) -> anyhow::Result<String> {
    in_ns_with_input(ns, program, args, None)
}

fn in_ns_with_input(
    ns: &NetNs,
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> anyhow::Result<String> {
    let line = format!("{program} {}", args.join(" "));
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", ns.path()))
        .arg(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{line}` (is it installed?)"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("writing to `{line}`"))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !output.status.success() {
        bail!(
            "`{line}` in {} failed ({}): {}",
            ns.name,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("`{line}` printed non-UTF-8"))
}

/// The nftables table this module installs.
const NFT_TABLE: &str = "gwbench";

/// A netdev ingress chain dropping sources in a set, with a counter.
pub struct Nftables<'a> {
    ns: &'a NetNs,
}

impl<'a> Nftables<'a> {
    /// Installs the table on `iface`. Priority -500 runs the rule before anything
    /// else at ingress, as a careful operator would.
    pub fn install(ns: &'a NetNs, iface: &str, blocked: &[Ipv4Addr]) -> anyhow::Result<Self> {
        let elements = blocked
            .iter()
            .map(Ipv4Addr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let ruleset = format!(
            "table netdev {NFT_TABLE} {{\n\
             \tset blocked {{ type ipv4_addr; elements = {{ {elements} }} }}\n\
             \tchain ingress {{\n\
             \t\ttype filter hook ingress device \"{iface}\" priority -500; policy accept;\n\
             \t\tip saddr @blocked counter drop\n\
             \t}}\n\
             }}\n"
        );
        in_ns_with_input(ns, "nft", &["-f", "-"], Some(&ruleset))?;
        Ok(Self { ns })
    }

    /// Packets the rule's counter has dropped.
    pub fn dropped(&self) -> anyhow::Result<u64> {
        let json = in_ns(
            self.ns,
            "nft",
            &["-j", "list", "table", "netdev", NFT_TABLE],
        )?;
        let value: serde_json::Value =
            serde_json::from_str(&json).context("`nft -j` printed unexpected JSON")?;
        let mut packets = 0;
        collect_counters(&value, &mut packets);
        Ok(packets)
    }
}

/// Sums every `"counter": {"packets": N}` in nft's JSON.
fn collect_counters(value: &serde_json::Value, packets: &mut u64) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                match inner.get("packets").and_then(serde_json::Value::as_u64) {
                    Some(n) if key == "counter" => *packets += n,
                    _ => collect_counters(inner, packets),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect_counters(item, packets);
            }
        }
        _ => {}
    }
}

impl Drop for Nftables<'_> {
    fn drop(&mut self) {
        let _ = in_ns(self.ns, "nft", &["delete", "table", "netdev", NFT_TABLE]);
    }
}

/// xdp-filter loaded on one interface, dropping the given IPv4 sources.
///
/// xdp-filter keeps its maps pinned globally (`/sys/fs/bpf/xdp-filter`), so only one
/// of these may exist at a time.
pub struct XdpFilter<'a> {
    ns: &'a NetNs,
    iface: String,
}

impl<'a> XdpFilter<'a> {
    /// `xdp-filter load --mode <mode> --features ipv4,ipv6 --policy allow <iface>`:
    /// the IP features the gateway also has, listed addresses dropped.
    pub fn load(
        ns: &'a NetNs,
        iface: &str,
        mode: &str,
        blocked: &[Ipv4Addr],
    ) -> anyhow::Result<Self> {
        in_ns(
            ns,
            "xdp-filter",
            &[
                "load",
                "--mode",
                mode,
                "--features",
                "ipv4,ipv6",
                "--policy",
                "allow",
                iface,
            ],
        )?;
        let filter = Self {
            ns,
            iface: iface.to_owned(),
        };
        for addr in blocked {
            in_ns(
                ns,
                "xdp-filter",
                &["ip", &addr.to_string(), "--mode", "src"],
            )?;
        }
        Ok(filter)
    }

    /// The XDP program attached to the interface, as bpftool reports it, opened by
    /// id so `BPF_PROG_TEST_RUN` can run it.
    pub fn program(&self) -> anyhow::Result<Xdp> {
        let json = in_ns(
            self.ns,
            "bpftool",
            &["-j", "net", "show", "dev", &self.iface],
        )?;
        let id = attached_xdp_id(&json)
            .ok_or_else(|| anyhow!("bpftool shows no XDP program on {}: {json}", self.iface))?;
        // bpftool can pin a program by id and aya can open a pinned program; the pin
        // is only this bridge and goes at once.
        let pin = PathBuf::from(format!(
            "/sys/fs/bpf/gwbench-xdp-filter-{}",
            std::process::id()
        ));
        let pin_str = pin.to_string_lossy().into_owned();
        in_ns(
            self.ns,
            "bpftool",
            &["prog", "pin", "id", &id.to_string(), &pin_str],
        )?;
        let program = Xdp::from_pin(&pin, XdpAttachType::Interface);
        let _ = fs::remove_file(&pin);
        program.with_context(|| format!("opening xdp-filter's program {id}"))
    }
}

/// The id of the first XDP program in `bpftool -j net show` output.
fn attached_xdp_id(json: &str) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    value
        .as_array()?
        .iter()
        .find_map(|entry| entry.get("xdp")?.as_array()?.first()?.get("id")?.as_u64())
}

impl Drop for XdpFilter<'_> {
    fn drop(&mut self) {
        let _ = in_ns(self.ns, "xdp-filter", &["unload", &self.iface, "--all"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_nft_counters() {
        let json = r#"{"nftables":[{"metainfo":{}},{"rule":{"expr":[{"match":{}},
            {"counter":{"packets":7,"bytes":448}},{"drop":null}]}},
            {"rule":{"expr":[{"counter":{"packets":3,"bytes":1}}]}}]}"#;
        let value = serde_json::from_str(json).expect("valid JSON");
        let mut packets = 0;
        collect_counters(&value, &mut packets);
        assert_eq!(packets, 10);
    }

    #[test]
    fn finds_the_attached_program() {
        let json = r#"[{"xdp":[{"devname":"x0","ifindex":3,"mode":"generic","id":583}],"tc":[]}]"#;
        assert_eq!(attached_xdp_id(json), Some(583));
        assert_eq!(attached_xdp_id(r#"[{"xdp":[],"tc":[]}]"#), None);
    }
}

//! Instructions per request under callgrind (`gateway-bench proxy --callgrind`): the
//! same rig, the gateway, the reference forwarder and HAProxy each started under
//! `valgrind --tool=callgrind` with instrumentation off, then for each target and protocol
//! a warm-up, and a fixed number of requests (h2load) instrumented, dumped
//! to a file of its own. Instruction counts do not depend on what else the machine
//! runs, so this compares builds on a busy machine where CPU time cannot; it counts
//! user-space instructions only (no kernel, no cache misses).

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;

use super::{Protocol, Target, load};

/// Requests per warm-up, not counted: connections to the fleet opened, code paths
/// translated by valgrind.
const WARM_UP: u32 = 200;

/// `valgrind` with callgrind, instrumentation off until the runner turns it on, its
/// output in `dir` (one file per process and dump).
pub fn valgrind(dir: &Path, name: &str) -> Command {
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        // Not even instrumented until counted: starts faster, and the runner's
        // `callgrind_control -i on` starts the count.
        .arg("--instr-atstart=no")
        .arg(format!(
            "--callgrind-out-file={}",
            dir.join(format!("callgrind.{name}.%p")).display()
        ));
    command
}

/// A shell script that runs the gateway binary `gateway` under [`valgrind`]; the
/// rig starts it where it would start the gateway (`GATEWAY_BIN`).
pub fn gateway_wrapper(dir: &Path, gateway: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let script = dir.join("gateway-under-callgrind.sh");
    let command = valgrind(dir, "gateway");
    let args: Vec<String> = command
        .get_args()
        .map(|arg| format!("'{}'", arg.to_string_lossy()))
        .collect();
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec valgrind {} '{}' \"$@\"\n",
            args.join(" "),
            gateway.display()
        ),
    )?;
    let status = Command::new("chmod").arg("+x").arg(&script).status()?;
    if !status.success() {
        bail!("chmod +x {}", script.display());
    }
    Ok(script)
}

/// One target and protocol under callgrind.
#[derive(Serialize)]
pub struct ProfileRow {
    pub target: &'static str,
    pub protocol: &'static str,
    pub connections: u32,
    pub requests: u64,
    /// Instructions executed by the process (every thread) per request.
    pub instructions_per_request: f64,
    /// The dump, for `callgrind_annotate`.
    pub dump: PathBuf,
}

/// What [`measure`] runs.
pub struct Run<'a> {
    pub target: Target,
    pub protocol: Protocol,
    pub pid: u32,
    pub url: &'a str,
    pub headers: &'a [String],
    pub connections: u32,
    pub requests: u32,
    pub cpu: usize,
    /// Where valgrind writes its dumps.
    pub dir: &'a Path,
}

/// Warms `run.target` up, then counts the instructions of `run.requests` requests.
pub fn measure(run: &Run<'_>) -> anyhow::Result<ProfileRow> {
    h2load(run, WARM_UP)?;
    control(run.pid, &["-i", "on"])?;
    let done = h2load(run, run.requests);
    control(run.pid, &["-i", "off"])?;
    let done = done?;
    let before = dumps(run.dir, run.pid)?;
    control(run.pid, &["-d"])?;
    let dump = dumps(run.dir, run.pid)?
        .into_iter()
        .find(|dump| !before.contains(dump))
        .ok_or_else(|| anyhow!("callgrind wrote no dump for process {}", run.pid))?;
    let text = fs::read_to_string(&dump).with_context(|| format!("reading {}", dump.display()))?;
    let instructions = total_instructions(&text)
        .ok_or_else(|| anyhow!("no `totals:` line in {}", dump.display()))?;
    let named = dump.with_file_name(format!(
        "{}.{}.{}",
        dump.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("callgrind"),
        label(run.target),
        if run.protocol == Protocol::Http1 {
            "h1"
        } else {
            "h2"
        }
    ));
    fs::rename(&dump, &named)?;
    Ok(ProfileRow {
        target: run.target.label(),
        protocol: protocol_label(run.protocol),
        connections: run.connections,
        requests: done,
        instructions_per_request: instructions as f64 / done.max(1) as f64,
        dump: named,
    })
}

/// The protocol as h2load speaks it here.
fn protocol_label(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http1 => "HTTP/1.1 (h2load --h1)",
        Protocol::Http2 => "HTTP/2 (h2load)",
    }
}

/// A file-name word for `target`.
fn label(target: Target) -> &'static str {
    match target {
        Target::Gateway => "gateway",
        Target::GatewayNoWaf => "gateway-nowaf",
        Target::GatewayJwt => "gateway-jwt",
        Target::GatewayJwtFresh => "gateway-jwt-fresh",
        Target::Reference => "reference",
        Target::Haproxy => "haproxy",
        Target::HaproxyJwt => "haproxy-jwt",
        Target::Direct => "direct",
    }
}

/// `h2load -n requests` (`--h1` for HTTP/1.1); the requests that succeeded.
fn h2load(run: &Run<'_>, requests: u32) -> anyhow::Result<u64> {
    let mut command = load::pinned(run.cpu, "h2load");
    command
        .args(["-t1", &format!("-c{}", run.connections), "-m1"])
        .arg(format!("-n{requests}"))
        .args(run.headers.iter().flat_map(|header| ["-H", header]));
    if run.protocol == Protocol::Http1 {
        command.arg("--h1");
    }
    let text = load::stdout_of(
        command.arg(run.url),
        "h2load",
        " (apt-get install nghttp2-client)",
    )?;
    let (_, done, failed) =
        load::parse_h2load(&text).with_context(|| format!("unexpected h2load output:\n{text}"))?;
    if failed > 0 || done < u64::from(requests) || !text.contains(&format!("{done} 2xx")) {
        bail!(
            "h2load: not every request of {requests} answered 2xx by {}:\n{text}",
            run.url
        );
    }
    Ok(done)
}

/// `callgrind_control <args> <pid>`.
fn control(pid: u32, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .output()
        .context("running callgrind_control (apt-get install valgrind)")?;
    if !output.status.success() {
        bail!(
            "callgrind_control {} {pid}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The dumps of process `pid` in `dir`.
fn dumps(dir: &Path, pid: u32) -> anyhow::Result<Vec<PathBuf>> {
    let suffix = format!(".{pid}.");
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("callgrind.") && name.contains(&suffix))
        {
            found.push(path);
        }
    }
    Ok(found)
}

/// The `totals:` line of a callgrind dump: instructions executed. (Its `summary:`
/// line, near the top, says 0 when instrumentation started late.)
fn total_instructions(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("totals:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse().ok())
}

/// The callgrind rows as tables: instructions per request of every target, then the
/// same derived figures as the CPU table (stack floor, the gateway's own, the WAF).
pub fn markdown(rows: &[ProfileRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "### Instructions per request (callgrind)\n\nEach proxy under `valgrind \
         --tool=callgrind --instr-atstart=no` (instrumented only while counted), h2load `-n` requests \
         after a warm-up of 200 (`--h1` for HTTP/1.1); user-space instructions of every \
         thread of the process, per request. Repeatable on a busy machine; no kernel \
         time, no cache misses.\n\n| protocol | conns | target | requests | \
         instructions/request |\n| --- | ---: | --- | ---: | ---: |\n",
    );
    let mut places: Vec<(&'static str, u32)> = Vec::new();
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.0} |",
            row.protocol, row.connections, row.target, row.requests, row.instructions_per_request
        );
        if !places.contains(&(row.protocol, row.connections)) {
            places.push((row.protocol, row.connections));
        }
    }
    let table = super::verdicts::cost_rows(
        &places,
        |target, protocol, connections| {
            rows.iter()
                .find(|row| {
                    row.target == target.label()
                        && row.protocol == protocol
                        && row.connections == connections
                })
                .map(|row| row.instructions_per_request)
        },
        0,
    );
    let _ = write!(
        out,
        "\nThe same in instructions per request:\n\n{}{table}\n",
        super::verdicts::COST_HEADER
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_instruction_total_of_a_dump() {
        let dump = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nfn=(1) main\n3 12\n\
                    totals: 4242\n";
        assert_eq!(total_instructions(dump), Some(4242));
        assert_eq!(
            total_instructions(&format!("summary: 0\n{dump}")),
            Some(4242)
        );
        assert_eq!(total_instructions("events: Ir\n"), None);
    }
}

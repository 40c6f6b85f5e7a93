//! Helpers shared by the subcommands: the workspace, and external commands that are
//! printed before they run so CI logs show exactly what happened.

use std::{
    env,
    ffi::OsStr,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, anyhow, bail};

/// The workspace root and its pinned userspace toolchain.
pub struct Workspace {
    pub root: PathBuf,
    /// The `channel` of `rust-toolchain.toml`, e.g. `1.99.0`.
    pub toolchain: String,
}

impl Workspace {
    /// The workspace this xtask was built from, and its `rust-toolchain.toml` channel.
    pub fn locate() -> anyhow::Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or_else(|| anyhow!("xtask's manifest dir has no parent"))?
            .to_path_buf();
        let file = root.join("rust-toolchain.toml");
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let toolchain = parse_channel(&text)
            .ok_or_else(|| anyhow!("no `channel = \"...\"` line in {}", file.display()))?;
        Ok(Self { root, toolchain })
    }

    /// `cargo +<pinned toolchain>` in the workspace root. The explicit toolchain wins over
    /// a `RUSTUP_TOOLCHAIN` inherited from however `cargo xtask` itself was started.
    pub fn cargo(&self) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.arg(format!("+{}", self.toolchain))
            .current_dir(&self.root);
        cmd
    }

    /// Builds the `gateway` binary and returns its path.
    pub fn build_gateway(&self, release: bool) -> anyhow::Result<PathBuf> {
        let mut build = self.cargo();
        build.args(["build", "--package", "gateway", "--bin", "gateway"]);
        if release {
            build.arg("--release");
        }
        run(&mut build)?;
        let profile = if release { "release" } else { "debug" };
        let binary = self.target_dir()?.join(profile).join("gateway");
        if !binary.is_file() {
            bail!(
                "`cargo build` succeeded but {} does not exist",
                binary.display()
            );
        }
        Ok(binary)
    }

    /// The cargo target directory (honours `CARGO_TARGET_DIR` and cargo config).
    pub fn target_dir(&self) -> anyhow::Result<PathBuf> {
        let json =
            stdout_of(
                self.cargo()
                    .args(["metadata", "--format-version", "1", "--no-deps"]),
            )?;
        #[derive(serde::Deserialize)]
        struct Metadata {
            target_directory: PathBuf,
        }
        let metadata: Metadata =
            serde_json::from_str(&json).context("`cargo metadata` printed unexpected JSON")?;
        Ok(metadata.target_directory)
    }
}

/// The `channel` value of a `rust-toolchain.toml`.
fn parse_channel(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct File {
        toolchain: Toolchain,
    }
    #[derive(serde::Deserialize)]
    struct Toolchain {
        channel: String,
    }
    toml::from_str::<File>(text)
        .ok()
        .map(|file| file.toolchain.channel)
}

/// `cmd` as a shell line: `ENV=value program args...`.
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => parts.push(format!("{}={}", key.to_string_lossy(), quote(value))),
            None => parts.push(format!("env -u {}", key.to_string_lossy())),
        }
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(arg: &OsStr) -> String {
    let arg = arg.to_string_lossy();
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c));
    if plain {
        arg.into_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Prints and runs `cmd`, failing unless it exits successfully.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let line = display(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Prints and runs `cmd`, capturing its output whatever its exit status; fails only if
/// it cannot be started.
pub fn capture(cmd: &mut Command) -> anyhow::Result<Output> {
    let line = display(cmd);
    println!("$ {line}");
    cmd.output()
        .with_context(|| format!("could not start `{line}`"))
}

/// Prints and runs `cmd`, returning its stdout; fails unless it exits successfully.
pub fn stdout_of(cmd: &mut Command) -> anyhow::Result<String> {
    let output = capture(cmd)?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout)
        .with_context(|| format!("`{}` printed non-UTF-8 output", display(cmd)))
}

/// The first executable file called `name` on `PATH` (what `which` prints).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| {
            fs::metadata(path)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// Whether this process runs with effective uid 0.
pub fn is_root() -> anyhow::Result<bool> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    // `Uid:` is followed by the real, effective, saved and filesystem uids.
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        .ok_or_else(|| anyhow!("no effective uid in /proc/self/status"))?;
    Ok(euid == "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_channel() {
        let toml = "# comment\n[toolchain]\nchannel = \"1.99.0\"\ncomponents = [\"clippy\"]\n";
        assert_eq!(parse_channel(toml).as_deref(), Some("1.99.0"));
        assert_eq!(parse_channel("[toolchain]\n"), None);
    }

    #[test]
    fn displays_commands_like_a_shell() {
        let mut cmd = Command::new("dpkg-query");
        cmd.args(["-W", "-f=${Status}", "it's"]).env("A", "b c");
        assert_eq!(
            display(&cmd),
            r"A='b c' dpkg-query -W '-f=${Status}' 'it'\''s'"
        );
    }
}

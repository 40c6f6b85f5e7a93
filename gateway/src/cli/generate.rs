//! `gateway generate`: man pages (clap_mangen) and shell completions
//! (clap_complete) from the same clap definition the binary parses, so they never
//! drift from it; `cargo xtask dist` ships them.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{CommandFactory as _, Subcommand};

#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Write gateway.1 and one page per subcommand (gateway-xdp-attach.1, …) to DIR.
    Man {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
    /// Print the completion script for SHELL on stdout.
    Completions { shell: clap_complete::Shell },
}

pub fn run(command: GenerateCommand) -> anyhow::Result<()> {
    let cli = super::Cli::command();
    match command {
        GenerateCommand::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cli, &dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))?;
        }
        GenerateCommand::Completions { shell } => {
            let mut cli = cli;
            clap_complete::generate(shell, &mut cli, "gateway", &mut std::io::stdout());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_cover_every_subcommand_and_the_exit_codes() {
        let dir = tempfile::tempdir().expect("tempdir");
        run(GenerateCommand::Man {
            dir: dir.path().to_owned(),
        })
        .expect("generating");
        let main = std::fs::read_to_string(dir.path().join("gateway.1")).expect("gateway.1");
        assert!(
            main.contains("Exit codes") && main.contains("noperm"),
            "{main}"
        );
        for page in [
            "gateway-doctor.1",
            "gateway-xdp-attach.1",
            "gateway-blocklist-add.1",
        ] {
            assert!(dir.path().join(page).is_file(), "{page} missing");
        }
    }
}

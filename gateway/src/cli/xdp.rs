//! `gateway xdp attach|detach|status`.

use anyhow::Context as _;
use gateway::{
    lists::Lists,
    xdp::{
        self as kernel, Capacity, KernelMaps,
        kernel_mode::{self, KernelMode},
    },
};
use serde::Serialize;

use super::{
    Context, XdpCommand, format_unix, print_json,
    table::{self, escape},
};

pub fn run(ctx: &Context, command: XdpCommand) -> anyhow::Result<()> {
    match command {
        XdpCommand::Attach {
            iface,
            mode,
            rate_limit_entries,
            blocklist_entries,
            cidr_entries,
        } => {
            let defaults = Capacity::default();
            let capacity = Capacity {
                rate_limit_entries: rate_limit_entries.unwrap_or(defaults.rate_limit_entries),
                blocklist_entries: blocklist_entries.unwrap_or(defaults.blocklist_entries),
                cidr_entries: cidr_entries.unwrap_or(defaults.cidr_entries),
            };
            // An unreadable lists.json stops the attach before the kernel is touched,
            // instead of leaving a program attached with nothing to restore.
            ctx.state.lock_lists()?.load()?;
            let attachment = kernel::attach(&ctx.pins, &iface, mode, &capacity)?;
            ctx.state.save_attachment(&attachment)?;
            let maps = KernelMaps::open(&ctx.pins)?;
            let restored = Lists::new(&maps, &ctx.state).restore()?;
            tracing::info!(
                target: "audit",
                event = "xdp_attached",
                interface = %attachment.interface,
                mode = attachment.mode.as_str(),
                program_id = attachment.program_id,
                restored,
            );
            if ctx.json {
                #[derive(Serialize)]
                struct Attached<'a> {
                    #[serde(flatten)]
                    attachment: &'a kernel::Attachment,
                    restored: usize,
                }
                print_json(&Attached {
                    attachment: &attachment,
                    restored,
                })
            } else {
                println!(
                    "attached program {} to {} ({} mode); pinned under {}",
                    attachment.program_id,
                    escape(&attachment.interface),
                    attachment.mode.as_str(),
                    ctx.pins.path().display()
                );
                if restored > 0 {
                    println!("restored {restored} list entries from the state file");
                }
                Ok(())
            }
        }
        XdpCommand::Detach => {
            kernel::detach(&ctx.pins)?;
            ctx.state.clear_attachment()?;
            tracing::info!(target: "audit", event = "xdp_detached", pin_dir = %ctx.pins.path().display());
            if ctx.json {
                print_json(&serde_json::json!({ "detached": true }))
            } else {
                println!(
                    "detached; the lists stay in {} and come back on the next attach",
                    ctx.state.path().display()
                );
                Ok(())
            }
        }
        XdpCommand::Status => status(ctx),
    }
}

fn status(ctx: &Context) -> anyhow::Result<()> {
    let status = kernel::status(&ctx.pins)?;
    let attachment = ctx.state.attachment()?;
    // What the kernel runs, not what was asked for: `auto` may have fallen back
    // to generic XDP.
    let running = match &attachment {
        Some(a) => kernel_mode::mode_of(a.ifindex, status.program_id).with_context(|| {
            format!(
                "asking the kernel how XDP runs on {} (ifindex {})",
                escape(&a.interface),
                a.ifindex
            )
        })?,
        None => None,
    };
    if ctx.json {
        #[derive(Serialize)]
        struct Report<'a> {
            pin_dir: &'a std::path::Path,
            attachment: Option<&'a kernel::Attachment>,
            /// `native`, `generic` or `offload`, from the kernel; null when the
            /// program is not on the recorded interface (another namespace?).
            kernel_mode: Option<KernelMode>,
            #[serde(flatten)]
            status: &'a kernel::Status,
        }
        return print_json(&Report {
            pin_dir: ctx.pins.path(),
            attachment: attachment.as_ref(),
            kernel_mode: running,
            status: &status,
        });
    }
    println!("program id   {}", status.program_id);
    match &attachment {
        Some(a) => {
            println!(
                "interface    {} (ifindex {})",
                escape(&a.interface),
                a.ifindex
            );
            let requested = a.mode.as_str();
            match running {
                Some(mode) => println!("mode         {} (requested {requested})", mode.as_str()),
                None => println!(
                    "mode         unknown: program {} is not on ifindex {} in this network namespace (requested {requested}; pass --netns?)",
                    status.program_id, a.ifindex
                ),
            }
            println!("attached at  {}", format_unix(a.attached_at));
        }
        None => println!(
            "interface    unknown (no attachment record in {})",
            ctx.state.path().display()
        ),
    }
    println!("pin dir      {}", ctx.pins.path().display());
    println!();
    let rows: Vec<Vec<String>> = status
        .maps
        .iter()
        .map(|map| {
            vec![
                map.name.to_owned(),
                map.kind.to_owned(),
                map.capacity.to_string(),
                map.entries
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            ]
        })
        .collect();
    table::print(&["map", "kind", "capacity", "entries"], &rows)?;
    Ok(())
}

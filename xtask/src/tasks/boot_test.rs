//! `cargo xtask boot-test`: boots the built disk in QEMU under UEFI firmware and proves what the
//! running machine is (boot/).

use super::{print_json, Global};
use crate::boot::qemu::Accel;
use crate::boot::{boot_test, BootOptions, BootReport};
use crate::spec::{select_board, Arch};
use anyhow::Result;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct BootTestArgs {
    /// Target architecture; picks that arch's default board
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// Board name (in boards/) or path to a board file
    #[arg(long)]
    pub board: Option<String>,
    /// Accelerator: auto uses KVM only where a probe proves it works
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// Override the board's boot timeout, in seconds
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Boot under the board's Secure Boot firmware with the variable store of a signed build (see
    /// `build-image --secure-boot-keys`): passes only if the node reports Secure Boot on and the kernel
    /// locked down. Then prove the firmware refuses an unsigned UKI, one signed by another db key and
    /// the signed one with a byte of .initrd changed
    #[arg(long)]
    pub secure_boot: bool,
}

pub fn run(global: &Global, args: &BootTestArgs) -> Result<()> {
    let ws = global.workspace();
    let board = select_board(&ws.boards_dir(), args.board.as_deref(), args.arch)?;
    let options = BootOptions {
        accel: args.accel,
        timeout: args.timeout.map(Duration::from_secs),
        secure_boot: args.secure_boot,
        refusals: args.secure_boot,
    };
    let report = boot_test(&ws, &board, &options)?;
    if global.json {
        print_json(&report)
    } else {
        print_summary(&report);
        Ok(())
    }
}

fn print_summary(r: &BootReport) {
    let s = &r.status;
    println!(
        "boot-test {}: ready in {:.2} s ({}{}, kernel {}, root {} read-only), powered off {:.2} s after the power button",
        r.board,
        r.ready_secs,
        r.accel,
        if r.secure_boot { ", Secure Boot firmware with our keys" } else { "" },
        s.kernel,
        s.root_fstype,
        r.poweroff_secs
    );
    if let Some(sb) = &s.secure_boot {
        let word = |b: Option<bool>| b.map_or("unknown", |b| if b { "on" } else { "off" });
        println!(
            "  Secure Boot {} (setup mode {}), kernel lockdown {}",
            word(sb.enabled),
            word(sb.setup_mode),
            sb.lockdown.as_deref().unwrap_or("unknown")
        );
    }
    if let Some(milestones) = s.milestones_ms.as_object() {
        let mut steps: Vec<(&String, u64)> = milestones.iter().map(|(k, v)| (k, v.as_u64().unwrap_or(0))).collect();
        steps.sort_by_key(|(_, ms)| *ms);
        let steps: Vec<String> = steps.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  kernel → ready (ms since kernel start): {}", steps.join(", "));
    }
    let extensions: Vec<String> = s.extensions.iter().map(|e| format!("{} {}", e.name, e.version)).collect();
    println!("  extensions: {}", if extensions.is_empty() { "none".to_string() } else { extensions.join(", ") });
    println!("  containerd: {}", s.containerd);
    for svc in &s.services {
        println!(
            "  service {}: {} (pid {:?}, restarts {}, cgroup {}, own namespaces {})",
            svc.name,
            svc.state,
            svc.pid,
            svc.restarts,
            svc.cgroup.as_deref().unwrap_or("-"),
            svc.namespaces.join(",")
        );
    }
    if let Some(ga) = &r.guest_agent {
        println!(
            "  guest agent {} answered guest-ping and guest-info ({} commands enabled, guest-exec {}) {:.2} s after QEMU start",
            ga.version,
            ga.enabled_commands,
            if ga.guest_exec_enabled { "ENABLED" } else { "disabled" },
            r.guest_agent_secs.unwrap_or_default()
        );
    }
    println!("  shells found: none of {} entries walked", s.shells_checked);
    match &r.scratch {
        Some(sc) => println!(
            "  scratch: {} on the node; {} bytes written to {}, marker {} not found on the disk",
            s.scratch,
            sc.nonzero_bytes,
            sc.image.display(),
            sc.marker
        ),
        None => println!("  scratch: {}", s.scratch),
    }
    println!("  kernel arguments present: {}", r.cmdline_required.join(" "));
    for refusal in &r.refusals {
        println!(
            "  refused as proven: the {} ({:.1} s after QEMU started: {})",
            refusal.image, refusal.refused_secs, refusal.line
        );
    }
}

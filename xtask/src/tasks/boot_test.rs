//! `cargo xtask boot-test`: boots the built disk in QEMU under UEFI firmware and proves what the
//! running machine is (boot/).

use super::{print_json, Global};
use crate::boot::qemu::Accel;
use crate::boot::{boot_test, BootOptions, BootReport, NodeReport};
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
        first_role_only: false,
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
    println!(
        "boot-test {}: {} role{} booted from one disk (sha256 {}, unchanged after), {}{}",
        r.board,
        r.nodes.len(),
        if r.nodes.len() == 1 { "" } else { "s" },
        r.disk_sha256,
        r.accel,
        if r.secure_boot { ", Secure Boot firmware with our keys" } else { "" }
    );
    for node in &r.nodes {
        print_node(node);
    }
    for refusal in &r.refusals {
        println!(
            "refused as proven: the {} ({:.1} s after QEMU started: {})",
            refusal.image, refusal.refused_secs, refusal.line
        );
    }
}

fn print_node(n: &NodeReport) {
    let s = &n.status;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    println!(
        "{}: ready in {:.2} s (kernel {}, root {} read-only), powered off {:.2} s after the request \
         (machined's reason: {})",
        n.role, n.ready_secs, s.kernel, s.root_fstype, n.poweroff_secs, n.shutdown
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
    let config = &s.config;
    match config["valid"].as_bool() {
        Some(true) => println!("  config: {} from {}", text(&config["role"]), text(&config["source"])),
        _ => println!(
            "  config: invalid, from {}: {}: {}",
            text(&config["source"]),
            text(&config["error"]["field"]),
            text(&config["error"]["why"])
        ),
    }
    println!(
        "  network: host name {} ({}), default route via {}, nameservers {}",
        text(&s.network["hostname"]),
        text(&s.network["hostname_source"]),
        text(&s.network["default_route"]),
        s.network["nameservers"]
    );
    for link in s.network["links"].as_array().into_iter().flatten() {
        let lease = &link["lease"];
        let lease = if lease.is_null() {
            String::new()
        } else {
            format!(
                ", lease from {}: routers {} dns {} ntp {} search {}",
                text(&lease["server"]),
                lease["routers"],
                lease["dns"],
                lease["ntp"],
                lease["search"]
            )
        };
        println!(
            "    {} {} {}: {}{lease}",
            text(&link["name"]),
            text(&link["mac"]),
            text(&link["method"]),
            link["addresses"]
        );
    }
    if let Some(after) = n.renewed_after_secs {
        println!("  LAN lease renewed {after:.1} s after ready ({} renewals seen by the LAN)", n.lan.renewals);
    }
    println!(
        "  time: synced {} from {} {}",
        s.time["synced"],
        text(&s.time["server"]),
        s.time["reason"].as_str().map(|r| format!("({r})")).unwrap_or_default()
    );
    println!("  API through the forward: {}", if n.api_status.is_some() { "answered" } else { "no answer" });
    let requests: Vec<String> = s.modules_on_demand["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| format!("{} → {}", text(&r["request"]), text(&r["result"])))
        .collect();
    println!(
        "  modules on demand (sig_enforce {}): {}",
        text(&s.modules_on_demand["sig_enforce"]),
        requests.join("; ")
    );
    println!(
        "  kubernetes: bpffs mounted {}, {} sysctls set, writable paths {}, /usr read-only {}",
        s.kubernetes["bpffs"]["mounted"],
        s.kubernetes["sysctls"].as_array().map_or(0, Vec::len),
        s.kubernetes["writable_paths"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| text(&w["path"]))
            .collect::<Vec<_>>()
            .join(" "),
        s.kubernetes["usr_read_only"]
    );
    let extensions: Vec<String> = s.extensions.iter().map(|e| format!("{} {}", e.name, e.version)).collect();
    println!("  extensions: {}", if extensions.is_empty() { "none".to_string() } else { extensions.join(", ") });
    println!("  containerd: {}", s.containerd);
    println!("  facts: {}", s.facts);
    for svc in &s.services {
        let waiting =
            if svc.waiting_for.is_empty() { String::new() } else { format!(" for {}", svc.waiting_for.join(", ")) };
        println!(
            "  service {}: {}{waiting} (pid {:?}, restarts {}, cgroup {}, own namespaces {}, log {})",
            svc.name,
            svc.state,
            svc.pid,
            svc.restarts,
            svc.cgroup.as_deref().unwrap_or("-"),
            svc.namespaces.join(","),
            svc.log
        );
    }
    if let Some(ga) = &n.guest_agent {
        println!(
            "  guest agent {} answered guest-ping and guest-info ({} commands enabled, guest-exec {}) {:.2} s after QEMU start",
            ga.version,
            ga.enabled_commands,
            if ga.guest_exec_enabled { "ENABLED" } else { "disabled" },
            n.guest_agent_secs.unwrap_or_default()
        );
    }
    println!("  shells found: none of {} entries walked", s.shells_checked);
    match &n.scratch {
        Some(sc) => println!(
            "  scratch: {} on the node; {} bytes written to {}, marker {} not found on the disk",
            s.scratch,
            sc.nonzero_bytes,
            sc.image.display(),
            sc.marker
        ),
        None => println!("  scratch: {}", s.scratch),
    }
    println!("  kernel arguments present: {}", n.cmdline_required.join(" "));
}

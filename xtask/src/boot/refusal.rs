//! The refusals `boot-test --secure-boot` proves after the signed image has booted under the same
//! firmware and variable store (the positive control): three images the firmware must not start,
//! each written onto a disk of its own and booted like the node.
//!
//! - the unsigned UKI: the signed one with its signature taken off (uki/pe.rs);
//! - a UKI signed by another db key: that unsigned UKI signed with the db key of a throwaway key set
//!   made for the run (sign/secure_boot.rs), which the store does not hold;
//! - a tampered UKI: the signed one with one byte in the middle of .initrd flipped.
//!
//! edk2 prints the same refusal for all three (`BdsDxe: failed to load Boot0001 ...: Access Denied`)
//! and then waits at its menu forever, so each run waits for that line or for any sign of a started
//! image, whichever comes first, and then kills QEMU.

use super::console;
use super::qemu::{Firmware, Machine, NodeDevices};
use super::verdict::{self, RefusalProven};
use crate::disk::{self, DiskName};
use crate::image::manifest::Manifest;
use crate::sign::secure_boot as keygen;
use crate::spec::Board;
use crate::uki::pe;
use crate::uki::secure_boot::{self as signing, SecureBootKeys};
use crate::util::host::Requirement;
use crate::util::progress;
use anyhow::{Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// The signer and keygen's tools, for the image signed by another key.
pub fn requirements() -> Vec<Requirement> {
    let mut reqs = signing::requirements();
    reqs.extend(keygen::requirements());
    reqs
}

/// One boot-test's refusal runs: the board, its build and the firmware the signed image booted under.
pub struct Run<'a> {
    pub board: &'a Board,
    pub manifest: &'a Manifest,
    /// out/<board>/: the signed UKI is read from here, and each run's console is kept here.
    pub dir: &'a Path,
    pub firmware: &'a Firmware,
    pub accel: &'static str,
    pub timeout: Duration,
}

/// Proves the firmware refuses each changed image; fails naming the first one it started.
pub fn prove_refusals(run: &Run) -> Result<Vec<RefusalProven>> {
    let uki = run.manifest.artifact(".efi").context("manifest.json lists no UKI (.efi)")?;
    let uki_path = run.dir.join(&uki.file);
    let signed = std::fs::read(&uki_path).with_context(|| format!("reading {}", uki_path.display()))?;
    let work = tempfile::Builder::new().prefix("xtask-refusals-").tempdir().context("creating a work directory")?;
    let images = [
        ("unsigned UKI", "unsigned", unsigned(&signed)?),
        ("UKI signed by another db key", "other-key", signed_by_another_key(&signed, work.path(), run)?),
        ("signed UKI with one byte of .initrd flipped", "tampered", tampered(&signed)?),
    ];
    let mut proven = Vec::new();
    for (what, name, image) in images {
        let step = progress::step(format!("proving {} refuses the {what}", run.board.name));
        let refused = refuse(run, what, name, &image, work.path()).with_context(|| format!("booting the {what}"))?;
        step.done();
        proven.push(refused);
    }
    Ok(proven)
}

fn unsigned(signed: &[u8]) -> Result<Vec<u8>> {
    pe::without_signature(signed).context("taking the signature off the UKI")
}

/// The unsigned UKI signed with the db key of a key set made for this run alone.
fn signed_by_another_key(signed: &[u8], work: &Path, run: &Run) -> Result<Vec<u8>> {
    let keys = work.join("other-keys");
    keygen::generate(&keys, "nodeimg refusal test", false).context("making another key set")?;
    let key = SecureBootKeys::load_own(&keys)?.db;
    let path = work.join("other-key.efi");
    std::fs::write(&path, unsigned(signed)?).with_context(|| format!("writing {}", path.display()))?;
    key.sign_in_place(&path, run.manifest.source_date_epoch)?;
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// The signed UKI with the byte in the middle of its .initrd flipped.
fn tampered(signed: &[u8]) -> Result<Vec<u8>> {
    let initrd = pe::sections(signed)?.into_iter().find(|s| s.name == ".initrd").context("the UKI has no .initrd")?;
    let mut image = signed.to_vec();
    let at = initrd.raw_offset as usize + initrd.virtual_size.min(initrd.raw_size) as usize / 2;
    image[at] ^= 0x01;
    Ok(image)
}

/// Boots `image` on a disk of its own and judges what the firmware did with it.
fn refuse(run: &Run, what: &str, name: &str, image: &[u8], work: &Path) -> Result<RefusalProven> {
    let m = run.manifest;
    let disk_path = work.join(format!("{name}.raw"));
    disk::write_raw(
        DiskName { image: &m.image, version: &m.version },
        run.board,
        m.source_date_epoch,
        image,
        &disk_path,
        work,
    )?;
    let machine = Machine {
        board: run.board,
        firmware: run.firmware,
        disk: &disk_path,
        serial_log: run.dir.join(format!("refusal-{name}.log")),
        qmp_socket: work.join("qmp.sock"),
        accel: run.accel,
    };
    let started = Instant::now();
    let (mut qemu, stderr) = machine.start_with(&NodeDevices::default())?;
    let needles = verdict::refusal_needles();
    let seen = console::wait_for_first(&mut qemu, &machine.serial_log, &stderr, started, run.timeout, &needles);
    qemu.kill();
    let _ = std::fs::remove_file(&disk_path);
    verdict::judge_refusal(what, &seen?, &machine.serial_log, run.board)
}

//! The serial console: waiting for one of machined's lines while watching for failures, and reading a
//! finished boot's log for what went wrong (kernel panics, Oops, machined failures, crash loops).

use crate::spec::protocol::{FATAL, SCRATCH_CLOSE_FAILED, SERVICE, SERVICE_RESTARTING};
use crate::util::cmd::{self, Running};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Console lines that mean the boot went wrong, whatever machined says.
const FAILURE_MARKERS: [&str; 8] = [
    "Kernel panic",
    "Oops",
    "BUG:",
    "WARNING: CPU",
    "------------[ cut here ]------------",
    FATAL,
    SCRATCH_CLOSE_FAILED,
    "Call trace:",
];

/// More restarts than this of one service during a boot is a crash loop.
pub const MAX_RESTARTS: u32 = 2;

/// Polls the console until a whole line holding `prefix` appears (returning what follows it and the
/// time since `started`), or fails on a console failure, QEMU's exit or the timeout. boot-test and
/// bench's floor boot both wait through here, so the two times they compare are taken alike.
pub fn wait_for_line(
    qemu: &mut Running,
    serial_log: &Path,
    qemu_stderr: &Path,
    started: Instant,
    timeout: Duration,
    prefix: &str,
) -> Result<(String, Duration)> {
    let seen = wait_for_first(qemu, serial_log, qemu_stderr, started, timeout, &[prefix])?;
    Ok((seen.rest, seen.elapsed))
}

/// The first console line that held one of the needles [`wait_for_first`] waited for.
#[derive(Debug)]
pub struct Seen {
    /// Which needle (its index).
    pub needle: usize,
    pub line: String,
    /// What follows the needle on the line.
    pub rest: String,
    pub elapsed: Duration,
}

/// Like [`wait_for_line`] for several needles: the first whole line (in console order) holding any.
pub fn wait_for_first(
    qemu: &mut Running,
    serial_log: &Path,
    qemu_stderr: &Path,
    started: Instant,
    timeout: Duration,
    needles: &[&str],
) -> Result<Seen> {
    let wanted = needles.iter().map(|n| n.trim()).collect::<Vec<_>>().join(" or ");
    loop {
        let log = std::fs::read_to_string(serial_log).unwrap_or_default();
        // Only whole lines: the line may be half-written when the file is read.
        let complete = &log[..log.rfind('\n').map_or(0, |i| i + 1)];
        for line in complete.lines() {
            for (needle, text) in needles.iter().enumerate() {
                if let Some((_, rest)) = line.split_once(text) {
                    let (line, rest) = (line.to_string(), rest.to_string());
                    return Ok(Seen { needle, line, rest, elapsed: started.elapsed() });
                }
            }
        }
        // Whole lines here too: a failure line read half-written would be reported without its reason
        // (seen: "MACHINED-FATAL:" alone, the cause still on its way).
        scan_for_failures(complete, serial_log)?;
        if let Some(exit) = qemu.try_wait()? {
            let stderr = std::fs::read_to_string(qemu_stderr).unwrap_or_default();
            bail!(
                "QEMU exited ({exit}) before the console showed {wanted}\n`{}`\nQEMU stderr:\n{}console tail:\n{}",
                qemu.command_line(),
                cmd::tail(&stderr, 10),
                cmd::tail(&log, 30)
            );
        }
        if started.elapsed() > timeout {
            qemu.kill();
            bail!(
                "no {wanted} line within {} s (console in {}); console tail:\n{}",
                timeout.as_secs(),
                serial_log.display(),
                cmd::tail(&log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fails on a kernel panic, Oops, BUG/WARNING splat or machined failure anywhere in the console.
pub fn scan_for_failures(log: &str, path: &Path) -> Result<()> {
    for (index, line) in log.lines().enumerate() {
        if let Some(marker) = FAILURE_MARKERS.iter().find(|m| line.contains(*m)) {
            let lines: Vec<&str> = log.lines().collect();
            let from = index.saturating_sub(5);
            let to = (index + 25).min(lines.len());
            bail!("console shows {marker:?} at {}:{}:\n{}", path.display(), index + 1, lines[from..to].join("\n"));
        }
    }
    Ok(())
}

/// Counts machined's restart lines per service; more than MAX_RESTARTS for one is a crash loop.
pub fn check_crash_loops(log: &str, path: &Path) -> Result<BTreeMap<String, u32>> {
    let mut restarts: BTreeMap<String, u32> = BTreeMap::new();
    for line in log.lines() {
        if let Some(rest) = line.split_once(SERVICE).map(|(_, r)| r) {
            let name = rest.split_whitespace().next().unwrap_or_default().to_string();
            let count = restarts.entry(name).or_insert(0);
            if rest.contains(SERVICE_RESTARTING) {
                *count += 1;
            }
        }
    }
    if let Some((name, count)) = restarts.iter().find(|(_, n)| **n > MAX_RESTARTS) {
        let lines: Vec<&str> =
            log.lines().filter(|l| l.contains(&format!("name={name} ")) || l.contains(&format!("[{name}] "))).collect();
        bail!(
            "service {name} is crash-looping: restarted {count} times (more than {MAX_RESTARTS}) in {}:\n{}",
            path.display(),
            cmd::tail(&lines.join("\n"), 20)
        );
    }
    Ok(restarts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loops_are_counted_per_service() {
        let log = "MACHINED-SERVICE name=a started pid=5 restarts=0\n\
                   MACHINED-SERVICE name=a exited (status 1) after 0.1 s; restarting in 1 s\n\
                   MACHINED-SERVICE name=b exited (signal SIGTERM) after 9.0 s\n";
        let counts = check_crash_loops(log, Path::new("boot.log")).unwrap();
        assert_eq!(counts.get("a"), Some(&1));
        assert_eq!(counts.get("b"), Some(&0));
        let looping =
            log.to_string() + &"MACHINED-SERVICE name=a exited (status 1) after 0.1 s; restarting in 2 s\n".repeat(2);
        let err = check_crash_loops(&looping, Path::new("boot.log")).unwrap_err().to_string();
        assert!(err.contains("service a is crash-looping: restarted 3 times"), "{err}");
    }
}

//! The RAM marker: what lets boot-test prove that shutdown shreds memory (ARCHITECTURE.md, "RAM
//! shredding"). A test boot's host hands the node a fresh random nonce through QEMU's fw_cfg
//! ([`RAM_NONCE_FW_CFG`], never on the console, not in the signed image); the marker is
//! [`RAM_MARKER_PREFIX`] and the hex sha256 of the nonce, which the host computes too. A holder process
//! (machined's [`RAM_MARKER_HOLDER`] applet, not PID 1) reads the nonce, derives the marker, writes it
//! to a tmpfs file ([`RAM_MARKER_FILE`]) and keeps it in its heap until the shutdown kills it. PID 1
//! never holds the nonce or the marker, so it has no copy to wipe, and the marker is never printed.
//! Without the fw_cfg entry (every production boot) there is no holder and the status says why.

use crate::json;
use crate::parse::hex;
use crate::protocol::{
    FW_CFG_BY_NAME, MACHINED_IN_ROOT, RAM_MARKER_FILE, RAM_MARKER_HOLDER, RAM_MARKER_PREFIX, RAM_NONCE_BYTES,
    RAM_NONCE_FW_CFG, SHRED_PAUSE_FW_CFG,
};
use crate::sys;
use sha2::{Digest as _, Sha256};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long the holder may take to say whether it holds the marker.
const HOLDER_ANSWER_LIMIT: Duration = Duration::from_secs(5);
/// The longest shred pause honoured (a test boot asks for a few seconds).
const MAX_SHRED_PAUSE: Duration = Duration::from_secs(60);

/// What became of the RAM marker at boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The holder (this pid) keeps the marker in its memory and in [`RAM_MARKER_FILE`].
    Held { pid: i32 },
    /// No nonce was given (a production boot): no marker.
    Absent(String),
    /// A nonce was given but no marker could be made (wrong size, unreadable, holder failed).
    Invalid(String),
}

/// The marker for `nonce`, or why there is none.
pub fn marker_from_nonce(nonce: &[u8]) -> Result<String, String> {
    if nonce.len() != RAM_NONCE_BYTES {
        return Err(format!("the nonce is {} bytes, expected {RAM_NONCE_BYTES}", nonce.len()));
    }
    Ok(format!("{RAM_MARKER_PREFIX}{}", hex(&Sha256::digest(nonce))))
}

/// The raw bytes of fw_cfg entry `name` under `by_name`; `Absent` when the entry (or the driver's
/// directory) is missing, saying which, `Invalid` when it cannot be read.
pub fn read_fw_cfg(by_name: &str, name: &str) -> Result<Vec<u8>, Outcome> {
    let path = format!("{by_name}/{name}/raw");
    match fs::read(&path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Outcome::Absent(if fs::metadata(by_name).is_err() {
            format!("no fw_cfg entries ({by_name} is missing: no QEMU fw_cfg device or no qemu_fw_cfg driver)")
        } else {
            format!("no fw_cfg entry {name}")
        })),
        Err(e) => Err(Outcome::Invalid(format!("reading {path}: {e}"))),
    }
}

/// The seconds a test boot asks machined to wait after shredding, from fw_cfg's text (`5`).
pub fn parse_pause(text: &[u8]) -> Result<Duration, String> {
    let text = String::from_utf8_lossy(text);
    let secs: u64 =
        text.trim().parse().map_err(|_| format!("shred pause {:?} is not a number of seconds", text.trim()))?;
    Ok(Duration::from_secs(secs).min(MAX_SHRED_PAUSE))
}

/// The shred pause this boot was given (none in production), or why the entry was refused.
pub fn shred_pause() -> Result<Option<Duration>, String> {
    match read_fw_cfg(FW_CFG_BY_NAME, SHRED_PAUSE_FW_CFG) {
        Ok(bytes) => parse_pause(&bytes).map(Some),
        Err(Outcome::Invalid(e)) => Err(e),
        Err(_) => Ok(None),
    }
}

/// Starts the holder and waits for its one-line answer: `held`, `absent <why>` or `invalid <why>`.
pub fn start() -> Outcome {
    let mut child = match Command::new(MACHINED_IN_ROOT)
        .arg0(RAM_MARKER_HOLDER)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return Outcome::Invalid(format!("starting the marker holder {MACHINED_IN_ROOT}: {e}")),
    };
    let pid = child.id() as i32;
    let Some(mut stdout) = child.stdout.take() else {
        return Outcome::Invalid("the marker holder has no stdout".into());
    };
    let mut pfd = sys::pollfd { fd: stdout.as_raw_fd(), events: sys::POLLIN, revents: 0 };
    let mut answer = Vec::new();
    let limit = std::time::Instant::now() + HOLDER_ANSWER_LIMIT;
    while !answer.contains(&b'\n') {
        let left = limit.saturating_duration_since(std::time::Instant::now());
        // SAFETY: pfd is one live pollfd.
        if left.is_zero() || unsafe { sys::poll(&mut pfd, 1, left.as_millis() as i32) } <= 0 {
            break;
        }
        let mut buf = [0u8; 256];
        match stdout.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let answer = String::from_utf8_lossy(&answer).trim().to_string();
    let outcome = match answer.split_once(' ').unwrap_or((&answer, "")) {
        ("held", _) => Outcome::Held { pid },
        ("absent", why) => Outcome::Absent(why.to_string()),
        ("invalid", why) => Outcome::Invalid(why.to_string()),
        _ => Outcome::Invalid(format!("the marker holder answered {answer:?}")),
    };
    if !matches!(outcome, Outcome::Held { .. }) {
        // It exits by itself after an answer; without one it is stuck. The reaper collects it.
        // SAFETY: plain system call on our own child.
        unsafe { sys::kill(pid, sys::SIGKILL) };
    }
    outcome
}

/// The holder applet: reads the nonce, makes the marker, writes the tmpfs file, answers `held` on
/// stdout and keeps the marker in its heap until a signal kills it. Never returns after `held`.
pub fn holder_main() -> i32 {
    // machined blocks its shutdown signals and std passes the mask on: the holder must die on SIGTERM.
    // SAFETY: a zeroed sigset_t is the empty set; the old mask is not wanted.
    unsafe {
        let none: sys::sigset_t = std::mem::zeroed();
        sys::sigprocmask(sys::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    let answer = |line: &str| {
        let _ = io::stdout().write_all(format!("{line}\n").as_bytes());
        let _ = io::stdout().flush();
    };
    let nonce = match read_fw_cfg(FW_CFG_BY_NAME, RAM_NONCE_FW_CFG) {
        Ok(nonce) => nonce,
        Err(Outcome::Absent(why)) => {
            answer(&format!("absent {why}"));
            return 0;
        }
        Err(other) => {
            let why = match other {
                Outcome::Invalid(why) => why,
                held => format!("{held:?}"),
            };
            answer(&format!("invalid {why}"));
            return 1;
        }
    };
    let marker = match marker_from_nonce(&nonce) {
        Ok(marker) => marker.into_bytes(),
        Err(why) => {
            answer(&format!("invalid {why}"));
            return 1;
        }
    };
    let written = fs::create_dir_all("/run/machined").and_then(|()| {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(RAM_MARKER_FILE)?
            .write_all(&marker)
    });
    if let Err(e) = written {
        answer(&format!("invalid writing {RAM_MARKER_FILE}: {e}"));
        return 1;
    }
    answer("held");
    loop {
        // SAFETY: pause has no preconditions; it returns only after a caught signal (none is caught).
        unsafe { libc::pause() };
        std::hint::black_box(&marker);
    }
}

/// The status's `ram_marker` section (never the marker itself).
pub fn json(outcome: &Outcome, shred: bool, pause: &Result<Option<Duration>, String>) -> json::Object {
    let object = match outcome {
        Outcome::Held { pid } => json::Object::new()
            .str("state", "held")
            .u64("holder_pid", *pid as u64)
            .str("file", RAM_MARKER_FILE)
            .str("nonce", &format!("fw_cfg {RAM_NONCE_FW_CFG}")),
        Outcome::Absent(why) => json::Object::new().str("state", "absent").str("reason", why),
        Outcome::Invalid(why) => json::Object::new().str("state", "invalid").str("error", why),
    };
    let object = object.bool("shred", shred);
    match pause {
        Ok(Some(d)) => object.u64("shred_pause_secs", d.as_secs()),
        Ok(None) => object,
        Err(e) => object.str("shred_pause_error", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_the_prefix_and_the_nonce_digest_and_a_wrong_size_is_refused() {
        let marker = marker_from_nonce(&[0u8; RAM_NONCE_BYTES]).unwrap();
        // sha256 of 32 zero bytes.
        assert_eq!(
            marker,
            format!("{RAM_MARKER_PREFIX}66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925")
        );
        assert_eq!(marker_from_nonce(&[1u8; 31]).unwrap_err(), "the nonce is 31 bytes, expected 32");
        assert_eq!(marker_from_nonce(&[]).unwrap_err(), "the nonce is 0 bytes, expected 32");
    }

    #[test]
    fn missing_fw_cfg_is_absent_and_says_which_part_is_missing() {
        let dir = std::env::temp_dir().join(format!("fwcfg-test-{}", std::process::id()));
        let by_name = dir.to_string_lossy().into_owned();
        match read_fw_cfg(&by_name, RAM_NONCE_FW_CFG) {
            Err(Outcome::Absent(why)) => assert!(why.contains("no fw_cfg entries"), "{why}"),
            other => panic!("{other:?}"),
        }
        fs::create_dir_all(dir.join("opt/nodeimg/ram-nonce")).unwrap();
        match read_fw_cfg(&by_name, SHRED_PAUSE_FW_CFG) {
            Err(Outcome::Absent(why)) => assert_eq!(why, "no fw_cfg entry opt/nodeimg/shred-pause"),
            other => panic!("{other:?}"),
        }
        fs::write(dir.join("opt/nodeimg/ram-nonce/raw"), [7u8; 5]).unwrap();
        let nonce = read_fw_cfg(&by_name, RAM_NONCE_FW_CFG).unwrap();
        assert!(marker_from_nonce(&nonce).unwrap_err().contains("5 bytes"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_pause_is_whole_seconds_capped_and_garbage_is_refused() {
        assert_eq!(parse_pause(b"5\n"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_pause(b"3600"), Ok(MAX_SHRED_PAUSE));
        assert!(parse_pause(b"soon").unwrap_err().contains("not a number"));
    }

    #[test]
    fn the_status_never_holds_the_marker() {
        let text = json(&Outcome::Held { pid: 42 }, true, &Ok(Some(Duration::from_secs(5)))).finish();
        assert!(!text.contains(RAM_MARKER_PREFIX), "{text}");
        assert!(text.contains("\"state\":\"held\"") && text.contains("\"shred_pause_secs\":5"), "{text}");
        let text = json(&Outcome::Invalid("the nonce is 3 bytes, expected 32".into()), false, &Ok(None)).finish();
        assert!(text.contains("\"state\":\"invalid\"") && text.contains("3 bytes"), "{text}");
    }
}

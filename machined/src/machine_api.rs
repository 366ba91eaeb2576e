//! machined's API: a unix socket at MACHINE_SOCKET on machined's own tmpfs, /system (as in Talos,
//! whose extension services bind and depend on `/system/run/machined/machine.sock`). Only root on
//! the node reaches it (the directory is 0700). One request line, one answer line:
//!
//! - `poweroff [message]`, `halt [message]`: machined's shutdown sequence, then power off (a node
//!   that halts and stays on serves no one, so halt powers off too);
//! - `reboot [message]`: the shutdown sequence, then reboot;
//! - `status`: the services as the status line reports them, as one JSON object.
//!
//! Answers: `ok`, `error: <why>`, or the JSON. This is not Talos's gRPC machine API: extensions that
//! speak that (talos-vmtoolsd, metal-agent) get `error:` answers; /sbin/init's `shutdown` applet
//! (applet.rs), which qemu-ga runs for guest-shutdown, speaks this.

use crate::fallible::{Context, Fallible};
use crate::protocol::{MACHINE_SOCKET, SYSTEM_DIR};
use crate::sys;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

/// How long a client may take to send its request line or read the answer: machined's loop waits
/// for no one longer.
const CLIENT_LIMIT: Duration = Duration::from_millis(500);
const MAX_REQUEST: u64 = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    PowerOff(String),
    Reboot(String),
    Status,
}

/// What the node does after its shutdown sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reboot,
}

impl Request {
    pub fn parse(line: &str) -> Result<Request, String> {
        let line = line.trim_end_matches(['\n', '\r']);
        let (verb, message) = line.split_once(' ').unwrap_or((line, ""));
        let message = message.trim().to_string();
        match verb {
            "poweroff" | "halt" => Ok(Request::PowerOff(message)),
            "reboot" => Ok(Request::Reboot(message)),
            "status" if message.is_empty() => Ok(Request::Status),
            _ => Err(format!("unknown request {verb:?} (poweroff, halt, reboot or status)")),
        }
    }

    /// The request line.
    pub fn line(&self) -> String {
        let (verb, message) = match self {
            Request::PowerOff(m) => ("poweroff", m.as_str()),
            Request::Reboot(m) => ("reboot", m.as_str()),
            Request::Status => ("status", ""),
        };
        let message = message.replace(['\n', '\r'], " ");
        if message.is_empty() {
            format!("{verb}\n")
        } else {
            format!("{verb} {message}\n")
        }
    }
}

pub struct Api {
    listener: UnixListener,
}

impl Api {
    /// Mounts machined's tmpfs on /system and listens on the socket.
    pub fn listen() -> Fallible<Api> {
        sys::do_mount(Some("tmpfs"), SYSTEM_DIR, Some("tmpfs"), sys::MS_NOSUID | sys::MS_NODEV, Some("mode=0755"))
            .ctx(|| format!("mount tmpfs on {SYSTEM_DIR}"))?;
        let dir = Path::new(MACHINE_SOCKET).parent().unwrap_or(Path::new(SYSTEM_DIR));
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).ctx(|| format!("create {}", dir.display()))?;
        let listener = UnixListener::bind(MACHINE_SOCKET).ctx(|| format!("listen on {MACHINE_SOCKET}"))?;
        fs::set_permissions(MACHINE_SOCKET, fs::Permissions::from_mode(0o600))
            .ctx(|| format!("chmod {MACHINE_SOCKET}"))?;
        listener.set_nonblocking(true).ctx(|| format!("{MACHINE_SOCKET}: non-blocking"))?;
        Ok(Api { listener })
    }

    pub fn fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// A waiting client and its request, if there is one.
    pub fn accept(&self) -> Option<(UnixStream, Result<Request, String>)> {
        let (stream, _) = self.listener.accept().ok()?;
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(CLIENT_LIMIT));
        let _ = stream.set_write_timeout(Some(CLIENT_LIMIT));
        let mut line = String::new();
        let read = BufReader::new(io::Read::take(&stream, MAX_REQUEST)).read_line(&mut line);
        let request = match read {
            Ok(_) => Request::parse(&line),
            Err(e) => Err(format!("reading the request: {e}")),
        };
        Some((stream, request))
    }
}

/// Writes one answer line; a client that went away loses it.
pub fn answer(mut stream: UnixStream, text: &str) {
    let _ = stream.write_all(format!("{}\n", text.replace('\n', " ")).as_bytes());
}

/// Sends a request to machined and returns its answer line (the client side, for the applets).
pub fn send(request: &Request) -> Result<String, String> {
    let mut stream = UnixStream::connect(MACHINE_SOCKET).map_err(|e| format!("connect to {MACHINE_SOCKET}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    stream.write_all(request.line().as_bytes()).map_err(|e| format!("send to {MACHINE_SOCKET}: {e}"))?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(|e| format!("read from {MACHINE_SOCKET}: {e}"))?;
    Ok(answer.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for request in
            [Request::PowerOff("hypervisor initiated shutdown".into()), Request::Reboot(String::new()), Request::Status]
        {
            assert_eq!(Request::parse(&request.line()), Ok(request));
        }
        assert_eq!(Request::parse("halt now\n"), Ok(Request::PowerOff("now".into())));
        assert!(Request::parse("format /dev/vda\n").unwrap_err().contains("unknown request"));
        assert!(Request::parse("status please\n").is_err());
        assert_eq!(Request::PowerOff("two\nlines".into()).line(), "poweroff two lines\n");
    }
}

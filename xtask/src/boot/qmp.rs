//! Talking to a running QEMU: QMP (machine control) and the guest agent (inside the node), both
//! line-delimited JSON over a unix socket, small enough to speak directly.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Connects to a socket QEMU creates once it has started, retrying for up to `limit`.
fn connect_unix(socket: &Path, limit: Duration, what: &str) -> Result<UnixStream> {
    let start = Instant::now();
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => return Ok(stream),
            Err(e) if start.elapsed() > limit => {
                return Err(e).with_context(|| format!("connecting to {what} {}", socket.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A QMP connection (line-delimited JSON over a unix socket).
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects (waiting up to `limit` for QEMU to create the socket) and negotiates capabilities.
    pub fn connect(socket: &Path, limit: Duration) -> Result<Qmp> {
        let stream = connect_unix(socket, limit, "QMP socket")?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut qmp = Qmp { reader: BufReader::new(stream.try_clone()?), writer: stream };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            bail!("unexpected QMP greeting: {greeting}");
        }
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).context("reading from QMP")? == 0 {
            bail!("QMP connection closed");
        }
        serde_json::from_str(&line).with_context(|| format!("QMP sent invalid JSON: {line}"))
    }

    /// Runs a command and returns its `return` value, skipping asynchronous events.
    pub fn execute(&mut self, command: &str) -> Result<serde_json::Value> {
        self.send_and_wait(command, serde_json::json!({ "execute": command }))
    }

    /// Runs a command with arguments, waiting up to `limit` for its answer (a memory dump takes a
    /// while), and returns its `return` value.
    pub fn execute_with(
        &mut self,
        command: &str,
        arguments: serde_json::Value,
        limit: Duration,
    ) -> Result<serde_json::Value> {
        self.writer.set_read_timeout(Some(limit))?;
        let answer = self.send_and_wait(command, serde_json::json!({ "execute": command, "arguments": arguments }));
        self.writer.set_read_timeout(Some(Duration::from_secs(10)))?;
        answer
    }

    fn send_and_wait(&mut self, command: &str, request: serde_json::Value) -> Result<serde_json::Value> {
        writeln!(self.writer, "{request}").with_context(|| format!("writing {command} to QMP"))?;
        loop {
            let message = self.read_message()?;
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                bail!("QMP {command} failed: {error}");
            }
        }
    }
}

/// A QEMU guest agent connection: line-delimited JSON over the host end of its virtio-serial port.
/// The port carries whatever an earlier client left half-read, and QEMU drops what the host writes
/// while the agent has not opened its end, so every exchange starts with `guest-sync` (a fresh id,
/// echoed back once the agent is really listening), resent until answered.
pub struct GuestAgent {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl GuestAgent {
    /// Connects to the socket QEMU listens on (it exists once QEMU has started).
    pub fn connect(socket: &Path, limit: Duration) -> Result<GuestAgent> {
        let stream = connect_unix(socket, limit, "the guest agent socket")?;
        // Seeded from the clock so ids differ between runs (a stale reply cannot match).
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Ok(GuestAgent { reader: BufReader::new(stream.try_clone()?), writer: stream, next_id: seed % 1_000_000_000 })
    }

    /// Resynchronises: sends guest-sync with a fresh id until the agent echoes it, within `limit`.
    pub fn sync(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        let mut last = String::from("no answer");
        while start.elapsed() < limit {
            self.next_id += 1;
            let id = self.next_id;
            let request = serde_json::json!({"execute": "guest-sync", "arguments": {"id": id}});
            writeln!(self.writer, "{request}").context("writing to the guest agent")?;
            let attempt = Instant::now();
            self.writer.set_read_timeout(Some(Duration::from_millis(500)))?;
            while attempt.elapsed() < Duration::from_secs(2) {
                match self.read_message() {
                    Ok(Some(message)) if message.get("return").and_then(|r| r.as_u64()) == Some(id) => return Ok(()),
                    Ok(Some(message)) => last = format!("unexpected reply {message}"),
                    Ok(None) => {}
                    Err(e) => {
                        last = format!("{e:#}");
                        break;
                    }
                }
            }
        }
        bail!("the guest agent did not answer guest-sync within {} s ({last})", limit.as_secs())
    }

    /// One line: Ok(None) on a read timeout or a line that is not JSON (stale bytes, or the 0xFF an
    /// agent sends to delimit a resynchronisation).
    fn read_message(&mut self) -> Result<Option<serde_json::Value>> {
        let mut line = Vec::new();
        match self.reader.read_until(b'\n', &mut line) {
            Ok(0) => bail!("the guest agent socket was closed"),
            Ok(_) => {
                let start = line.iter().position(|&b| b != 0xff).unwrap_or(line.len());
                Ok(serde_json::from_slice(&line[start..]).ok())
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e).context("reading from the guest agent"),
        }
    }

    /// Sends a command that answers nothing when it works (guest-shutdown: the guest goes away).
    pub fn send(&mut self, command: &str, arguments: serde_json::Value) -> Result<()> {
        let request = serde_json::json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{request}").context("writing to the guest agent")
    }

    /// Runs a command (after `sync`) and returns its `return` value.
    pub fn execute(&mut self, command: &str, limit: Duration) -> Result<serde_json::Value> {
        writeln!(self.writer, "{}", serde_json::json!({ "execute": command })).context("writing to the guest agent")?;
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(message) = self.read_message()? {
                if let Some(value) = message.get("return") {
                    return Ok(value.clone());
                }
                if let Some(error) = message.get("error") {
                    bail!("guest agent {command} failed: {error}");
                }
            }
        }
        bail!("the guest agent did not answer {command} within {} s", limit.as_secs())
    }
}

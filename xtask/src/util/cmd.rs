//! The one place that runs subprocesses. Every failure names the command line and carries its stderr,
//! so an error from mksquashfs or qemu-img is readable without rerunning anything.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::Path;

/// A command line to run, built up like `std::process::Command` but kept printable.
#[derive(Clone, Debug)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    dir: Option<std::path::PathBuf>,
    env: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
}

pub fn cmd(program: impl Into<OsString>) -> Cmd {
    Cmd { program: program.into(), args: Vec::new(), dir: None, env: Vec::new(), env_remove: Vec::new() }
}

impl Cmd {
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(dir.as_ref().to_path_buf());
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs the command without this variable of ours (e.g. SOURCE_DATE_EPOCH for a tool that refuses
    /// it beside explicit time flags). A variable also given to [`Cmd::env`] is set, whatever the order.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env_remove.push(key.into());
        self
    }

    /// The command line as a user would type it, for error messages.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| {
                let s = a.to_string_lossy();
                if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
                    format!("'{}'", s.replace('\'', "'\\''"))
                } else {
                    s.into_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn expression(&self) -> duct::Expression {
        let mut e = duct::cmd(&self.program, &self.args);
        if let Some(dir) = &self.dir {
            e = e.dir(dir);
        }
        // duct applies the outermost layer first and each inner one after it, so the variables set
        // go inside the removals: a variable both removed and set is set, as with spawn() below.
        for (k, v) in &self.env {
            e = e.env(k, v);
        }
        for k in &self.env_remove {
            e = e.env_remove(k);
        }
        e
    }

    /// Runs to completion, capturing stdout and stderr; a non-zero exit is an error holding both.
    pub fn output(&self) -> Result<Vec<u8>> {
        let out = self
            .expression()
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
            .with_context(|| format!("starting `{}`", self.display()))?;
        if !out.status.success() {
            bail!(
                "`{}` failed ({}):\n{}{}",
                self.display(),
                out.status,
                tail(&String::from_utf8_lossy(&out.stderr), 40),
                tail(&String::from_utf8_lossy(&out.stdout), 10),
            );
        }
        Ok(out.stdout)
    }

    /// Like [`Cmd::output`], for commands whose stdout is text.
    pub fn read(&self) -> Result<String> {
        let out = self.output()?;
        String::from_utf8(out).with_context(|| format!("`{}` printed non-UTF-8 output", self.display()))
    }

    /// Runs to completion, discarding stdout; errors carry stderr.
    pub fn run(&self) -> Result<()> {
        self.output().map(drop)
    }

    /// Whether the program exists on PATH (or as a path).
    pub fn exists(program: &str) -> bool {
        if program.contains('/') {
            return Path::new(program).exists();
        }
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
            .unwrap_or(false)
    }
}

/// The last `lines` lines of `text`, for error messages that should show the end of a long log.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = all[start..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// A long-running child (QEMU, a test server) that is always killed and reaped when dropped,
/// so no error path leaves one running.
pub struct Running {
    child: std::process::Child,
    display: String,
}

impl Cmd {
    /// Starts the command with stdout and stderr going to the given files.
    pub fn spawn(&self, stdout: std::fs::File, stderr: std::fs::File) -> Result<Running> {
        let mut command = self.command();
        command.stdin(std::process::Stdio::null()).stdout(stdout).stderr(stderr);
        let child = command.spawn().with_context(|| format!("starting `{}`", self.display()))?;
        Ok(Running { child, display: self.display() })
    }
}

impl Cmd {
    /// Starts a server that outlives this process (a test's object store): stdin from /dev/null,
    /// stdout and stderr to `log`, in a process group of its own so a terminal's Ctrl-C goes to the
    /// caller only. Returns its pid; [`stop`] ends it.
    pub fn spawn_detached(&self, log: std::fs::File) -> Result<u32> {
        use std::os::unix::process::CommandExt;
        let stderr = log.try_clone().context("duplicating a log file handle")?;
        let mut command = self.command();
        command.stdin(std::process::Stdio::null()).stdout(log).stderr(stderr).process_group(0);
        let child = command.spawn().with_context(|| format!("starting `{}`", self.display()))?;
        Ok(child.id())
    }

    /// Runs to completion (stdout captured, stderr kept for the error) and returns its wall time and
    /// peak resident memory, from wait4(2) on that child alone: a client whose speed is measured.
    pub fn measure(&self) -> Result<Measured> {
        let start = std::time::Instant::now();
        let stderr = tempfile::tempfile().context("creating a file for a child's stderr")?;
        let mut command = self.command();
        command.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped());
        command.stderr(stderr.try_clone().context("duplicating a file handle")?);
        let mut child = command.spawn().with_context(|| format!("starting `{}`", self.display()))?;
        let mut stdout = Vec::new();
        if let Some(mut pipe) = child.stdout.take() {
            use std::io::Read;
            pipe.read_to_end(&mut stdout).with_context(|| format!("reading the output of `{}`", self.display()))?;
        }
        let pid = child.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: rusage is plain old data that wait4 fills in; the pid is our own unreaped child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if waited != pid {
            bail!("waiting for `{}`: {}", self.display(), std::io::Error::last_os_error());
        }
        let seconds = start.elapsed().as_secs_f64();
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            use std::io::{Read, Seek};
            let mut text = String::new();
            let mut stderr = stderr;
            let _ = stderr.rewind().and_then(|()| stderr.read_to_string(&mut text));
            bail!("`{}` failed (wait status {status}):\n{}", self.display(), tail(&text, 40));
        }
        // Linux reports ru_maxrss in KiB.
        Ok(Measured { seconds, max_rss_bytes: usage.ru_maxrss as u64 * 1024, stdout })
    }

    fn command(&self) -> std::process::Command {
        let mut command = std::process::Command::new(&self.program);
        command.args(&self.args);
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        for k in &self.env_remove {
            command.env_remove(k);
        }
        for (k, v) in &self.env {
            command.env(k, v);
        }
        command
    }
}

/// What [`Cmd::measure`] saw.
#[derive(Clone, Debug)]
pub struct Measured {
    pub seconds: f64,
    pub max_rss_bytes: u64,
    pub stdout: Vec<u8>,
}

/// Ends a process [`Cmd::spawn_detached`] started (SIGKILL when `kill`, else SIGTERM) and waits up to
/// `limit` for it to be gone. A process that is not running any more is not an error.
pub fn stop(pid: u32, kill: bool, limit: std::time::Duration) -> Result<()> {
    let signal = if kill { libc::SIGKILL } else { libc::SIGTERM };
    // SAFETY: kill(2) with a pid this process started and a valid signal number.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(err).with_context(|| format!("signalling process {pid}"));
    }
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        // Reap it if it is our child; either way it is gone once /proc no longer lists it running.
        // SAFETY: waitpid with WNOHANG on a pid; a pid that is not our child just returns -1.
        unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let gone = state.rsplit_once(')').is_none_or(|(_, rest)| rest.trim_start().starts_with('Z'));
        if gone {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    bail!("process {pid} did not end within {:?} of the signal", limit)
}

impl Running {
    /// The exit status if the child has ended.
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        self.child.try_wait().with_context(|| format!("waiting for `{}`", self.display))
    }

    /// Waits up to `limit` for the child to end by itself.
    pub fn wait_timeout(&mut self, limit: std::time::Duration) -> Result<Option<std::process::ExitStatus>> {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if start.elapsed() >= limit {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn command_line(&self) -> &str {
        &self.display
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_variable_removed_and_set_is_set_and_one_only_removed_is_gone() {
        assert!(std::env::var_os("HOME").is_some(), "the test needs a variable the child inherits");
        let shell = |c: Cmd| c.args(["-c", "printf %s \"${HOME-unset}\""]).read().unwrap();
        assert_eq!(shell(cmd("/bin/sh").env_remove("HOME")), "unset");
        assert_eq!(shell(cmd("/bin/sh").env_remove("HOME").env("HOME", "/set")), "/set");
        assert_eq!(shell(cmd("/bin/sh").env("HOME", "/set").env_remove("HOME")), "/set");
    }
}

//! A real Garage node on loopback for the upload tests, started by `cargo xtask test-garage` (which
//! installs Garage into the cache when missing) in a temp dir of its own, and killed when dropped; and
//! awscli, the independent client the tests read the bucket back with.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "nodeimg";

pub struct Garage {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub endpoint: String,
    pub key_id: String,
    pub secret: String,
    pid: u32,
}

impl Garage {
    pub fn start() -> Garage {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("garage");
        let mut garage =
            Garage { _tmp: tmp, dir, endpoint: String::new(), key_id: String::new(), secret: String::new(), pid: 0 };
        garage.run_server();
        garage
    }

    fn run_server(&mut self) {
        let out = super::xtask().args(["test-garage", "--bucket", BUCKET, "--dir"]).arg(&self.dir).output().unwrap();
        assert!(out.status.success(), "test-garage: {}", String::from_utf8_lossy(&out.stderr));
        let node: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.dir.join("node.json")).unwrap()).unwrap();
        self.endpoint = node["endpoint"].as_str().unwrap().to_string();
        assert!(self.endpoint.starts_with("http://127.0.0.1:"), "{}", self.endpoint);
        self.key_id = node["access_key_id"].as_str().unwrap().to_string();
        self.secret = node["secret_access_key"].as_str().unwrap().to_string();
        self.pid = node["pid"].as_u64().unwrap() as u32;
    }

    /// Kills the server as a crash would (SIGKILL) and waits until it is gone.
    pub fn kill(&mut self) {
        // SAFETY: kill(2) on the pid of the server this test started.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
            if stat.rsplit_once(')').is_none_or(|(_, rest)| rest.trim_start().starts_with('Z')) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("Garage (pid {}) did not die", self.pid);
    }

    /// Starts the killed server again, on the same ports with the same data.
    pub fn restart(&mut self) {
        self.run_server();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("garage.log")).unwrap_or_default()
    }

    /// The requests the server logged that change something (PUT, POST, DELETE), from `log` text.
    pub fn writes(log: &str) -> Vec<String> {
        log.lines()
            .filter(|l| {
                l.contains("generic_server") && [" PUT /", " POST /", " DELETE /"].iter().any(|m| l.contains(m))
            })
            .map(|l| l.split_once(") ").map_or(l, |(_, request)| request).to_string())
            .collect()
    }

    /// The paths (`/BUCKET/KEY?query`) of the `method` requests the server logged, from `log` text.
    pub fn requests(log: &str, method: &str) -> Vec<String> {
        let mark = format!(" {method} /");
        log.lines()
            .filter(|l| l.contains("generic_server") && !l.contains(" error "))
            .filter_map(|l| l.split_once(&mark).map(|(_, path)| format!("/{}", path.trim_end())))
            .collect()
    }

    /// This node's credentials, and nothing else of AWS's: no profile, no shared files, no instance
    /// metadata (see [`isolation`]).
    pub fn credentials(&self) -> Vec<(&'static str, Option<String>)> {
        let mut vars = isolation();
        vars.push(("AWS_ACCESS_KEY_ID", Some(self.key_id.clone())));
        vars.push(("AWS_SECRET_ACCESS_KEY", Some(self.secret.clone())));
        vars
    }

    /// An xtask command with this node's credentials.
    pub fn xtask(&self) -> assert_cmd::Command {
        let mut cmd = super::xtask();
        with_env(&mut cmd, &self.credentials());
        cmd
    }

    /// `aws` (awscli, installed by host-tools) against this node.
    pub fn aws(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("aws");
        with_std_env(&mut cmd, &self.credentials());
        cmd.args(["--endpoint-url", &self.endpoint, "--region", "garage"]).args(args);
        cmd.output().expect("awscli must be installed (`cargo xtask host-tools` installs it)")
    }

    /// `aws …` that must succeed; its stdout.
    pub fn aws_ok(&self, args: &[&str]) -> String {
        let out = self.aws(args);
        assert!(out.status.success(), "aws {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every key in the bucket, from awscli.
    pub fn keys(&self) -> Vec<String> {
        let listing = self.aws_ok(&["s3", "ls", "--recursive", &format!("s3://{BUCKET}/")]);
        let mut keys: Vec<String> =
            listing.lines().filter_map(|l| l.split_whitespace().nth(3)).map(str::to_string).collect();
        keys.sort();
        keys
    }

    /// Downloads `s3://BUCKET/prefix/` into `into` with awscli.
    pub fn download(&self, prefix: &str, into: &Path) {
        self.aws_ok(&[
            "s3",
            "cp",
            "--recursive",
            "--only-show-errors",
            &format!("s3://{BUCKET}/{prefix}"),
            &into.display().to_string(),
        ]);
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the server this test started.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// The environment that removes every AWS setting of the host and points the shared files at
/// nothing, so only what a test gives a command counts (None removes the variable).
pub fn isolation() -> Vec<(&'static str, Option<String>)> {
    let mut vars: Vec<(&'static str, Option<String>)> = [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ]
    .into_iter()
    .map(|name| (name, None))
    .collect();
    vars.push(("AWS_SHARED_CREDENTIALS_FILE", Some("/nonexistent/aws-credentials".into())));
    vars.push(("AWS_CONFIG_FILE", Some("/nonexistent/aws-config".into())));
    vars.push(("AWS_EC2_METADATA_DISABLED", Some("true".into())));
    vars
}

pub fn with_env(cmd: &mut assert_cmd::Command, vars: &[(&'static str, Option<String>)]) {
    for (name, value) in vars {
        match value {
            Some(value) => cmd.env(name, value),
            None => cmd.env_remove(name),
        };
    }
}

/// [`with_env`] for a std Command (a child a test watches while it runs).
pub fn with_std_env(cmd: &mut Command, vars: &[(&'static str, Option<String>)]) {
    for (name, value) in vars {
        match value {
            Some(value) => cmd.env(name, value),
            None => cmd.env_remove(name),
        };
    }
}

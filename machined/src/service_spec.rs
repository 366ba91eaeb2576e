//! Talos's extension service spec (`/usr/local/etc/containers/<name>.yaml`), read the one way both
//! machined (at boot, from the files unchanged) and the builder (`build-image`, `check-extension`)
//! read it, so both say the same thing about the same file. The builder includes this file with
//! `#[path]`: it uses std and serde_yaml_ng and nothing else of either crate.
//!
//! Like Talos, unknown keys are not errors (a newer spec still runs); each becomes a warning naming
//! its path and line. Everything Talos checks, and every value of a known key, is checked strictly:
//! wrong types, a missing or unknown `restart`, a `depends` entry with none or two kinds, relative or
//! `..` paths, mount options no mount could take. Every problem names the line and the field's path
//! (`container.mounts[2].options[0]`); serde_yaml_ng's values carry no positions, so the line is found
//! by following the path through the text ([`line_of`]).

use serde_yaml_ng::{Mapping, Value};
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};

/// What a service does when its process exits (Talos's three kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Run again, also after a clean exit.
    Always,
    /// Run again after a failure; done after the first exit with status 0.
    UntilSuccess,
    /// Run once.
    Never,
}

/// The `network:` conditions of a dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkCheck {
    Addresses,
    Connectivity,
    Hostname,
    Etcfiles,
}

impl NetworkCheck {
    pub const ALL: [(&'static str, NetworkCheck); 4] = [
        ("addresses", NetworkCheck::Addresses),
        ("connectivity", NetworkCheck::Connectivity),
        ("hostname", NetworkCheck::Hostname),
        ("etcfiles", NetworkCheck::Etcfiles),
    ];

    pub fn name(self) -> &'static str {
        NetworkCheck::ALL.iter().find(|(_, c)| *c == self).map_or("?", |(n, _)| n)
    }
}

/// One `depends:` entry: exactly one condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dependency {
    /// Another service is up, by its Talos ID: `cri`, `udevd`, `ext-<name>` for an extension service.
    Service(String),
    /// A path exists.
    Path(String),
    /// Each listed network condition holds.
    Network(Vec<NetworkCheck>),
    /// The clock was synchronised.
    Time,
    /// A machine config was applied.
    Configuration,
}

/// Mount propagation, for `rootfsPropagation` and a mount's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Shared,
    Slave,
    Private,
    Unbindable,
}

/// The propagation words Talos's runtime (runc) knows, `r` for recursive.
pub const PROPAGATIONS: [(&str, Propagation, bool); 8] = [
    ("shared", Propagation::Shared, false),
    ("rshared", Propagation::Shared, true),
    ("slave", Propagation::Slave, false),
    ("rslave", Propagation::Slave, true),
    ("private", Propagation::Private, false),
    ("rprivate", Propagation::Private, true),
    ("unbindable", Propagation::Unbindable, false),
    ("runbindable", Propagation::Unbindable, true),
];

/// Per-mount flags that map to one mount(2) flag each; `true` sets it, `false` (its opposite) clears it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    ReadOnly,
    NoSuid,
    NoDev,
    NoExec,
    NoAtime,
    NoDiratime,
    RelAtime,
    StrictAtime,
    Sync,
}

/// The flag words runc maps to mount flags: (word, flag, set).
pub const FLAGS: [(&str, Flag, bool); 18] = [
    ("ro", Flag::ReadOnly, true),
    ("rw", Flag::ReadOnly, false),
    ("nosuid", Flag::NoSuid, true),
    ("suid", Flag::NoSuid, false),
    ("nodev", Flag::NoDev, true),
    ("dev", Flag::NoDev, false),
    ("noexec", Flag::NoExec, true),
    ("exec", Flag::NoExec, false),
    ("noatime", Flag::NoAtime, true),
    ("atime", Flag::NoAtime, false),
    ("nodiratime", Flag::NoDiratime, true),
    ("diratime", Flag::NoDiratime, false),
    ("relatime", Flag::RelAtime, true),
    ("norelatime", Flag::RelAtime, false),
    ("strictatime", Flag::StrictAtime, true),
    ("nostrictatime", Flag::StrictAtime, false),
    ("sync", Flag::Sync, true),
    ("async", Flag::Sync, false),
];

/// Filesystem types a mount may have besides `bind`: the ones a container's own mounts use.
pub const FILESYSTEMS: [&str; 5] = ["tmpfs", "proc", "sysfs", "mqueue", "devpts"];

/// One `container.mounts` entry, its options sorted into what mount(2) takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub destination: String,
    /// `bind`, or one of [`FILESYSTEMS`].
    pub kind: String,
    /// A bind mount (type bind, or the option bind or rbind).
    pub bind: bool,
    /// rbind: submounts of the source come along.
    pub recursive: bool,
    /// Flags in the order given; a later word for the same flag wins.
    pub flags: Vec<(Flag, bool)>,
    /// Propagation applied to the destination after mounting, in order: (kind, recursive).
    pub propagation: Vec<(Propagation, bool)>,
    /// `key=value` options passed to the filesystem (not to a bind mount).
    pub data: Vec<String>,
}

/// `container.security`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Security {
    pub writeable_rootfs: bool,
    pub writeable_sysfs: bool,
    /// None: the runtime's default (the container's mounts are a recursive slave of the node's).
    pub rootfs_propagation: Option<(Propagation, bool)>,
    /// None: containerd's default list (`DEFAULT_MASKED_PATHS`); `[]` masks nothing.
    pub masked_paths: Option<Vec<String>>,
    /// None: containerd's default list (`DEFAULT_READONLY_PATHS`); `[]` leaves everything writable.
    pub readonly_paths: Option<Vec<String>>,
}

/// What containerd masks when a spec does not say (empty ro tmpfs over a directory, /dev/null over a file).
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// What containerd makes read-only when a spec does not say.
pub const DEFAULT_READONLY_PATHS: [&str; 5] =
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// `container`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// As written: absolute, relative with a `/` (`./x`: resolved against the root, as the working
    /// directory is /), or a bare name looked up in the service's PATH.
    pub entrypoint: String,
    pub args: Vec<String>,
    pub mounts: Vec<Mount>,
    /// `KEY=value` entries, in order (a later one replaces an earlier one with the same key).
    pub environment: Vec<(String, String)>,
    /// A node file of `KEY=value` lines, read when the service starts (deprecated in Talos).
    pub environment_file: Option<String>,
    pub security: Security,
}

/// A service spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub depends: Vec<Dependency>,
    pub container: Container,
    pub restart: Restart,
    pub log_to_console: bool,
}

/// A problem with a spec: the line (when it could be found), the field's path, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl Problem {
    /// `<file>:<line>: field `<path>`: <message>`, as both machined and the builder print it.
    pub fn at(&self, file: &str) -> String {
        let line = self.line.map_or(String::new(), |l| format!(":{l}"));
        if self.field.is_empty() {
            format!("{file}{line}: {}", self.message)
        } else {
            format!("{file}{line}: field `{}`: {}", self.field, self.message)
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.at("(service spec)"))
    }
}

/// A spec that parsed, and what in it was ignored.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub spec: ServiceSpec,
    /// Unknown keys, each naming its path: Talos ignores them too.
    pub warnings: Vec<Problem>,
}

/// Parses a service spec. Err holds every problem found, in the order of the file.
pub fn parse(text: &str) -> Result<Parsed, Vec<Problem>> {
    let document: Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let line = e.location().map(|at| at.line());
        let message = e.to_string();
        // The message repeats the position, which is already in front.
        let message = match e.location() {
            Some(at) => {
                let suffix = format!(" at line {} column {}", at.line(), at.column());
                message.strip_suffix(&suffix).unwrap_or(&message).to_string()
            }
            None => message,
        };
        vec![Problem { line, field: String::new(), message: format!("not YAML: {message}") }]
    })?;
    let mut reader = Reader { text, errors: Vec::new(), warnings: Vec::new() };
    let spec = reader.spec(&document);
    let mut errors = reader.errors;
    match spec {
        Some(spec) if errors.is_empty() => Ok(Parsed { spec, warnings: reader.warnings }),
        _ => {
            errors.sort_by_key(|p| p.line.unwrap_or(0));
            Err(errors)
        }
    }
}

/// Whether `name` is a service name Talos accepts: `^[-_a-z0-9]+$`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// An absolute path without `.`, `..` or empty components (a trailing `/` is allowed), and without
/// control characters.
pub fn clean_absolute(path: &str) -> bool {
    let path = if path.len() > 1 { path.strip_suffix('/').unwrap_or(path) } else { path };
    path.starts_with('/')
        && !path.chars().any(char::is_control)
        && (path == "/" || path[1..].split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
}

/// Where an entrypoint lies in the service's root: None for a bare name (looked up in PATH).
pub fn entrypoint_in_root(entrypoint: &str) -> Option<String> {
    if !entrypoint.contains('/') {
        return None;
    }
    // The working directory is the root, so `./x` and `x/y` are relative to it.
    let parts: Vec<&str> = entrypoint.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    Some(format!("/{}", parts.join("/")))
}

/// Follows the symlinks of `path` as a service sees it: `locate` says where a path of the service's
/// view lies on disk (its root joined, or a bind mount's source). Absolute link targets restart at
/// the view's `/`, `..` never climbs above it, components that do not exist are kept. Returns the
/// resolved path in the view. The node (mount targets) and the builder (entrypoints) both use it.
pub fn follow_symlinks(path: &str, locate: impl Fn(&str) -> PathBuf) -> io::Result<String> {
    let mut pending: Vec<String> = path.split('/').filter(|p| !p.is_empty()).rev().map(String::from).collect();
    let mut here: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                here.pop();
                continue;
            }
            _ => here.push(part),
        }
        let on_disk = locate(&format!("/{}", here.join("/")));
        let is_link = std::fs::symlink_metadata(&on_disk).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            continue;
        }
        hops += 1;
        if hops > 40 {
            return Err(io::Error::other(format!("{path}: too many levels of symbolic links")));
        }
        let target = std::fs::read_link(&on_disk)?;
        here.pop();
        if target.is_absolute() {
            here.clear();
        }
        let parts = Path::new(&target).components().filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_string()),
            _ => None,
        });
        pending.extend(parts.collect::<Vec<_>>().into_iter().rev());
    }
    Ok(format!("/{}", here.join("/")))
}

/// One step of a field's path: a mapping key or a list index.
#[derive(Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// A field's path as text: `container.mounts[2].options`.
fn show_path(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The 1-based line of the field at `path` in a block-style YAML text, following keys by
/// indentation and list items by their `- `; where the text uses flow style (`[a, b]`) or the path
/// runs out, the line of the deepest part found. None when not even the first key is found.
fn line_of(text: &str, path: &[Step]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    // Each line's content column once list dashes are skipped, and the column of its first dash.
    let shape = |line: &str| -> Option<(usize, Option<usize>)> {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            return None;
        }
        let mut column = line.len() - trimmed.len();
        let dash = if trimmed.starts_with("- ") || trimmed == "-" { Some(column) } else { None };
        let mut rest = trimmed;
        while let Some(after) = rest.strip_prefix("- ") {
            let inner = after.trim_start();
            column += rest.len() - inner.len();
            rest = inner;
        }
        Some((column, dash))
    };
    let (mut start, mut end) = (0, lines.len());
    let mut parent_column: Option<usize> = None;
    let mut found = None;
    for step in path {
        match step {
            Step::Key(key) => {
                let hit = (start..end).find(|&i| {
                    let Some((column, _)) = shape(lines[i]) else { return false };
                    let content = lines[i].get(column..).unwrap_or_default();
                    parent_column.is_none_or(|p| column > p)
                        && [format!("{key}:"), format!("\"{key}\":"), format!("'{key}':")]
                            .iter()
                            .any(|k| content.starts_with(k.as_str()))
                });
                let Some(hit) = hit else { return found };
                let (column, _) = shape(lines[hit])?;
                found = Some(hit + 1);
                let block_end = (hit + 1..end)
                    .find(|&i| match shape(lines[i]) {
                        Some((c, dash)) => c < column || (c == column && dash.is_none()),
                        None => false,
                    })
                    .unwrap_or(end);
                start = hit + 1;
                end = block_end;
                // A list under the key may sit at the key's own column.
                parent_column = Some(column.saturating_sub(1));
            }
            Step::Index(index) => {
                let dashes: Vec<(usize, usize)> =
                    (start..end).filter_map(|i| shape(lines[i]).and_then(|(_, d)| d).map(|d| (i, d))).collect();
                let Some(column) = dashes.iter().map(|(_, d)| *d).min() else { return found };
                let items: Vec<usize> = dashes.iter().filter(|(_, d)| *d == column).map(|(i, _)| *i).collect();
                let Some(&item) = items.get(*index) else { return found };
                found = Some(item + 1);
                start = item;
                end = items.get(index + 1).copied().unwrap_or(end);
                parent_column = Some(column);
            }
        }
    }
    found
}

/// Walks the document, collecting problems; returns None where a value could not be read at all.
struct Reader<'t> {
    text: &'t str,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
}

/// A YAML value as an error message shows it.
pub fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

impl Reader<'_> {
    fn problem(&self, path: &[Step], message: String) -> Problem {
        Problem { line: line_of(self.text, path), field: show_path(path), message }
    }

    fn error(&mut self, path: &[Step], message: String) {
        let problem = self.problem(path, message);
        self.errors.push(problem);
    }

    /// Warns about keys outside `known`, and returns the mapping's entries by key.
    fn mapping<'v>(&mut self, value: &'v Value, path: &[Step], known: &[&str]) -> Option<&'v Mapping> {
        let Value::Mapping(map) = value else {
            self.error(path, format!("{} is not a mapping", describe(value)));
            return None;
        };
        for key in map.keys() {
            let name = match key {
                Value::String(s) => s.clone(),
                other => describe(other),
            };
            if !known.contains(&name.as_str()) {
                let mut at = path.to_vec();
                at.push(Step::Key(&name));
                let problem = self
                    .problem(&at, format!("unknown key, ignored (as Talos ignores it; known: {})", known.join(", ")));
                self.warnings.push(problem);
            }
        }
        Some(map)
    }

    fn string(&mut self, value: Option<&Value>, path: &[Step]) -> Option<String> {
        match value? {
            Value::String(s) => Some(s.clone()),
            other => {
                self.error(path, format!("{} is not a string", describe(other)));
                None
            }
        }
    }

    fn boolean(&mut self, value: Option<&Value>, path: &[Step]) -> Option<bool> {
        match value? {
            Value::Bool(b) => Some(*b),
            other => {
                self.error(path, format!("{} is not true or false", describe(other)));
                None
            }
        }
    }

    /// A list of strings (an absent or null list is None).
    fn strings(&mut self, value: Option<&Value>, path: &[Step]) -> Option<Vec<String>> {
        let items = match value? {
            Value::Null => return None,
            Value::Sequence(items) => items,
            other => {
                self.error(path, format!("{} is not a list", describe(other)));
                return None;
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let mut at = path.to_vec();
            at.push(Step::Index(i));
            match item {
                Value::String(s) => out.push(s.clone()),
                // Go's decoder reads a plain number into a string field; so does this one.
                Value::Number(n) => out.push(n.to_string()),
                other => self.error(&at, format!("{} is not a string", describe(other))),
            }
        }
        Some(out)
    }

    /// A list of clean absolute paths.
    fn paths(&mut self, value: Option<&Value>, path: &[Step]) -> Option<Vec<String>> {
        let list = self.strings(value, path)?;
        for (i, p) in list.iter().enumerate() {
            if !clean_absolute(p) {
                let mut at = path.to_vec();
                at.push(Step::Index(i));
                self.error(&at, format!("{p:?} is not a clean absolute path"));
            }
        }
        Some(list)
    }

    fn spec(&mut self, document: &Value) -> Option<ServiceSpec> {
        let top = self.mapping(document, &[], &["name", "depends", "container", "restart", "logToConsole"])?;
        let name = match self.string(top.get("name"), &[Step::Key("name")]) {
            Some(name) if valid_name(&name) => Some(name),
            Some(name) => {
                self.error(&[Step::Key("name")], format!("{name:?} must be lowercase letters, digits, '-' and '_'"));
                None
            }
            None if top.get("name").is_none() => {
                self.error(&[], "no `name`".to_string());
                None
            }
            None => None,
        };
        let depends = self.depends(top.get("depends"));
        let container = match top.get("container") {
            Some(value) => self.container(value),
            None => {
                self.error(&[], "no `container` (its entrypoint is required)".to_string());
                None
            }
        };
        let restart_path = [Step::Key("restart")];
        let restart = match self.string(top.get("restart"), &restart_path) {
            // Talos reads the kind without regard to case.
            Some(kind) => match kind.to_ascii_lowercase().as_str() {
                "always" => Some(Restart::Always),
                "untilsuccess" => Some(Restart::UntilSuccess),
                "never" => Some(Restart::Never),
                _ => {
                    self.error(&restart_path, format!("{kind:?} is not always, untilSuccess or never"));
                    None
                }
            },
            None if top.get("restart").is_none() => {
                self.error(&[], "no `restart` (always, untilSuccess or never; Talos requires it)".to_string());
                None
            }
            None => None,
        };
        let log_to_console = self.boolean(top.get("logToConsole"), &[Step::Key("logToConsole")]).unwrap_or(false);
        Some(ServiceSpec { name: name?, depends: depends?, container: container?, restart: restart?, log_to_console })
    }

    fn depends(&mut self, value: Option<&Value>) -> Option<Vec<Dependency>> {
        let items = match value {
            None | Some(Value::Null) => return Some(Vec::new()),
            Some(Value::Sequence(items)) => items,
            Some(other) => {
                self.error(&[Step::Key("depends")], format!("{} is not a list", describe(other)));
                return None;
            }
        };
        let mut out = Vec::new();
        let kinds = ["service", "path", "network", "time", "configuration"];
        for (i, item) in items.iter().enumerate() {
            let at = [Step::Key("depends"), Step::Index(i)];
            let Some(map) = self.mapping(item, &at, &kinds) else { continue };
            let given: Vec<&str> = kinds.iter().copied().filter(|k| map.get(*k).is_some()).collect();
            let kind = match given.as_slice() {
                [one] => *one,
                [] => {
                    self.error(&at, format!("no dependency given: one of {}", kinds.join(", ")));
                    continue;
                }
                many => {
                    self.error(
                        &at,
                        format!("more than one dependency in one entry ({}): give each its own `-`", many.join(", ")),
                    );
                    continue;
                }
            };
            let field = [Step::Key("depends"), Step::Index(i), Step::Key(kind)];
            let value = map.get(kind);
            let dependency = match kind {
                "service" => match self.string(value, &field) {
                    Some(s) if !s.is_empty() => Some(Dependency::Service(s)),
                    Some(_) => {
                        self.error(&field, "an empty service name".to_string());
                        None
                    }
                    None => None,
                },
                "path" => match self.string(value, &field) {
                    Some(p) if clean_absolute(&p) => Some(Dependency::Path(p)),
                    Some(p) => {
                        self.error(&field, format!("{p:?} is not a clean absolute path"));
                        None
                    }
                    None => None,
                },
                "network" => self.strings(value, &field).map(|names| {
                    let mut checks = Vec::new();
                    for (j, name) in names.iter().enumerate() {
                        match NetworkCheck::ALL.iter().find(|(n, _)| n == name) {
                            Some((_, check)) => checks.push(*check),
                            None => self.error(
                                &[Step::Key("depends"), Step::Index(i), Step::Key("network"), Step::Index(j)],
                                format!("{name:?} is not addresses, connectivity, hostname or etcfiles"),
                            ),
                        }
                    }
                    if names.is_empty() {
                        self.error(&field, "an empty list waits for nothing: name what to wait for".to_string());
                    }
                    Dependency::Network(checks)
                }),
                _ => match self.boolean(value, &field) {
                    Some(true) if kind == "time" => Some(Dependency::Time),
                    Some(true) => Some(Dependency::Configuration),
                    Some(false) => {
                        self.error(&field, "false is no dependency (Talos refuses it): drop the entry".to_string());
                        None
                    }
                    None => None,
                },
            };
            out.extend(dependency);
        }
        Some(out)
    }

    fn container(&mut self, value: &Value) -> Option<Container> {
        let base = [Step::Key("container")];
        let known = ["entrypoint", "args", "mounts", "environment", "environmentFile", "security"];
        let map = self.mapping(value, &base, &known)?;
        let at = |key| [Step::Key("container"), Step::Key(key)];
        let entrypoint = match self.string(map.get("entrypoint"), &at("entrypoint")) {
            Some(e) if e.trim().is_empty() => {
                self.error(&at("entrypoint"), "empty (Talos requires an entrypoint)".to_string());
                None
            }
            Some(e) if e.split('/').any(|p| p == "..") || e.chars().any(char::is_control) => {
                self.error(&at("entrypoint"), format!("{e:?} must stay inside the service's root (no `..`)"));
                None
            }
            Some(e) => Some(e),
            None if map.get("entrypoint").is_none() => {
                self.error(&base, "no `entrypoint` (Talos requires one)".to_string());
                None
            }
            None => None,
        };
        let args = self.strings(map.get("args"), &at("args")).unwrap_or_default();
        let mut environment = Vec::new();
        for (i, entry) in
            self.strings(map.get("environment"), &at("environment")).unwrap_or_default().iter().enumerate()
        {
            match entry.split_once('=') {
                Some((key, value)) if !key.is_empty() => environment.push((key.to_string(), value.to_string())),
                _ => self.error(
                    &[Step::Key("container"), Step::Key("environment"), Step::Index(i)],
                    format!("{entry:?} is not KEY=value"),
                ),
            }
        }
        let environment_file = match self.string(map.get("environmentFile"), &at("environmentFile")) {
            Some(p) if clean_absolute(&p) => Some(p),
            Some(p) => {
                self.error(&at("environmentFile"), format!("{p:?} is not a clean absolute path"));
                None
            }
            None => None,
        };
        let mounts = self.mounts(map.get("mounts"));
        let security = match map.get("security") {
            Some(value) => self.security(value),
            None => Security::default(),
        };
        Some(Container { entrypoint: entrypoint?, args, mounts, environment, environment_file, security })
    }

    fn mounts(&mut self, value: Option<&Value>) -> Vec<Mount> {
        let base = [Step::Key("container"), Step::Key("mounts")];
        let items = match value {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Sequence(items)) => items,
            Some(other) => {
                self.error(&base, format!("{} is not a list", describe(other)));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = [Step::Key("container"), Step::Key("mounts"), Step::Index(i)];
            let field = |key| [Step::Key("container"), Step::Key("mounts"), Step::Index(i), Step::Key(key)];
            let known = ["source", "destination", "type", "options", "uidMappings", "gidMappings"];
            let Some(map) = self.mapping(item, &at, &known) else { continue };
            let path = |reader: &mut Self, key| match reader.string(map.get(key), &field(key)) {
                Some(p) if clean_absolute(&p) => Some(p),
                Some(p) => {
                    reader.error(&field(key), format!("{p:?} is not a clean absolute path"));
                    None
                }
                None if map.get(key).is_none() => {
                    reader.error(&at, format!("no `{key}`"));
                    None
                }
                None => None,
            };
            let (source, destination) = (path(self, "source"), path(self, "destination"));
            if destination.as_deref() == Some("/") {
                self.error(&field("destination"), "a mount on / would replace the service's root".to_string());
            }
            for key in ["uidMappings", "gidMappings"] {
                if map.get(key).is_some() {
                    self.error(&field(key), "ID-mapped mounts need a user namespace, which services do not get".into());
                }
            }
            let kind = self.string(map.get("type"), &field("type"));
            let options = self.strings(map.get("options"), &field("options")).unwrap_or_default();
            let mut mount = Mount {
                source: source.unwrap_or_default(),
                destination: destination.unwrap_or_default(),
                kind: kind.clone().unwrap_or_else(|| "bind".to_string()),
                bind: kind.as_deref().is_none_or(|k| k == "bind"),
                recursive: false,
                flags: Vec::new(),
                propagation: Vec::new(),
                data: Vec::new(),
            };
            if !mount.bind && !FILESYSTEMS.contains(&mount.kind.as_str()) {
                self.error(
                    &field("type"),
                    format!("{:?}: a service's mounts are bind or one of {}", mount.kind, FILESYSTEMS.join(", ")),
                );
            }
            for (j, option) in options.iter().enumerate() {
                let option_at =
                    [Step::Key("container"), Step::Key("mounts"), Step::Index(i), Step::Key("options"), Step::Index(j)];
                if option == "bind" || option == "rbind" {
                    mount.bind = true;
                    mount.recursive |= option == "rbind";
                } else if option == "defaults" {
                } else if let Some((_, flag, set)) = FLAGS.iter().find(|(w, _, _)| w == option) {
                    mount.flags.push((*flag, *set));
                } else if let Some((_, kind, recursive)) = PROPAGATIONS.iter().find(|(w, _, _)| w == option) {
                    mount.propagation.push((*kind, *recursive));
                } else if option.contains('=') && !mount.bind {
                    mount.data.push(option.clone());
                } else {
                    self.error(&option_at, format!("{option:?} is not a mount option this node knows"));
                }
            }
            if mount.bind && kind.as_deref().is_some_and(|k| k != "bind") {
                self.error(&field("type"), format!("{:?} with the option bind or rbind: say type bind", mount.kind));
            }
            out.push(mount);
        }
        out
    }

    fn security(&mut self, value: &Value) -> Security {
        let base = [Step::Key("container"), Step::Key("security")];
        let known = ["writeableRootfs", "writeableSysfs", "rootfsPropagation", "maskedPaths", "readonlyPaths"];
        let Some(map) = self.mapping(value, &base, &known) else { return Security::default() };
        let at = |key| [Step::Key("container"), Step::Key("security"), Step::Key(key)];
        let rootfs_propagation = match self.string(map.get("rootfsPropagation"), &at("rootfsPropagation")) {
            Some(word) => match PROPAGATIONS.iter().find(|(w, _, _)| *w == word) {
                Some((_, kind, recursive)) => Some((*kind, *recursive)),
                None => {
                    let words: Vec<&str> = PROPAGATIONS.iter().map(|(w, _, _)| *w).collect();
                    self.error(&at("rootfsPropagation"), format!("{word:?} is not one of {}", words.join(", ")));
                    None
                }
            },
            None => None,
        };
        Security {
            writeable_rootfs: self.boolean(map.get("writeableRootfs"), &at("writeableRootfs")).unwrap_or(false),
            writeable_sysfs: self.boolean(map.get("writeableSysfs"), &at("writeableSysfs")).unwrap_or(false),
            rootfs_propagation,
            masked_paths: self.paths(map.get("maskedPaths"), &at("maskedPaths")),
            readonly_paths: self.paths(map.get("readonlyPaths"), &at("readonlyPaths")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse(text).expect_err("the spec should be refused").iter().map(|p| p.at("s.yaml")).collect()
    }

    fn refused(text: &str, wanted: &str) {
        let all = errors(text);
        assert!(all.iter().any(|e| e.contains(wanted)), "no error contains {wanted:?}: {all:#?}");
    }

    const BASE: &str = "name: svc\ncontainer:\n  entrypoint: ./svc\nrestart: always\n";

    #[test]
    fn every_field_is_read() {
        let text = "name: svc
depends:
  - service: cri
  - path: /dev/x
  - network: [addresses, connectivity]
  - time: true
  - configuration: true
container:
  entrypoint: /usr/bin/svc
  args: [-f, 2]
  environment:
    - PATH=/usr/bin
    - A=b=c
  environmentFile: /var/etc/svc.env
  security:
    writeableRootfs: true
    writeableSysfs: true
    rootfsPropagation: shared
    maskedPaths: []
  mounts:
    - source: /dev
      destination: /dev
      type: bind
      options: [rshared, rbind, rw]
    - source: tmpfs
      destination: /scratch
      type: tmpfs
      options: [nosuid, mode=0755, size=1m]
restart: untilsuccess
logToConsole: true
";
        let spec = parse(text.replace("source: tmpfs", "source: /tmpfs").as_str()).unwrap().spec;
        assert_eq!(spec.restart, Restart::UntilSuccess);
        assert!(spec.log_to_console);
        assert_eq!(
            spec.depends,
            vec![
                Dependency::Service("cri".into()),
                Dependency::Path("/dev/x".into()),
                Dependency::Network(vec![NetworkCheck::Addresses, NetworkCheck::Connectivity]),
                Dependency::Time,
                Dependency::Configuration,
            ]
        );
        let c = &spec.container;
        assert_eq!(c.args, ["-f", "2"]);
        assert_eq!(c.environment, [("PATH".into(), "/usr/bin".into()), ("A".into(), "b=c".into())]);
        assert_eq!(c.environment_file.as_deref(), Some("/var/etc/svc.env"));
        assert!(c.security.writeable_rootfs && c.security.writeable_sysfs);
        assert_eq!(c.security.rootfs_propagation, Some((Propagation::Shared, false)));
        assert_eq!(c.security.masked_paths, Some(vec![]), "[] is not the same as absent");
        assert_eq!(c.security.readonly_paths, None);
        assert!(c.mounts[0].bind && c.mounts[0].recursive);
        assert_eq!(c.mounts[0].flags, [(Flag::ReadOnly, false)]);
        assert_eq!(c.mounts[0].propagation, [(Propagation::Shared, true)]);
        assert!(!c.mounts[1].bind);
        assert_eq!(c.mounts[1].data, ["mode=0755", "size=1m"]);
        assert_eq!(c.mounts[1].flags, [(Flag::NoSuid, true)]);
    }

    #[test]
    fn unknown_keys_are_warnings_with_their_line() {
        let parsed = parse(&format!("{BASE}colour: red\ncontainer2: {{}}\n")).unwrap();
        let warnings: Vec<String> = parsed.warnings.iter().map(|w| w.at("s.yaml")).collect();
        assert!(warnings[0].starts_with("s.yaml:5: field `colour`: unknown key, ignored"), "{warnings:?}");
        let parsed = parse("name: svc\ncontainer:\n  entrypoint: ./svc\n  user: 0\nrestart: always\n").unwrap();
        assert_eq!(
            parsed.warnings[0].at("s.yaml").split(" (").next().unwrap(),
            "s.yaml:4: field `container.user`: unknown key, ignored"
        );
    }

    #[test]
    fn wrong_types_are_named_by_path_and_line() {
        refused(&BASE.replace("./svc", "[a]"), "s.yaml:3: field `container.entrypoint`: a list is not a string");
        refused(
            &format!("{BASE}logToConsole: yes please\n"),
            "s.yaml:5: field `logToConsole`: \"yes please\" is not true or false",
        );
        refused(
            "name: svc\ncontainer:\n  entrypoint: ./svc\n  mounts:\n    - source: /a\n      destination: /b\n      options:\n        - rbind\n        - [ro]\nrestart: always\n",
            "s.yaml:9: field `container.mounts[0].options[1]`: a list is not a string",
        );
        refused(
            "name: svc\ncontainer:\n  entrypoint: ./svc\n  environment: {A: b}\nrestart: always\n",
            "field `container.environment`: a mapping is not a list",
        );
        refused("- a\n- b\n", "a list is not a mapping");
        refused("name: [svc\n", "s.yaml:");
    }

    #[test]
    fn missing_and_unknown_restart_are_refused() {
        refused("name: svc\ncontainer:\n  entrypoint: ./svc\n", "no `restart`");
        refused(
            &BASE.replace("always", "sometimes"),
            "s.yaml:4: field `restart`: \"sometimes\" is not always, untilSuccess or never",
        );
        refused("container:\n  entrypoint: ./svc\nrestart: always\n", "no `name`");
        refused("name: svc\nrestart: always\n", "no `container`");
        refused("name: svc\ncontainer:\n  args: []\nrestart: always\n", "no `entrypoint`");
        refused(&BASE.replace("name: svc", "name: Svc"), "field `name`: \"Svc\" must be lowercase");
    }

    #[test]
    fn a_depends_entry_holds_exactly_one_dependency() {
        let two = "name: svc\ndepends:\n  - path: /dev/x\n  - service: cri\n    path: /dev/y\ncontainer:\n  entrypoint: ./svc\nrestart: always\n";
        refused(two, "s.yaml:4: field `depends[1]`: more than one dependency in one entry (service, path)");
        refused(
            &two.replace("  - service: cri\n    path: /dev/y\n", "  - colour: red\n"),
            "s.yaml:4: field `depends[1]`: no dependency given",
        );
        refused(
            "name: svc\ndepends:\n  - {}\ncontainer:\n  entrypoint: ./svc\nrestart: always\n",
            "field `depends[0]`: no dependency given",
        );
        refused(
            &two.replace("    path: /dev/y\n", "").replace("service: cri", "time: false"),
            "s.yaml:4: field `depends[1].time`: false is no dependency",
        );
        refused(
            &two.replace("    path: /dev/y\n", "").replace("service: cri", "network: [addresses, uplink]"),
            "field `depends[1].network[1]`: \"uplink\"",
        );
    }

    #[test]
    fn unsafe_paths_are_refused() {
        let deps =
            |p: &str| format!("name: svc\ndepends:\n  - path: {p}\ncontainer:\n  entrypoint: ./svc\nrestart: always\n");
        refused(&deps("dev/x"), "s.yaml:3: field `depends[0].path`: \"dev/x\" is not a clean absolute path");
        refused(&deps("/dev/../etc"), "is not a clean absolute path");
        refused(
            &BASE.replace("./svc", "../../bin/x"),
            "field `container.entrypoint`: \"../../bin/x\" must stay inside",
        );
        let mount = |src: &str, dst: &str| {
            format!("name: svc\ncontainer:\n  entrypoint: ./svc\n  mounts:\n    - source: {src}\n      destination: {dst}\n      type: bind\nrestart: always\n")
        };
        refused(
            &mount("/dev", "/../etc"),
            "s.yaml:6: field `container.mounts[0].destination`: \"/../etc\" is not a clean absolute path",
        );
        refused(&mount("dev", "/dev"), "s.yaml:5: field `container.mounts[0].source`");
        refused(&mount("/dev", "/"), "would replace the service's root");
        refused(&mount("/dev", "/dev").replace("type: bind", "type: nfs"), "field `container.mounts[0].type`: \"nfs\"");
        refused(
            &mount("/dev", "/dev").replace("type: bind", "options: [rbnid]"),
            "field `container.mounts[0].options[0]`: \"rbnid\" is not a mount option",
        );
        refused(
            "name: svc\ncontainer:\n  entrypoint: ./svc\n  security:\n    maskedPaths: [proc/kcore]\nrestart: always\n",
            "field `container.security.maskedPaths[0]`",
        );
        refused(
            "name: svc\ncontainer:\n  entrypoint: ./svc\n  security:\n    rootfsPropagation: sideways\nrestart: always\n",
            "s.yaml:5: field `container.security.rootfsPropagation`: \"sideways\"",
        );
        refused(
            "name: svc\ncontainer:\n  entrypoint: ./svc\n  environment: [NOEQUALS]\nrestart: always\n",
            "\"NOEQUALS\" is not KEY=value",
        );
    }

    #[test]
    fn every_problem_is_listed() {
        let all = errors("name: BAD\ncontainer:\n  entrypoint: 7\nrestart: maybe\n");
        assert_eq!(all.len(), 3, "{all:#?}");
    }

    #[test]
    fn entrypoints_resolve_in_the_root() {
        assert_eq!(entrypoint_in_root("./qemu-ga").as_deref(), Some("/qemu-ga"));
        assert_eq!(entrypoint_in_root("/usr/local/sbin/iscsid").as_deref(), Some("/usr/local/sbin/iscsid"));
        assert_eq!(entrypoint_in_root("bin/x").as_deref(), Some("/bin/x"));
        assert_eq!(entrypoint_in_root("hello-world"), None);
    }

    #[test]
    fn lines_follow_the_path() {
        let text = "a:\n  b:\n    - x: 1\n    - x: 2\n      y:\n        - p\n        - q\n  c: [1, 2]\n";
        let at = |path: &[Step]| line_of(text, path);
        assert_eq!(at(&[Step::Key("a"), Step::Key("b"), Step::Index(1), Step::Key("x")]), Some(4));
        assert_eq!(at(&[Step::Key("a"), Step::Key("b"), Step::Index(1), Step::Key("y"), Step::Index(1)]), Some(7));
        assert_eq!(at(&[Step::Key("a"), Step::Key("c"), Step::Index(1)]), Some(8), "flow style: the key's line");
        assert_eq!(
            at(&[Step::Key("a"), Step::Key("b"), Step::Index(0), Step::Key("y")]),
            Some(3),
            "missing: the item's"
        );
        assert_eq!(at(&[Step::Key("zz")]), None);
        // A list at its key's own column.
        assert_eq!(line_of("d:\n- k: 1\n- k: 2\n", &[Step::Key("d"), Step::Index(1), Step::Key("k")]), Some(3));
    }

    /// Every service spec of siderolabs/extensions (tests/fixtures/talos-services, copied unchanged)
    /// parses without an error or a warning.
    #[test]
    fn every_upstream_talos_service_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/talos-services");
        let mut pending = vec![dir.clone()];
        let mut parsed = Vec::new();
        while let Some(at) = pending.pop() {
            for entry in std::fs::read_dir(&at).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.extension().is_some_and(|e| e == "yaml") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let file = path.strip_prefix(&dir).unwrap().display().to_string();
                    match parse(&text) {
                        Ok(p) => {
                            let warnings: Vec<String> = p.warnings.iter().map(|w| w.at(&file)).collect();
                            assert!(warnings.is_empty(), "{warnings:#?}");
                            assert_eq!(Some(p.spec.name.as_str()), path.file_stem().and_then(|s| s.to_str()));
                            parsed.push((file, p.spec));
                        }
                        Err(problems) => panic!("{:#?}", problems.iter().map(|p| p.at(&file)).collect::<Vec<_>>()),
                    }
                }
            }
        }
        assert_eq!(parsed.len(), 31, "the fixture holds the 31 specs of siderolabs/extensions");
        let spec = |file: &str| &parsed.iter().find(|(f, _)| f == file).unwrap().1;
        let iscsid = spec("storage/iscsi-tools/iscsid.yaml");
        assert_eq!(iscsid.container.security.masked_paths, Some(vec![]));
        assert!(iscsid.container.security.writeable_sysfs);
        assert_eq!(iscsid.depends[0], Dependency::Service("cri".into()));
        let agent = spec("guest-agents/qemu-guest-agent/qemu-guest-agent.yaml");
        assert_eq!(agent.container.entrypoint, "./qemu-ga");
        assert_eq!(agent.container.mounts[3].flags, [(Flag::ReadOnly, true)]);
        assert_eq!(agent.container.mounts[0].flags, [(Flag::ReadOnly, false)]);
        assert_eq!(spec("storage/zfs/zfs-service.yaml").restart, Restart::UntilSuccess);
        assert!(spec("guest-agents/metal-agent/metal-agent.yaml").log_to_console);
    }
}

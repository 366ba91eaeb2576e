//! The per-node machine config: one image boots as any role, and what tells one node from another is a
//! document the node is given at boot (a NoCloud CIDATA volume's `user-data`, or an SMBIOS OEM string;
//! see source.rs). Its format is a documented subset of Talos's v1alpha1 machine config, where the
//! fields mean what they mean in Talos:
//!
//! ```yaml
//! version: v1alpha1
//! machine:
//!   type: worker                     # controlplane | worker | storage
//!   network:
//!     hostname: worker-1
//!     nameservers: [10.0.2.3]
//!     interfaces:
//!       - interface: eth0
//!         dhcp: false                # default: true when no addresses are given
//!         addresses: [10.0.2.50/24]
//!         routes: [{network: 0.0.0.0/0, gateway: 10.0.2.2, metric: 1024}]
//!         mtu: 1500
//!   time:
//!     disabled: false
//!     servers: [10.0.2.2]
//!   sysctls:
//!     net.core.somaxconn: "65535"
//!   files:
//!     - path: /var/etc/motd           # under /var, the node's only writable disk
//!       content: "hello"
//!       permissions: 0o644
//!       op: create                    # create | append | overwrite
//! ```
//!
//! Keys outside the subset (a full Talos config has many: machine.kubelet, cluster, …) are accepted and
//! listed as ignored, so a Talos config still applies what this node understands. A value of a known
//! key that is wrong is an error naming the key's path and why.

use crate::service_spec::describe as show;
use serde_yaml_ng::{Mapping, Value};
use std::net::Ipv4Addr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    ControlPlane,
    Worker,
    Storage,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "controlplane",
            Role::Worker => "worker",
            Role::Storage => "storage",
        }
    }
}

/// An IPv4 address with its prefix length: `10.0.2.50/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub address: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = text.split_once('/').ok_or_else(|| format!("{text:?} has no /prefix-length"))?;
        let address: Ipv4Addr = address.trim().parse().map_err(|_| format!("{text:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix.trim().parse().map_err(|_| format!("{text:?} has no prefix length 0-32"))?;
        if prefix > 32 {
            return Err(format!("{text:?} has a prefix length over 32"));
        }
        Ok(Cidr { address, prefix })
    }

    pub fn netmask(self) -> Ipv4Addr {
        let bits = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
        Ipv4Addr::from(bits)
    }

    /// The network this address is in (`10.0.2.0` for `10.0.2.50/24`).
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) & u32::from(self.netmask()))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub network: Cidr,
    pub gateway: Option<Ipv4Addr>,
    pub metric: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub dhcp: bool,
    pub addresses: Vec<Cidr>,
    pub routes: Vec<Route>,
    pub mtu: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOp {
    Create,
    Append,
    Overwrite,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub content: String,
    pub permissions: u32,
    pub op: FileOp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    pub role: Role,
    pub hostname: Option<String>,
    pub nameservers: Vec<Ipv4Addr>,
    pub search_domains: Vec<String>,
    pub interfaces: Vec<Interface>,
    pub time_disabled: bool,
    pub time_servers: Vec<String>,
    pub sysctls: Vec<(String, String)>,
    pub files: Vec<File>,
    /// Keys present in the document that this node does not apply, as dotted paths.
    pub ignored: Vec<String>,
}

/// A config that does not hold: the key's path and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub why: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.why)
    }
}

type Checked<T> = Result<T, Invalid>;

fn invalid<T>(field: &str, why: impl Into<String>) -> Checked<T> {
    Err(Invalid { field: field.to_string(), why: why.into() })
}

/// Parses and checks a machine config document.
pub fn parse(text: &str) -> Checked<MachineConfig> {
    let document: Value = match serde_yaml_ng::from_str(text) {
        Ok(value) => value,
        Err(e) => return invalid("(document)", format!("not YAML: {e}")),
    };
    let mut ignored = Vec::new();
    let top = mapping(&document, "(document)")?;
    known_keys(top, "", &["version", "machine", "cluster", "debug", "persist"], &mut ignored);
    for key in ["cluster", "debug", "persist"] {
        if top.get(key).is_some() {
            ignored.push(key.to_string());
        }
    }
    match top.get("version") {
        Some(Value::String(v)) if v == "v1alpha1" => {}
        Some(other) => return invalid("version", format!("{} is not v1alpha1", show(other))),
        None => return invalid("version", "missing (v1alpha1)"),
    }
    let machine = match top.get("machine") {
        Some(value) => mapping(value, "machine")?,
        None => return invalid("machine", "missing"),
    };
    known_keys(machine, "machine", &["type", "network", "time", "sysctls", "files"], &mut ignored);
    let role = match string(machine.get("type"), "machine.type")?.as_deref() {
        Some("controlplane") => Role::ControlPlane,
        Some("worker") => Role::Worker,
        Some("storage") => Role::Storage,
        Some("init") => return invalid("machine.type", "\"init\" is gone from Talos; use controlplane"),
        Some(other) => return invalid("machine.type", format!("{other:?} is not controlplane, worker or storage")),
        None => return invalid("machine.type", "missing (controlplane, worker or storage)"),
    };

    let mut config = MachineConfig {
        role,
        hostname: None,
        nameservers: Vec::new(),
        search_domains: Vec::new(),
        interfaces: Vec::new(),
        time_disabled: false,
        time_servers: Vec::new(),
        sysctls: Vec::new(),
        files: Vec::new(),
        ignored: Vec::new(),
    };
    if let Some(network) = machine.get("network") {
        let network = mapping(network, "machine.network")?;
        known_keys(
            network,
            "machine.network",
            &["hostname", "nameservers", "searchDomains", "interfaces"],
            &mut ignored,
        );
        if let Some(hostname) = string(network.get("hostname"), "machine.network.hostname")? {
            if !valid_hostname(&hostname) {
                return invalid(
                    "machine.network.hostname",
                    format!("{hostname:?} is not a host name (letters, digits, '-', '.', at most 253)"),
                );
            }
            config.hostname = Some(hostname);
        }
        for (i, value) in list(network.get("nameservers"), "machine.network.nameservers")?.iter().enumerate() {
            let field = format!("machine.network.nameservers[{i}]");
            config.nameservers.push(ipv4(value, &field)?);
        }
        for (i, value) in list(network.get("searchDomains"), "machine.network.searchDomains")?.iter().enumerate() {
            let field = format!("machine.network.searchDomains[{i}]");
            match value {
                Value::String(s) if valid_hostname(s) => config.search_domains.push(s.clone()),
                other => return invalid(&field, format!("{} is not a domain name", show(other))),
            }
        }
        for (i, value) in list(network.get("interfaces"), "machine.network.interfaces")?.iter().enumerate() {
            config.interfaces.push(interface(value, &format!("machine.network.interfaces[{i}]"), &mut ignored)?);
        }
    }
    if let Some(time) = machine.get("time") {
        let time = mapping(time, "machine.time")?;
        known_keys(time, "machine.time", &["disabled", "servers"], &mut ignored);
        config.time_disabled = boolean(time.get("disabled"), "machine.time.disabled")?.unwrap_or(false);
        for (i, value) in list(time.get("servers"), "machine.time.servers")?.iter().enumerate() {
            let field = format!("machine.time.servers[{i}]");
            match value {
                Value::String(s) if !s.is_empty() && !s.contains(char::is_whitespace) => {
                    config.time_servers.push(s.clone())
                }
                other => return invalid(&field, format!("{} is not a server name or address", show(other))),
            }
        }
    }
    if let Some(sysctls) = machine.get("sysctls") {
        for (key, value) in mapping(sysctls, "machine.sysctls")? {
            let name = match key {
                Value::String(s) => s.clone(),
                other => return invalid("machine.sysctls", format!("key {} is not a sysctl name", show(other))),
            };
            let field = format!("machine.sysctls.{name}");
            if name.is_empty()
                || name.contains("..")
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
            {
                return invalid(&field, "not a sysctl name (like net.ipv4.ip_forward)");
            }
            let value = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => if *b { "1" } else { "0" }.to_string(),
                other => return invalid(&field, format!("{} is not a value", show(other))),
            };
            if value.contains('\n') {
                return invalid(&field, "a value is one line");
            }
            config.sysctls.push((name, value));
        }
    }
    for (i, value) in list(machine.get("files"), "machine.files")?.iter().enumerate() {
        config.files.push(file(value, &format!("machine.files[{i}]"), &mut ignored)?);
    }
    ignored.sort();
    ignored.dedup();
    config.ignored = ignored;
    Ok(config)
}

fn interface(value: &Value, field: &str, ignored: &mut Vec<String>) -> Checked<Interface> {
    let map = mapping(value, field)?;
    known_keys(map, field, &["interface", "dhcp", "addresses", "routes", "mtu"], ignored);
    let name = match string(map.get("interface"), &format!("{field}.interface"))? {
        Some(name) if crate::parse::is_safe_name(&name) && name.len() < 16 => name,
        Some(name) => return invalid(&format!("{field}.interface"), format!("{name:?} is not an interface name")),
        None => return invalid(&format!("{field}.interface"), "missing (e.g. eth0)"),
    };
    let mut addresses = Vec::new();
    for (i, value) in list(map.get("addresses"), &format!("{field}.addresses"))?.iter().enumerate() {
        let at = format!("{field}.addresses[{i}]");
        match value {
            Value::String(s) => addresses.push(Cidr::parse(s).map_err(|why| Invalid { field: at, why })?),
            other => return invalid(&at, format!("{} is not an address like 10.0.2.50/24", show(other))),
        }
    }
    let mut routes = Vec::new();
    for (i, value) in list(map.get("routes"), &format!("{field}.routes"))?.iter().enumerate() {
        let at = format!("{field}.routes[{i}]");
        let route = mapping(value, &at)?;
        known_keys(route, &at, &["network", "gateway", "metric"], ignored);
        let network = match string(route.get("network"), &format!("{at}.network"))? {
            Some(s) => Cidr::parse(&s).map_err(|why| Invalid { field: format!("{at}.network"), why })?,
            None => Cidr { address: Ipv4Addr::UNSPECIFIED, prefix: 0 },
        };
        let gateway = match route.get("gateway") {
            Some(g) => Some(ipv4(g, &format!("{at}.gateway"))?),
            None => None,
        };
        let metric = match route.get("metric") {
            Some(Value::Number(n)) => match n.as_u64().and_then(|m| u32::try_from(m).ok()) {
                Some(m) => m,
                None => return invalid(&format!("{at}.metric"), format!("{n} is not a metric 0-4294967295")),
            },
            Some(other) => return invalid(&format!("{at}.metric"), format!("{} is not a number", show(other))),
            None => 1024,
        };
        if gateway.is_none() && network.prefix == 0 {
            return invalid(&at, "a default route needs a gateway");
        }
        routes.push(Route { network, gateway, metric });
    }
    let dhcp = boolean(map.get("dhcp"), &format!("{field}.dhcp"))?.unwrap_or(addresses.is_empty());
    let mtu = match map.get("mtu") {
        Some(Value::Number(n)) => match n.as_u64() {
            Some(m) if (68..=65535).contains(&m) => Some(m as u32),
            _ => return invalid(&format!("{field}.mtu"), format!("{n} is not an MTU 68-65535")),
        },
        Some(other) => return invalid(&format!("{field}.mtu"), format!("{} is not a number", show(other))),
        None => None,
    };
    Ok(Interface { name, dhcp, addresses, routes, mtu })
}

fn file(value: &Value, field: &str, ignored: &mut Vec<String>) -> Checked<File> {
    let map = mapping(value, field)?;
    known_keys(map, field, &["path", "content", "permissions", "op"], ignored);
    let path = match string(map.get("path"), &format!("{field}.path"))? {
        Some(p) => p,
        None => return invalid(&format!("{field}.path"), "missing"),
    };
    if !crate::parse::is_clean_abs_path(&path) || !path.starts_with("/var/") {
        return invalid(
            &format!("{field}.path"),
            format!("{path:?} must be a clean path under /var/ (the root is read-only)"),
        );
    }
    let content = string(map.get("content"), &format!("{field}.content"))?.unwrap_or_default();
    // YAML 1.2 reads 0644 as 644 and Talos (Go, YAML 1.1) as octal: only unambiguous spellings are taken.
    let permissions = match map.get("permissions") {
        None => 0o644,
        Some(Value::String(s)) => match parse_octal(s) {
            Some(p) if p <= 0o777 => p,
            _ => return invalid(&format!("{field}.permissions"), format!("{s:?} is not a mode like 0o644")),
        },
        Some(Value::Number(n)) => match n.as_u64() {
            // A decimal that is a valid mode: Go's decoder would have read 0644 as 420.
            Some(p) if p <= 0o777 => p as u32,
            _ => return invalid(&format!("{field}.permissions"), format!("{n} is not a mode (write it as \"0o644\")")),
        },
        Some(other) => return invalid(&format!("{field}.permissions"), format!("{} is not a mode", show(other))),
    };
    let op = match string(map.get("op"), &format!("{field}.op"))?.as_deref() {
        None | Some("create") => FileOp::Create,
        Some("append") => FileOp::Append,
        Some("overwrite") => FileOp::Overwrite,
        Some(other) => return invalid(&format!("{field}.op"), format!("{other:?} is not create, append or overwrite")),
    };
    Ok(File { path, content, permissions, op })
}

/// Writes the config's files (all under /var, checked by the parser); (path, error) for each.
pub fn apply_files(files: &[File]) -> Vec<(String, Option<String>)> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    files
        .iter()
        .map(|f| {
            let result = (|| -> std::io::Result<()> {
                if let Some(parent) = std::path::Path::new(&f.path).parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut options = std::fs::OpenOptions::new();
                match f.op {
                    FileOp::Create => options.write(true).create_new(true).mode(f.permissions),
                    FileOp::Overwrite => options.write(true).truncate(true),
                    FileOp::Append => options.append(true),
                };
                let mut file = options.open(&f.path)?;
                let content = if f.op == FileOp::Append { format!("\n{}", f.content) } else { f.content.clone() };
                file.write_all(content.as_bytes())?;
                file.set_permissions(std::fs::Permissions::from_mode(f.permissions))
            })();
            (f.path.clone(), result.err().map(|e| e.to_string()))
        })
        .collect()
}

/// `0o644`, `0644` or `644` as octal.
fn parse_octal(text: &str) -> Option<u32> {
    let digits = text.trim().trim_start_matches("0o").trim_start_matches("0O");
    u32::from_str_radix(digits, 8).ok()
}

fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn known_keys(map: &Mapping, at: &str, known: &[&str], ignored: &mut Vec<String>) {
    for key in map.keys() {
        let name = match key {
            Value::String(s) => s.clone(),
            other => show(other),
        };
        if !known.contains(&name.as_str()) {
            ignored.push(if at.is_empty() { name } else { format!("{at}.{name}") });
        }
    }
}

fn mapping<'a>(value: &'a Value, field: &str) -> Checked<&'a Mapping> {
    match value {
        Value::Mapping(map) => Ok(map),
        other => invalid(field, format!("{} is not a mapping", show(other))),
    }
}

fn list<'a>(value: Option<&'a Value>, field: &str) -> Checked<&'a [Value]> {
    match value {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Sequence(items)) => Ok(items),
        Some(other) => invalid(field, format!("{} is not a list", show(other))),
    }
}

fn string(value: Option<&Value>, field: &str) -> Checked<Option<String>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => invalid(field, format!("{} is not a string", show(other))),
    }
}

fn boolean(value: Option<&Value>, field: &str) -> Checked<Option<bool>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => invalid(field, format!("{} is not true or false", show(other))),
    }
}

fn ipv4(value: &Value, field: &str) -> Checked<Ipv4Addr> {
    match value {
        Value::String(s) => s.parse().or_else(|_| invalid(field, format!("{s:?} is not an IPv4 address"))),
        other => invalid(field, format!("{} is not an IPv4 address", show(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTROL_PLANE: &str = "version: v1alpha1
debug: false
machine:
  type: controlplane
  token: abc
  network:
    hostname: cp-1
    nameservers: [10.0.2.3]
    searchDomains: [cluster.test, example.org]
    interfaces:
      - interface: eth0
        addresses: [10.0.2.50/24]
        routes:
          - network: 0.0.0.0/0
            gateway: 10.0.2.2
  time:
    servers: [10.0.2.2, time.example.org]
  sysctls:
    net.core.somaxconn: 65535
    vm.swappiness: \"1\"
  files:
    - path: /var/etc/motd
      content: hello
      permissions: \"0o600\"
      op: overwrite
  kubelet:
    image: x
cluster:
  name: c
";

    #[test]
    fn a_talos_control_plane_config_applies_what_this_node_knows() {
        let config = parse(CONTROL_PLANE).unwrap();
        assert_eq!(config.role, Role::ControlPlane);
        assert_eq!(config.hostname.as_deref(), Some("cp-1"));
        assert_eq!(config.nameservers, [Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(config.search_domains, ["cluster.test", "example.org"]);
        let eth0 = &config.interfaces[0];
        assert_eq!((eth0.name.as_str(), eth0.dhcp), ("eth0", false), "addresses and no dhcp key: static");
        assert_eq!(eth0.addresses[0].to_string(), "10.0.2.50/24");
        assert_eq!(eth0.addresses[0].netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(eth0.routes[0].gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(eth0.routes[0].metric, 1024);
        assert_eq!(config.time_servers, ["10.0.2.2", "time.example.org"]);
        assert_eq!(
            config.sysctls,
            [("net.core.somaxconn".into(), "65535".into()), ("vm.swappiness".into(), "1".into())]
        );
        assert_eq!(config.files[0].permissions, 0o600);
        assert_eq!(config.files[0].op, FileOp::Overwrite);
        assert_eq!(config.ignored, ["cluster", "debug", "machine.kubelet", "machine.token"]);
    }

    #[test]
    fn a_bare_worker_gets_dhcp() {
        let config = parse("version: v1alpha1\nmachine:\n  type: worker\n").unwrap();
        assert_eq!(config.role, Role::Worker);
        assert!(config.interfaces.is_empty() && config.hostname.is_none());
        let config =
            parse("version: v1alpha1\nmachine:\n  type: storage\n  network:\n    interfaces: [{interface: eth0}]\n")
                .unwrap();
        assert!(config.interfaces[0].dhcp);
    }

    #[test]
    fn wrong_values_name_the_field_and_why() {
        let cases = [
            ("version: v1\nmachine: {type: worker}\n", "version", "v1alpha1"),
            ("version: v1alpha1\n", "machine", "missing"),
            ("version: v1alpha1\nmachine: {type: boss}\n", "machine.type", "\"boss\""),
            (
                "version: v1alpha1\nmachine:\n  type: worker\n  network:\n    interfaces:\n      - interface: eth0\n        addresses: [10.0.2.300/24]\n",
                "machine.network.interfaces[0].addresses[0]",
                "not an IPv4 address",
            ),
            (
                "version: v1alpha1\nmachine:\n  type: worker\n  network: {hostname: \"bad_name\"}\n",
                "machine.network.hostname",
                "not a host name",
            ),
            (
                "version: v1alpha1\nmachine:\n  type: worker\n  files: [{path: /etc/passwd, content: x}]\n",
                "machine.files[0].path",
                "under /var/",
            ),
            (
                "version: v1alpha1\nmachine:\n  type: worker\n  network:\n    interfaces: [{interface: eth0, routes: [{network: 0.0.0.0/0}]}]\n",
                "machine.network.interfaces[0].routes[0]",
                "needs a gateway",
            ),
            ("version: v1alpha1\nmachine: [1]\n", "machine", "not a mapping"),
            (
                "version: v1alpha1\nmachine:\n  type: worker\n  network: {searchDomains: [\"not a domain\"]}\n",
                "machine.network.searchDomains[0]",
                "not a domain name",
            ),
            ("{{{", "(document)", "not YAML"),
        ];
        for (text, field, why) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.field, field, "{text}");
            assert!(err.why.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn files_are_created_appended_and_overwritten_with_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("machined-files-{}", std::process::id()));
        let path = dir.join("sub/note").to_string_lossy().into_owned();
        let file = |op, content: &str| File { path: path.clone(), content: content.into(), permissions: 0o600, op };
        let results = apply_files(&[file(FileOp::Create, "a"), file(FileOp::Create, "b")]);
        assert_eq!(results[0].1, None);
        assert!(results[1].1.as_deref().unwrap().contains("exists"), "{results:?}");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        apply_files(&[file(FileOp::Append, "c")]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nc");
        apply_files(&[file(FileOp::Overwrite, "d")]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "d");
        let missing = apply_files(&[File {
            path: dir.join("none").to_string_lossy().into_owned(),
            ..file(FileOp::Overwrite, "x")
        }]);
        assert!(missing[0].1.is_some(), "overwrite needs an existing file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

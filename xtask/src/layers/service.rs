//! Talos's extension service specs (`/usr/local/etc/containers/<name>.yaml`) and their translation for
//! machined, which reads no YAML: `<name>.machined` beside the spec, one `key=value` per line:
//! `name=`, `root=`, `entrypoint=`, `arg=` (one per argument), `depends-path=` (one per path
//! dependency), `restart=always|never`, `bind=<src>:<dst>[:rw]` (one per mount), `create-file=`.

use super::yaml;
use crate::spec::names::valid_name;
use crate::spec::protocol::SERVICE_ROOTS;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSpec {
    name: String,
    container: ServiceContainer,
    #[serde(default)]
    depends: Vec<ServiceDependency>,
    restart: Option<String>,
}

/// The part of Talos's container spec machined can honour; anything else (environment, security
/// options) is refused by name rather than silently dropped.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceContainer {
    entrypoint: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    mounts: Vec<ServiceMount>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceDependency {
    path: Option<String>,
    service: Option<String>,
    network: Option<serde_yaml_ng::Value>,
    time: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceMount {
    source: String,
    destination: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    options: Vec<String>,
}

/// Mount options that mean something for a bind mount machined makes; `rw` makes it writable.
const MOUNT_OPTIONS: [&str; 9] = ["bind", "rbind", "ro", "rw", "rshared", "rslave", "rprivate", "shared", "private"];

/// One extension service, checked and translated.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    /// The spec's source file, for errors.
    pub source: PathBuf,
    /// Absolute path of the entrypoint inside the service's root.
    pub entrypoint: String,
    /// Mount destinations inside the service's root (they must exist in the read-only layer).
    pub destinations: Vec<String>,
    /// The `<name>.machined` text.
    pub machined: String,
}

impl Service {
    /// The service's root inside the layer, relative: usr/local/lib/containers/<name>.
    pub fn root(&self) -> PathBuf {
        Path::new(SERVICE_ROOTS.trim_start_matches('/')).join(&self.name)
    }
}

/// A value for machined's `key=value` lines: one line, no NUL.
pub fn line_value<'a>(value: &'a str, what: &str) -> Result<&'a str> {
    if value.contains(['\n', '\r', '\0']) {
        bail!("{what} {value:?} contains a line break or NUL");
    }
    Ok(value)
}

/// An absolute, `..`-free path usable in a `bind=src:dst` line.
pub fn bind_path<'a>(value: &'a str, what: &str) -> Result<&'a str> {
    line_value(value, what)?;
    if !value.starts_with('/') || value.contains(':') || value.split('/').any(|p| p == "..") {
        bail!("{what} {value:?} must be an absolute path without ':' or '..'");
    }
    Ok(value)
}

/// Parses a Talos service spec and translates it for machined. `label` names the extension.
pub fn parse_service(text: &str, path: &Path, label: &str) -> Result<Service> {
    let spec: ServiceSpec = serde_yaml_ng::from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "{label}: {} (machined runs the subset of Talos's service spec it can honour)",
            yaml::error(path, &e)
        )
    })?;
    let at = |key: &str| yaml::at(label, path, text, key);
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    if !valid_name(&spec.name) || spec.name != stem {
        bail!(
            "{}: field `name`: {:?} must be the file's name ({stem:?}), lowercase letters, digits, '-' and '_'",
            at("name"),
            spec.name
        );
    }
    let mut lines = vec![format!("name={}", spec.name), format!("root={SERVICE_ROOTS}/{}", spec.name)];

    // Talos resolves the entrypoint against the container's root; machined gets it absolute.
    let raw = spec.container.entrypoint.trim();
    let relative = raw.trim_start_matches("./").trim_start_matches('/');
    if relative.is_empty() || relative.split('/').any(|p| p == ".." || p.is_empty()) {
        bail!("{}: field `container.entrypoint`: {raw:?} must be a path inside the service's root", at("entrypoint"));
    }
    let entrypoint = format!("/{relative}");
    lines.push(format!(
        "entrypoint={}",
        line_value(&entrypoint, "container.entrypoint").with_context(|| at("entrypoint"))?
    ));
    for arg in &spec.container.args {
        lines.push(format!("arg={}", line_value(arg, "an argument").with_context(|| at("args"))?));
    }
    for dependency in &spec.depends {
        match dependency {
            ServiceDependency { path: Some(dep), service: None, network: None, time: None } => {
                bind_path(dep, "depends path").with_context(|| at("depends"))?;
                lines.push(format!("depends-path={dep}"));
            }
            ServiceDependency { path: None, service: Some(other), .. } => bail!(
                "{}: field `depends`: a dependency on service {other:?} is not supported by machined, which \
                 starts extension services side by side; depend on a path the other service creates",
                at("depends")
            ),
            ServiceDependency { path: None, service: None, network: Some(_), time: None } => bail!(
                "{}: field `depends`: network dependencies are not supported by machined; depend on a path",
                at("depends")
            ),
            ServiceDependency { path: None, service: None, network: None, time: Some(_) } => bail!(
                "{}: field `depends`: time dependencies are not supported by machined; depend on a path",
                at("depends")
            ),
            _ => bail!(
                "{}: field `depends`: each entry names exactly one of path, service, network, time",
                at("depends")
            ),
        }
    }
    let restart = match spec.restart.as_deref() {
        Some("always") => "always",
        Some("never") => "never",
        Some(other) => {
            bail!("{}: field `restart`: {other:?} is not supported by machined (always or never)", at("restart"))
        }
        None => bail!("{}: field `restart` is required (always or never)", at("container")),
    };
    lines.push(format!("restart={restart}"));
    let mut destinations = Vec::new();
    for mount in &spec.container.mounts {
        let what = format!("mount {} -> {}", mount.source, mount.destination);
        if mount.kind.as_deref().is_some_and(|k| k != "bind") {
            bail!("{}: {what}: type {:?}: machined makes bind mounts only", at("mounts"), mount.kind);
        }
        if let Some(unknown) = mount.options.iter().find(|o| !MOUNT_OPTIONS.contains(&o.as_str())) {
            bail!(
                "{}: {what}: option {unknown:?} is not supported by machined (known: {})",
                at("mounts"),
                MOUNT_OPTIONS.join(", ")
            );
        }
        let writable = mount.options.iter().any(|o| o == "rw");
        if writable && mount.options.iter().any(|o| o == "ro") {
            bail!("{}: {what}: options say both ro and rw", at("mounts"));
        }
        let source = bind_path(&mount.source, "mount source").with_context(|| at("mounts"))?;
        let destination = bind_path(&mount.destination, "mount destination").with_context(|| at("mounts"))?;
        lines.push(format!("bind={source}:{destination}{}", if writable { ":rw" } else { "" }));
        destinations.push(destination.to_string());
    }
    let mut machined = lines.join("\n");
    machined.push('\n');
    Ok(Service { name: spec.name, source: path.to_path_buf(), entrypoint, destinations, machined })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_translate_to_machined_lines() {
        let text = "name: agent\ndepends:\n  - path: /dev/virtio-ports/x\ncontainer:\n  entrypoint: ./usr/sbin/agent\n  \
                    args: [--a, -b=1]\n  mounts:\n    - source: /dev\n      destination: /dev\n      type: bind\n      \
                    options: [rbind, rshared, rw]\n    - source: /lib\n      destination: /lib\n      options: [bind, ro]\n\
                    restart: always\n";
        let service = parse_service(text, Path::new("agent.yaml"), "extension e").unwrap();
        assert_eq!(
            service.machined,
            "name=agent\nroot=/usr/local/lib/containers/agent\nentrypoint=/usr/sbin/agent\narg=--a\narg=-b=1\n\
             depends-path=/dev/virtio-ports/x\nrestart=always\nbind=/dev:/dev:rw\nbind=/lib:/lib\n"
        );
        let refused = |text: &str| parse_service(text, Path::new("agent.yaml"), "extension e").unwrap_err().to_string();
        let base = "name: agent\ncontainer:\n  entrypoint: /x\n";
        assert!(refused(&format!("{base}restart: untilSuccess\n")).contains("field `restart`"));
        assert!(refused(base).contains("field `restart` is required"));
        assert!(
            refused(&format!("{base}  environment: [A=1]\nrestart: always\n")).contains("unknown field `environment`")
        );
        assert!(refused(&format!("{base}depends:\n  - service: cri\nrestart: always\n")).contains("service \"cri\""));
        assert!(refused("name: other\ncontainer:\n  entrypoint: /x\nrestart: always\n").contains("field `name`"));
    }
}

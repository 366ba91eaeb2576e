//! Talos's extension service specs (`/usr/local/etc/containers/<name>.yaml`), read by machined's own
//! parser (`machined/src/service_spec.rs`, included below), so the build, `check-extension` and the
//! node say the same about the same file. machined reads the yaml itself at boot; nothing is
//! translated.

use std::path::{Path, PathBuf};

#[path = "../../../machined/src/service_spec.rs"]
#[allow(dead_code)] // machined uses more of it than the builder does
pub mod spec;

pub use spec::ServiceSpec;

/// One extension service, parsed and checked.
#[derive(Clone, Debug)]
pub struct Service {
    /// The spec's source file, for errors.
    pub source: PathBuf,
    pub spec: ServiceSpec,
    /// Keys Talos would ignore, one line each, naming file, line and key.
    pub warnings: Vec<String>,
}

impl Service {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The extension services it waits for (`service: ext-<name>`), by name.
    pub fn depends_on_extensions(&self) -> Vec<&str> {
        self.spec
            .depends
            .iter()
            .filter_map(|d| match d {
                spec::Dependency::Service(id) => id.strip_prefix("ext-"),
                _ => None,
            })
            .collect()
    }
}

/// Parses a Talos service spec. Err lists every problem, one a line, each naming the file, the line
/// and the field, as machined would print them.
pub fn parse_service(text: &str, path: &Path) -> Result<Service, Vec<String>> {
    let file = path.display().to_string();
    match spec::parse(text) {
        Ok(parsed) => Ok(Service {
            source: path.to_path_buf(),
            spec: parsed.spec,
            warnings: parsed.warnings.iter().map(|w| format!("warning: {}", w.at(&file))).collect(),
        }),
        Err(problems) => Err(problems.iter().map(|p| p.at(&file)).collect()),
    }
}

pub fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_and_warnings_name_the_file_line_and_field() {
        let text = "name: agent\ncolour: red\ndepends:\n  - service: ext-other\ncontainer:\n  entrypoint: 7\nrestart: sometimes\n";
        let problems = parse_service(text, Path::new("x/agent.yaml")).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0], "x/agent.yaml:6: field `container.entrypoint`: 7 is not a string");
        assert!(problems[1].starts_with("x/agent.yaml:7: field `restart`"), "{problems:?}");
        let good = text.replace('7', "./agent").replace("sometimes", "always");
        let service = parse_service(&good, Path::new("x/agent.yaml")).unwrap();
        assert_eq!(service.name(), "agent");
        assert_eq!(service.depends_on_extensions(), ["other"]);
        assert!(service.warnings[0].starts_with("warning: x/agent.yaml:2: field `colour`"), "{:?}", service.warnings);
    }
}

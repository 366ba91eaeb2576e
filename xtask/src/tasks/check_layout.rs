//! `cargo xtask check-layout`: the architecture invariant, as a task that is also a test. The stages
//! of xtask/src follow the data flow; a stage uses util/, spec/ and earlier stages, never a later one;
//! only tasks/ may use anything, and nothing but main.rs uses tasks/; and no file imports, directly or
//! round a loop of others, a file that imports it. Test modules are left out: a test may use anything.

use super::Global;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The stages in the order data flows through them; main.rs comes last.
pub const STAGES: [&str; 13] = [
    "util",
    "spec",
    "archive",
    "rootfs",
    "layers",
    "initramfs",
    "uki",
    "disk",
    "image",
    "sign",
    "boot",
    "upload",
    "tasks",
];

/// One import against the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Relative to the source directory.
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// A `crate::` or `super::` reference in a file's non-test code.
struct Reference {
    line: usize,
    /// Module path segments from the crate root, e.g. ["archive", "lock", "LockInputs"].
    path: Vec<String>,
}

fn stage_of(file: &Path) -> &str {
    let mut parts = file.components();
    match (parts.next(), parts.next()) {
        (Some(dir), Some(_)) => dir.as_os_str().to_str().unwrap_or(""),
        _ => "main",
    }
}

fn rank(stage: &str) -> Option<usize> {
    if stage == "main" {
        return Some(STAGES.len());
    }
    STAGES.iter().position(|s| *s == stage)
}

/// The module path of a file: util/cmd.rs → [util, cmd]; util/mod.rs → [util]; main.rs → [].
fn module_path(file: &Path) -> Vec<String> {
    let mut parts: Vec<String> = file.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" && stem != "main" {
            parts.push(stem.to_string());
        }
    }
    parts
}

/// The code before the file's test module, without comments, each `use` statement joined on its
/// first line's number.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    let all: Vec<&str> = text.lines().collect();
    for (index, raw) in all.iter().enumerate() {
        let trimmed = raw.trim();
        if trimmed == "#[cfg(test)]"
            && all[index + 1..].iter().find(|l| !l.trim().is_empty()).is_some_and(|l| {
                let l = l.trim_start();
                l.starts_with("mod ") || l.starts_with("pub mod ")
            })
        {
            break;
        }
        let code = match trimmed.find("//") {
            Some(at) => &trimmed[..at],
            None => trimmed,
        };
        if let Some((start, mut statement)) = pending.take() {
            statement.push(' ');
            statement.push_str(code);
            if code.contains(';') {
                lines.push((start, statement));
            } else {
                pending = Some((start, statement));
            }
            continue;
        }
        let is_use = code.starts_with("use ") || code.starts_with("pub use ");
        if is_use && !code.contains(';') {
            pending = Some((index + 1, code.to_string()));
        } else {
            lines.push((index + 1, code.to_string()));
        }
    }
    lines
}

/// Splits `a::{b, c::{d, e}}` at the top-level commas of its braces into full paths.
fn expand(prefix: &[String], text: &str, out: &mut Vec<Vec<String>>) {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(prefix, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(prefix, &inner[start..], out);
        return;
    }
    if text.is_empty() {
        return;
    }
    match text.split_once("::") {
        Some((head, rest)) => {
            let mut path = prefix.to_vec();
            path.push(head.trim().to_string());
            expand(&path, rest, out);
        }
        None => {
            let name = text.split_whitespace().next().unwrap_or_default();
            let mut path = prefix.to_vec();
            if name != "self" && name != "*" {
                path.push(name.to_string());
            }
            out.push(path);
        }
    }
}

/// The `crate::`/`super::` paths a line refers to, resolved from the crate root.
fn references_in(line: usize, code: &str, module: &[String], out: &mut Vec<Reference>) {
    for (keyword, base) in [("crate::", Vec::new()), ("super::", module[..module.len().saturating_sub(1)].to_vec())] {
        let mut from = 0;
        while let Some(at) = code[from..].find(keyword) {
            let start = from + at;
            from = start + keyword.len();
            // `crate::` inside a longer identifier (e.g. `my_crate::`) is not one.
            if code[..start].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &code[from..];
            let end = if rest.starts_with('{') {
                let mut depth = 0;
                rest.char_indices()
                    .find(|&(_, c)| {
                        match c {
                            '{' => depth += 1,
                            '}' => depth -= 1,
                            _ => {}
                        }
                        depth == 0
                    })
                    .map_or(rest.len(), |(i, _)| i + 1)
            } else {
                rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len())
            };
            let mut paths = Vec::new();
            expand(&base, rest[..end].trim_end_matches(':'), &mut paths);
            out.extend(paths.into_iter().filter(|p| !p.is_empty()).map(|path| Reference { line, path }));
        }
    }
}

/// The file a module path lands in: the longest prefix that is a file of `src`.
fn resolve(src: &Path, path: &[String]) -> Option<PathBuf> {
    for len in (1..=path.len()).rev() {
        let base: PathBuf = path[..len].iter().collect();
        for candidate in [base.with_extension("rs"), base.join("mod.rs")] {
            if src.join(&candidate).is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Every violation in the crate rooted at `src` (xtask/src).
pub fn check(src: &Path) -> Result<Vec<Violation>> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(src).sort_by_file_name() {
        let entry = entry.with_context(|| format!("walking {}", src.display()))?;
        if entry.file_type().is_file() && entry.path().extension().is_some_and(|e| e == "rs") {
            files.push(entry.path().strip_prefix(src)?.to_path_buf());
        }
    }
    let mut violations = Vec::new();
    // file → (imported file → first line importing it)
    let mut graph: BTreeMap<PathBuf, BTreeMap<PathBuf, usize>> = BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(src.join(file)).with_context(|| format!("reading {}", file.display()))?;
        let stage = stage_of(file);
        let Some(own_rank) = rank(stage) else {
            violations.push(Violation {
                file: file.clone(),
                line: 1,
                message: format!("{stage}/ is not a stage of the data flow ({})", STAGES.join(" → ")),
            });
            continue;
        };
        let module = module_path(file);
        let mut references = Vec::new();
        for (line, code) in code_lines(&text) {
            references_in(line, &code, &module, &mut references);
        }
        let edges = graph.entry(file.clone()).or_default();
        for reference in references {
            let Some(target) = resolve(src, &reference.path) else { continue };
            if &target == file {
                continue;
            }
            let target_stage = stage_of(&target);
            let shown = format!("crate::{}", reference.path.join("::"));
            let allowed = match (stage, target_stage) {
                (_, "tasks") => stage == "tasks" || stage == "main",
                ("util", other) => other == "util",
                _ => rank(target_stage).is_some_and(|r| r <= own_rank),
            };
            if !allowed {
                let why = match target_stage {
                    "tasks" => "nothing but main.rs uses tasks/".to_string(),
                    _ if stage == "util" => "util/ is the bottom layer and uses nothing else of the crate".to_string(),
                    _ => format!("{target_stage}/ comes after {stage}/ in the data flow ({})", STAGES.join(" → ")),
                };
                violations.push(Violation {
                    file: file.clone(),
                    line: reference.line,
                    message: format!("{stage}/ uses {shown}: {why}"),
                });
            }
            edges.entry(target).or_insert(reference.line);
        }
    }
    violations.extend(cycles(&graph));
    Ok(violations)
}

/// Each import cycle once, reported at its first file with every hop's file and line.
fn cycles(graph: &BTreeMap<PathBuf, BTreeMap<PathBuf, usize>>) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut reported: BTreeSet<BTreeSet<PathBuf>> = BTreeSet::new();
    for start in graph.keys() {
        // Depth-first from `start`, looking for a path back to it.
        let mut stack: Vec<(PathBuf, Vec<(PathBuf, usize)>)> = vec![(start.clone(), Vec::new())];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for (next, line) in graph.get(&node).into_iter().flatten() {
                let mut hops = path.clone();
                hops.push((node.clone(), *line));
                if next == start {
                    let members: BTreeSet<PathBuf> = hops.iter().map(|(f, _)| f.clone()).collect();
                    if reported.insert(members) {
                        let chain: Vec<String> = hops.iter().map(|(f, l)| format!("{}:{l}", f.display())).collect();
                        found.push(Violation {
                            file: start.clone(),
                            line: hops[0].1,
                            message: format!("import cycle: {} → back to {}", chain.join(" → "), start.display()),
                        });
                    }
                } else if seen.insert(next.clone()) {
                    stack.push((next.clone(), hops));
                }
            }
        }
    }
    found
}

fn source_dir() -> PathBuf {
    crate::util::paths::repo_root().join("xtask/src")
}

pub fn run(global: &Global) -> Result<()> {
    let src = source_dir();
    let violations = check(&src)?;
    if global.json {
        let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
        println!("{}", serde_json::json!({ "source": src, "violations": list }));
    }
    if !violations.is_empty() {
        let list: Vec<String> = violations.iter().map(|v| format!("xtask/src/{v}")).collect();
        bail!("the layout of xtask/src breaks its rules ({} problems):\n  {}", list.len(), list.join("\n  "));
    }
    if !global.json {
        println!("xtask/src follows the data flow: {}, no import cycles", STAGES.join(" → "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtask_follows_the_data_flow_without_cycles() {
        let violations = check(&source_dir()).unwrap();
        let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
        assert!(list.is_empty(), "layout violations:\n  {}", list.join("\n  "));
    }

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    #[test]
    fn an_import_against_the_flow_is_named_with_file_and_line() {
        let dir = tree(&[
            ("main.rs", "mod rootfs;\nmod layers;\n"),
            ("rootfs/mod.rs", "pub mod tree;\n"),
            ("rootfs/tree.rs", "//! doc\n\nuse crate::layers::extension::Extension;\nfn f() {}\n"),
            ("layers/mod.rs", "pub mod extension;\n"),
            ("layers/extension.rs", "use crate::rootfs::tree;\npub struct Extension;\n"),
        ]);
        let violations = check(dir.path()).unwrap();
        let against: Vec<&Violation> = violations.iter().filter(|v| v.message.contains("comes after")).collect();
        assert_eq!(against.len(), 1, "{violations:?}");
        assert_eq!(against[0].file, Path::new("rootfs/tree.rs"));
        assert_eq!(against[0].line, 3);
        assert!(against[0].message.contains("crate::layers::extension::Extension"), "{}", against[0]);
        let cycle: Vec<&Violation> = violations.iter().filter(|v| v.message.contains("import cycle")).collect();
        assert_eq!(cycle.len(), 1, "{violations:?}");
        assert!(cycle[0].message.contains("rootfs/tree.rs:3") && cycle[0].message.contains("layers/extension.rs:1"));
    }

    #[test]
    fn grouped_multi_line_super_and_inline_paths_are_seen_and_tests_are_not() {
        let dir = tree(&[
            ("util/mod.rs", "pub mod a;\npub mod b;\n"),
            ("util/a.rs", "use super::{\n    b::B,\n};\nfn f() { crate::spec::x(); }\n"),
            ("util/b.rs", "pub struct B;\n#[cfg(test)]\nmod tests {\n    use crate::tasks::T;\n}\n"),
            ("spec/mod.rs", "pub fn x() {}\n"),
            ("tasks/mod.rs", "use crate::{util::a, spec::{self, x}};\n"),
            ("archive/mod.rs", "fn g() { let _ = crate::tasks::run(); }\n"),
        ]);
        let violations = check(dir.path()).unwrap();
        let shown: Vec<String> = violations.iter().map(ToString::to_string).collect();
        assert!(shown.iter().any(|v| v.starts_with("util/a.rs:4: util/ uses crate::spec::x")), "{shown:?}");
        assert!(shown.iter().any(|v| v.starts_with("archive/mod.rs:1: archive/ uses crate::tasks::run")), "{shown:?}");
        assert!(!shown.iter().any(|v| v.contains("util/b.rs")), "the test module was read: {shown:?}");
        assert_eq!(shown.len(), 2, "{shown:?}");
    }
}

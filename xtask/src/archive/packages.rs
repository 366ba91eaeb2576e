//! A binary `Packages` index: deb822 paragraphs, one per package version, reduced to the fields the
//! resolver and the lockfile need. Dependency fields are kept as text and parsed when the resolver
//! reaches a package, because it visits a few hundred of the ~60,000 paragraphs.

use super::version::Relation;
use anyhow::{bail, Context, Result};
use std::borrow::Cow;
use std::collections::HashMap;

/// Debian's Priority field, in apt's order of preference for choosing a provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Required,
    Important,
    Standard,
    Optional,
    Extra,
    Unknown,
}

impl Priority {
    fn parse(text: &str) -> Priority {
        match text {
            "required" => Priority::Required,
            "important" => Priority::Important,
            "standard" => Priority::Standard,
            "optional" => Priority::Optional,
            "extra" => Priority::Extra,
            _ => Priority::Unknown,
        }
    }
}

/// One paragraph of a Packages file.
#[derive(Clone, Debug)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// The package's own Architecture: the index arch or `all`.
    pub architecture: String,
    pub depends: String,
    pub pre_depends: String,
    pub provides: Vec<Atom>,
    pub priority: Priority,
    /// Pool path relative to the mirror root.
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    /// Which Packages file of the index (see [`Index::origin`]) and the line its paragraph starts on.
    pub source: usize,
    pub line: usize,
}

/// One alternative of a dependency: `name[:arch] [(relation version)]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Atom {
    pub name: String,
    pub constraint: Option<(Relation, String)>,
}

impl std::fmt::Display for Atom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.constraint {
            Some((relation, version)) => {
                write!(f, "{} ({} {version})", self.name, relation.as_str())
            }
            None => f.write_str(&self.name),
        }
    }
}

/// A dependency: alternatives separated by `|`, any one of which satisfies it.
pub type Group = Vec<Atom>;

/// Parses one atom; the arch qualifier (`:any`, `:native`, `:amd64`) is dropped, since each index
/// holds exactly one architecture plus `all`.
pub fn parse_atom(text: &str) -> Result<Atom> {
    let text = text.trim();
    let (head, constraint) = match text.split_once('(') {
        Some((head, rest)) => {
            let inner = rest.strip_suffix(')').with_context(|| format!("{text:?}: missing `)`"))?.trim();
            let split = inner.find(|c: char| !"<=>".contains(c)).unwrap_or(inner.len());
            let (relation, version) = inner.split_at(split);
            let version = version.trim();
            if version.is_empty() {
                bail!("{text:?}: version constraint without a version");
            }
            let relation = Relation::parse(relation.trim()).with_context(|| format!("in {text:?}"))?;
            (head.trim(), Some((relation, version.to_string())))
        }
        None => (text, None),
    };
    let name = head.split_once(':').map_or(head, |(name, _arch)| name).trim();
    if name.is_empty() || name.contains(char::is_whitespace) || name.contains(['[', '<']) {
        bail!("{text:?}: not a package name with an optional (relation version)");
    }
    Ok(Atom { name: name.to_string(), constraint })
}

/// Parses a Depends-style field: comma-separated groups of `|`-separated atoms.
pub fn parse_relations(text: &str) -> Result<Vec<Group>> {
    text.split(',')
        .map(str::trim)
        .filter(|group| !group.is_empty())
        .map(|group| group.split('|').map(parse_atom).collect::<Result<Group>>())
        .collect()
}

/// Every package of one architecture across the suite's components, with lookups by name and by
/// provided (virtual) name.
#[derive(Default)]
pub struct Index {
    /// What this index is, for error messages: "bookworm main binary-amd64".
    pub label: String,
    pub packages: Vec<Package>,
    /// The Packages files added, for [`Index::origin`], with the suite each belongs to.
    sources: Vec<(String, String)>,
    by_name: HashMap<String, Vec<usize>>,
    /// Virtual name → (providing package, provided version if the Provides entry is versioned).
    providers: HashMap<String, Vec<(usize, Option<String>)>>,
}

impl Index {
    pub fn new(label: impl Into<String>) -> Index {
        Index { label: label.into(), ..Index::default() }
    }

    /// Adds the paragraphs of one Packages file of `suite`; `source` names it in errors. Files are added
    /// in the spec's suite order, which is how the resolver breaks a tie between two suites carrying
    /// the same version: the earlier suite wins.
    pub fn add_packages_file(&mut self, text: &str, source: &str, suite: &str) -> Result<()> {
        // This runs over ~1.2 million lines per arch in an unoptimised build: no per-line allocation,
        // and fields other than the ten we keep are skipped after a one-byte check.
        let source_id = self.sources.len();
        self.sources.push((source.to_string(), suite.to_string()));
        let mut slots: [Option<Cow<str>>; FIELD_COUNT] = Default::default();
        let mut continued: Option<usize> = None;
        let mut paragraph_start: Option<usize> = None;
        for (number, line) in text.split('\n').chain(std::iter::once("")).enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                if let Some(start) = paragraph_start.take() {
                    let package = paragraph(&mut slots, source, source_id, start)?;
                    self.insert(package);
                }
                continued = None;
                continue;
            }
            paragraph_start.get_or_insert(number + 1);
            let first = line.as_bytes()[0];
            if first == b' ' || first == b'\t' {
                // Continuation lines belong to Description and the like; keep them only for fields we use.
                if let Some(slot) = continued.and_then(|i| slots[i].as_mut()) {
                    let value = slot.to_mut();
                    value.push(' ');
                    value.push_str(line.trim());
                }
                continue;
            }
            continued = None;
            // Every field we keep starts with one of these letters.
            if !matches!(first, b'P' | b'V' | b'A' | b'D' | b'F' | b'S') {
                continue;
            }
            let colon = line
                .find(':')
                .with_context(|| format!("{source} line {}: expected `Field: value`, found {line:?}", number + 1))?;
            let key = &line[..colon];
            if let Some(slot) = FIELDS.iter().position(|field| *field == key) {
                slots[slot] = Some(Cow::Borrowed(line[colon + 1..].trim()));
                continued = Some(slot);
            }
        }
        Ok(())
    }

    /// Where a package's paragraph is: "<Packages URL> line N".
    pub fn origin(&self, package: &Package) -> String {
        let source = self.sources.get(package.source).map_or("Packages", |(label, _)| label.as_str());
        format!("{source} line {}", package.line)
    }

    /// The suite a package's paragraph came from.
    pub fn suite_of(&self, package: &Package) -> &str {
        self.sources.get(package.source).map_or("", |(_, suite)| suite.as_str())
    }

    fn insert(&mut self, package: Package) {
        let position = self.packages.len();
        for provided in &package.provides {
            let version = provided.constraint.as_ref().map(|(_, version)| version.clone());
            self.providers.entry(provided.name.clone()).or_default().push((position, version));
        }
        self.by_name.entry(package.name.clone()).or_default().push(position);
        self.packages.push(package);
    }

    /// All versions of the real package `name`.
    pub fn versions(&self, name: &str) -> impl Iterator<Item = (usize, &Package)> + '_ {
        self.by_name.get(name).into_iter().flatten().map(|&i| (i, &self.packages[i]))
    }

    /// Packages providing the virtual name `name`, with the provided version if any.
    pub fn providers(&self, name: &str) -> impl Iterator<Item = (usize, &Package, Option<&str>)> + '_ {
        self.providers.get(name).into_iter().flatten().map(|(i, version)| (*i, &self.packages[*i], version.as_deref()))
    }

    /// Whether anything in the index has or provides `name`.
    pub fn knows(&self, name: &str) -> bool {
        self.by_name.contains_key(name) || self.providers.contains_key(name)
    }
}

const FIELD_COUNT: usize = 10;
const FIELDS: [&str; FIELD_COUNT] = [
    "Package",
    "Version",
    "Architecture",
    "Depends",
    "Pre-Depends",
    "Provides",
    "Priority",
    "Filename",
    "Size",
    "SHA256",
];

/// Builds a package from the fields of one paragraph, emptying `slots` for the next.
fn paragraph(
    slots: &mut [Option<Cow<str>>; FIELD_COUNT],
    source: &str,
    source_id: usize,
    line: usize,
) -> Result<Package> {
    // Same order as FIELDS.
    let [name, version, architecture, depends, pre_depends, provides, priority, filename, size, sha256] =
        std::mem::take(slots).map(Option::unwrap_or_default);
    let origin = || format!("{source} line {line}");
    for (field, value) in [
        ("Package", &name),
        ("Version", &version),
        ("Architecture", &architecture),
        ("Filename", &filename),
        ("Size", &size),
        ("SHA256", &sha256),
    ] {
        if value.is_empty() {
            bail!("{}: paragraph has no `{field}` field", origin());
        }
    }
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{}: package {name}: field `SHA256`: {sha256:?} is not 64 hex digits", origin());
    }
    let provides = parse_relations(&provides)
        .with_context(|| format!("{}: package {name}: field `Provides`", origin()))?
        .into_iter()
        .flatten()
        .collect();
    let size = size
        .parse()
        .with_context(|| format!("{}: package {name}: field `Size`: {size:?} is not a number", origin()))?;
    Ok(Package {
        name: name.into_owned(),
        version: version.into_owned(),
        architecture: architecture.into_owned(),
        depends: depends.into_owned(),
        pre_depends: pre_depends.into_owned(),
        provides,
        priority: Priority::parse(&priority),
        filename: filename.into_owned(),
        size,
        sha256: sha256.to_ascii_lowercase(),
        source: source_id,
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const SAMPLE: &str = "\
Package: a
Version: 1.0-1
Architecture: amd64
Description: first line
 continuation: with a colon
Depends: b (>= 2), c:any | d
Provides: virt (= 3), other
Priority: optional
Filename: pool/main/a/a/a_1.0-1_amd64.deb
Size: 100
SHA256: 00000000000000000000000000000000000000000000000000000000000000AA

Package: b
Version: 2.0
Architecture: all
Filename: pool/main/b/b/b_2.0_all.deb
Size: 5
SHA256: 1111111111111111111111111111111111111111111111111111111111111111
";

    #[test]
    fn parses_paragraphs_and_relations() {
        let mut index = Index::new("test");
        index.add_packages_file(SAMPLE, "Packages", "bookworm").unwrap();
        assert_eq!(index.packages.len(), 2);
        let a = &index.packages[0];
        assert_eq!(a.sha256, "00000000000000000000000000000000000000000000000000000000000000aa");
        assert_eq!(a.priority, Priority::Optional);
        assert_eq!(index.origin(a), "Packages line 1");
        assert_eq!(index.origin(&index.packages[1]), "Packages line 13");
        let groups = parse_relations(&a.depends).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0][0].to_string(), "b (>= 2)");
        assert_eq!(groups[1].iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), ["c", "d"]);
        assert_eq!(
            index.providers("virt").map(|(_, p, v)| (p.name.as_str(), v)).collect::<Vec<_>>(),
            [("a", Some("3"))]
        );
        assert!(index.knows("other") && index.knows("b") && !index.knows("zzz"));
    }

    #[test]
    fn bad_paragraph_names_origin_and_field() {
        let text = "Package: x\nVersion: 1\nArchitecture: all\nFilename: f\nSize: big\nSHA256: \
                    1111111111111111111111111111111111111111111111111111111111111111\n";
        let err = format!("{:#}", Index::new("t").add_packages_file(text, "Packages.xz", "bookworm").unwrap_err());
        assert!(err.contains("Packages.xz line 1") && err.contains("Size"), "{err}");
        let err = format!("{:#}", parse_relations("a (>= )").unwrap_err());
        assert!(err.contains("a (>= )"), "{err}");
    }
}

//! deb822 paragraphs (apt's .sources files, Release files, machine-readable copyright files): fields
//! `Name: value` with indented continuation lines, paragraphs separated by blank lines, `#` comment
//! lines skipped. The big Packages indexes have their own faster reader (archive/packages.rs).

/// One field. `value` is the first line's text and each continuation line, trimmed, joined by '\n'.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub value: String,
    /// 1-based line of the `Name:` line.
    pub line: usize,
    /// 1-based lines of the continuation lines, in order (the value's second line onwards).
    pub continuation_lines: Vec<usize>,
}

/// One paragraph, fields in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Paragraph {
    /// 1-based line of its first field.
    pub line: usize,
    pub fields: Vec<Field>,
}

impl Paragraph {
    /// The first field named `name` (case-insensitive, as apt and dpkg read them).
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name.eq_ignore_ascii_case(name))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.field(name).map(|f| f.value.as_str())
    }

    /// A field's whitespace-separated words (URIs, Suites, Types), over all its lines.
    pub fn words(&self, name: &str) -> Option<Vec<String>> {
        self.get(name).map(|v| v.split_whitespace().map(str::to_string).collect())
    }
}

/// Every paragraph of `text`. Lines that are neither fields nor continuations are passed over.
pub fn paragraphs(text: &str) -> Vec<Paragraph> {
    let mut out = Vec::new();
    let mut current = Paragraph::default();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            if !current.fields.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(field) = current.fields.last_mut() {
                field.value.push('\n');
                field.value.push_str(line.trim());
                field.continuation_lines.push(number);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            if current.fields.is_empty() {
                current.line = number;
            }
            current.fields.push(Field {
                name: name.trim().to_string(),
                value: value.trim().to_string(),
                line: number,
                continuation_lines: Vec::new(),
            });
        }
    }
    if !current.fields.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_continuations_comments_and_line_numbers() {
        let text = "Types: deb\n# a comment\nURIs:\n http://a.invalid/x\n\tand-more\n\n\nSHA256:\n ab 1 x\n";
        let all = paragraphs(text);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].line, 1);
        assert_eq!(all[0].get("uris"), Some("\nhttp://a.invalid/x\nand-more"));
        assert_eq!(all[0].words("URIs").unwrap(), ["http://a.invalid/x", "and-more"]);
        assert_eq!(all[0].field("URIs").unwrap().continuation_lines, [4, 5]);
        assert_eq!(all[1].line, 8);
        assert_eq!(all[1].get("SHA256"), Some("\nab 1 x"));
        assert!(all[1].get("Types").is_none());
    }
}

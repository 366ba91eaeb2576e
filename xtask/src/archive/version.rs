//! Debian version comparison, as dpkg does it (deb-version(7)): `[epoch:]upstream[-revision]`,
//! compared part by part; within a part, non-digit runs compare with letters before other
//! characters and `~` before everything (even the end), digit runs compare numerically.

use anyhow::{bail, Result};
use std::cmp::Ordering;

/// A relation in a dependency: `<<`, `<=`, `=`, `>=`, `>>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    Less,
    LessOrEqual,
    Equal,
    GreaterOrEqual,
    Greater,
}

impl Relation {
    pub fn parse(text: &str) -> Result<Relation> {
        Ok(match text {
            "<<" => Relation::Less,
            // `<` and `>` are obsolete spellings of `<=` and `>=` (deb-control(5)).
            "<=" | "<" => Relation::LessOrEqual,
            "=" => Relation::Equal,
            ">=" | ">" => Relation::GreaterOrEqual,
            ">>" => Relation::Greater,
            other => bail!("unknown version relation {other:?} (expected <<, <=, =, >= or >>)"),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Relation::Less => "<<",
            Relation::LessOrEqual => "<=",
            Relation::Equal => "=",
            Relation::GreaterOrEqual => ">=",
            Relation::Greater => ">>",
        }
    }

    /// Whether `version <relation> wanted` holds.
    pub fn holds(self, version: &str, wanted: &str) -> bool {
        let order = compare(version, wanted);
        match self {
            Relation::Less => order == Ordering::Less,
            Relation::LessOrEqual => order != Ordering::Greater,
            Relation::Equal => order == Ordering::Equal,
            Relation::GreaterOrEqual => order != Ordering::Less,
            Relation::Greater => order == Ordering::Greater,
        }
    }
}

/// Splits `[epoch:]upstream[-revision]`; a missing epoch is 0 and a missing revision is empty.
fn split(version: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match version.split_once(':') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()) => {
            // An absurdly long epoch saturates rather than failing: order is all we need.
            (epoch.parse().unwrap_or(u64::MAX), rest)
        }
        _ => (0, version),
    };
    match rest.rsplit_once('-') {
        Some((upstream, revision)) => (epoch, upstream, revision),
        None => (epoch, rest, ""),
    }
}

/// dpkg's weight of one non-digit character; `None` is the end of the string.
fn weight(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// dpkg's `verrevcmp`: compares one upstream or revision part.
fn compare_part(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
            let (wa, wb) = (weight(a.get(i).copied()), weight(b.get(j).copied()));
            if wa != wb {
                return wa.cmp(&wb);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_difference = Ordering::Equal;
        while digit(a, i) && digit(b, j) {
            if first_difference == Ordering::Equal {
                first_difference = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        // A longer digit run (after leading zeros) is the larger number.
        if digit(a, i) {
            return Ordering::Greater;
        }
        if digit(b, j) {
            return Ordering::Less;
        }
        if first_difference != Ordering::Equal {
            return first_difference;
        }
    }
    Ordering::Equal
}

/// Compares two Debian versions as dpkg does.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (epoch_a, upstream_a, revision_a) = split(a);
    let (epoch_b, upstream_b, revision_b) = split(b);
    epoch_a
        .cmp(&epoch_b)
        .then_with(|| compare_part(upstream_a.as_bytes(), upstream_b.as_bytes()))
        .then_with(|| compare_part(revision_a.as_bytes(), revision_b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    /// Cases from dpkg's own test suite (lib/dpkg/t/t-version.c) and deb-version(7).
    #[test]
    fn dpkg_cases() {
        let cases = [
            ("1.0", "1.0", Equal),
            ("0:1.0", "1.0", Equal),
            ("1.0-0", "1.0", Equal),
            ("1:0", "0:9", Greater),
            ("1.0", "1.1", Less),
            ("1.2", "1.10", Less),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0~~a", "1.0~~", Greater),
            ("1.0~", "1.0", Less),
            ("1.0a", "1.0", Greater),
            ("1.0+", "1.0a", Greater),
            ("1.0.", "1.0+", Greater),
            ("0001", "1", Equal),
            ("1.0-1", "1.0-2", Less),
            ("1.0-1.1", "1.0-1", Greater),
            ("2.30-3", "2.30-21", Less),
            ("1.2.3-1ubuntu1", "1.2.3-1", Greater),
            ("12.4+deb12u11", "12.4+deb12u2", Greater),
            ("1:1.2-1", "2.0-1", Greater),
            ("7.88.1-10+deb12u12", "7.88.1-10+deb12u5", Greater),
            ("1.0-a", "1.0-1", Greater),
            ("1.0a", "1.0b", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(a, b), want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    /// Cross-checks against dpkg itself (every Debian host has it: it is Essential).
    #[test]
    fn agrees_with_dpkg() {
        assert!(crate::util::cmd::Cmd::exists("dpkg"), "dpkg is missing: this test needs a Debian host");
        let versions = [
            "1.0",
            "1.0-1",
            "1.0-0",
            "1:0.9",
            "1.0~rc1",
            "1.0~~",
            "1.0+b1",
            "1.0.1",
            "1.00",
            "2.36-9+deb12u14",
            "2.36-9+deb12u4",
            "6.1.176-1",
            "6.1.0-50",
            "1.0a",
            "1.0~rc1-1",
            "0:1.0",
        ];
        for a in versions {
            for b in versions {
                let ours = match compare(a, b) {
                    Less => "lt",
                    Equal => "eq",
                    Greater => "gt",
                };
                let holds = crate::util::cmd::cmd("dpkg").args(["--compare-versions", a, ours, b]).run().is_ok();
                assert!(holds, "we say {a} {ours} {b}, dpkg disagrees");
            }
        }
    }

    #[test]
    fn revision_splits_at_last_hyphen() {
        assert_eq!(split("1:2.3-4-5"), (1, "2.3-4", "5"));
        assert_eq!(split("2.3"), (0, "2.3", ""));
    }

    #[test]
    fn relations() {
        assert!(Relation::parse(">=").unwrap().holds("1.1", "1.0"));
        assert!(Relation::parse("<<").unwrap().holds("1.0~rc1", "1.0"));
        assert!(!Relation::parse(">>").unwrap().holds("1.0", "1.0"));
        assert!(Relation::parse("=").unwrap().holds("0:1.0", "1.0"));
        assert!(Relation::parse("<=").unwrap().holds("1.0", "1.0"));
        assert!(Relation::parse("!=").is_err());
    }
}

//! The `[generate]` table of a topology file, read into a [`Fabric`] with every mistake
//! reported at its own key rather than at the table.
//!
//! [`Fabric`] is an internally tagged serde enum (`kind = "fat-tree"`, …): to find the tag,
//! serde buffers the whole table and then reads the variant from that buffer, which keeps
//! no positions, so its errors (`invalid type: string "four", expected u32`, `unknown field
//! `hostz``) would only know where the table starts. When reading fails, the key to blame
//! is found by elimination on the parsed table, which keeps every key's and value's span:
//! the first key (depth first, in the table's order) whose removal makes the error go away
//! or change is the one the error is about; within a nested table (`[generate.host]`) the
//! search goes on inside it. Errors about the tag itself (an unknown `kind`) are those that
//! no other key explains; a missing key is the table's fault and stays at its header.
//! What the generator then refuses in a fabric that reads (an odd radix) names its key
//! first, and [`blame`] finds that key's value.
//!
//! Limits: the search only runs on an error and tries at most [`MAX_TRIES`] removals, each
//! one read of the (small) table; past that the error stays at the table.

use std::ops::Range;

use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use crate::gen::Fabric;

/// The key that names the variant of [`Fabric`].
const TAG: &str = "kind";

/// Most removals tried to find the key an error is about (a real table has a dozen keys).
pub(crate) const MAX_TRIES: usize = 256;

/// A mistake in the `[generate]` table: where it is and what it is.
#[derive(Debug, PartialEq)]
pub(crate) struct FabricError {
    /// Byte range of the key (unknown keys) or value (bad values) to blame, or of the table.
    pub span: Range<usize>,
    pub message: String,
}

/// Reads `table`, the value of the document's `generate` key.
pub(crate) fn read_fabric(table: &Spanned<DeValue<'_>>) -> Result<Fabric, FabricError> {
    let error = match deserialize(table.clone()) {
        Ok(fabric) => return Ok(fabric),
        Err(e) => e,
    };
    let message = error.message().trim().to_string();
    let whole = || FabricError {
        span: error.span().unwrap_or_else(|| table.span()),
        message: format!("[generate] {message}"),
    };
    let DeValue::Table(entries) = table.get_ref() else {
        return Err(whole());
    };
    if let Some(missing) = message.strip_prefix("missing field ") {
        let message = if missing == format!("`{TAG}`") {
            format!("[generate] has no `{TAG}`; {}", kinds())
        } else {
            format!("[generate] {message}")
        };
        return Err(FabricError {
            span: table.span(),
            message,
        });
    }
    let mut search = Search {
        root: table,
        message: &message,
        tries: 0,
    };
    match search.culprit(&mut Vec::new(), entries) {
        Some(found) => Err(found),
        None => match entries.get(TAG) {
            Some(kind) => Err(FabricError {
                span: kind.span(),
                message: format!("[generate] {TAG}: {message}"),
            }),
            None => Err(whole()),
        },
    }
}

/// Where in `table` a generator's complaint about a read fabric belongs: the generators
/// name the key first (`fat-tree: radix is 7; …`, `fat-tree: nvlink_bandwidth: 'x' …`),
/// so the value of the first key of that name, in the table or a table inside it. `None`
/// when the message names no key of the table (the error stays at the table).
pub(crate) fn blame(table: &Spanned<DeValue<'_>>, message: &str) -> Option<Range<usize>> {
    let (_, rest) = message.split_once(": ")?;
    let key: String = rest
        .chars()
        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
        .collect();
    fn find(value: &Spanned<DeValue<'_>>, key: &str) -> Option<Range<usize>> {
        let DeValue::Table(entries) = value.get_ref() else {
            return None;
        };
        if let Some(v) = entries.get(key) {
            return Some(v.span());
        }
        entries.iter().find_map(|(_, v)| find(v, key))
    }
    (!key.is_empty()).then(|| find(table, &key)).flatten()
}

/// `expected one of `fat-tree`, …`: the kinds, as serde lists them for an unknown one.
fn kinds() -> String {
    let unknown = DeTable::parse("kind = \"\"").map(|t| {
        let span = t.span();
        deserialize(Spanned::new(span, DeValue::Table(t.into_inner())))
    });
    match unknown {
        Ok(Err(e)) => e
            .message()
            .split_once("expected ")
            .map_or_else(String::new, |(_, kinds)| {
                format!("expected {}", kinds.trim())
            }),
        _ => String::new(),
    }
}

fn deserialize(table: Spanned<DeValue<'_>>) -> Result<Fabric, toml::de::Error> {
    Fabric::deserialize(ValueDeserializer::from(table))
}

/// The elimination described in the module comment.
struct Search<'t, 'i> {
    root: &'t Spanned<DeValue<'i>>,
    /// The error of the whole table.
    message: &'t str,
    tries: usize,
}

impl<'i> Search<'_, 'i> {
    /// The first key under `path` (keys from the root to `table`) that explains the error.
    fn culprit(&mut self, path: &mut Vec<String>, table: &DeTable<'i>) -> Option<FabricError> {
        for (key, value) in table.iter() {
            if path.is_empty() && key.get_ref() == TAG {
                continue;
            }
            if self.tries >= MAX_TRIES {
                return None;
            }
            self.tries += 1;
            path.push(key.get_ref().to_string());
            if self.explains(path) {
                let deeper = match value.get_ref() {
                    DeValue::Table(inner) => self.culprit(path, inner),
                    _ => None,
                };
                let found = deeper.unwrap_or_else(|| self.blame(path, key, value));
                return Some(found);
            }
            path.pop();
        }
        None
    }

    /// Whether the table without the key at `path` reads, or fails differently.
    fn explains(&self, path: &[String]) -> bool {
        let mut trial = self.root.clone();
        remove(trial.get_mut(), path);
        match deserialize(trial) {
            Ok(_) => true,
            Err(e) => e.message().trim() != self.message,
        }
    }

    fn blame(
        &self,
        path: &[String],
        key: &Spanned<std::borrow::Cow<'i, str>>,
        value: &Spanned<DeValue<'i>>,
    ) -> FabricError {
        let (table, name) = path.split_at(path.len().saturating_sub(1));
        let table = std::iter::once("generate")
            .chain(table.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(".");
        let name = name.first().map_or("", String::as_str);
        if self.message.starts_with("unknown field") {
            FabricError {
                span: key.span(),
                message: format!("[{table}] {}", self.message),
            }
        } else {
            FabricError {
                span: value.span(),
                message: format!("[{table}] {name}: {}", self.message),
            }
        }
    }
}

/// Removes the key at `path` (a key, then keys of nested tables) from `value`.
fn remove(value: &mut DeValue<'_>, path: &[String]) {
    let (Some((last, parents)), DeValue::Table(table)) = (path.split_last(), value) else {
        return;
    };
    let mut table = table;
    for key in parents {
        match table.get_mut(key.as_str()).map(Spanned::get_mut) {
            Some(DeValue::Table(inner)) => table = inner,
            _ => return,
        }
    }
    table.remove(last.as_str());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of `text`'s `[generate]` table, as (line, column, message).
    fn error(text: &str) -> (usize, usize, String) {
        let root = DeTable::parse(text).expect("valid TOML");
        let table = root.get_ref().get("generate").expect("a [generate] table");
        let e = read_fabric(table).expect_err("should be refused");
        let lines = super::super::Lines::new(text);
        let (line, column) = lines.position(text, e.span.start);
        (line, column, e.message)
    }

    const HEAD: &str = "name = \"x\"\n[generate]\nkind = \"fat-tree\"\n";

    #[test]
    fn a_good_table_reads() {
        let text = format!("{HEAD}hosts = 4\n[generate.host]\ngpus_per_host = 2\n");
        let root = DeTable::parse(&text).unwrap();
        let fabric = read_fabric(root.get_ref().get("generate").unwrap()).unwrap();
        assert_eq!(fabric.kind(), "fat-tree");
    }

    #[test]
    fn a_bad_value_is_blamed_at_the_value() {
        let (line, column, m) = error(&format!("{HEAD}tiers = 2\nhosts = \"four\"\n"));
        assert_eq!((line, column), (5, 9), "{m}");
        assert!(m.starts_with("[generate] hosts: invalid type"), "{m}");
    }

    #[test]
    fn an_unknown_key_is_blamed_at_the_key() {
        let (line, column, m) = error(&format!("{HEAD}hosts = 4\n  hostz = 4\n"));
        assert_eq!((line, column), (5, 3), "{m}");
        assert!(m.contains("unknown field `hostz`"), "{m}");
        assert!(m.contains("`oversub_leaf`"), "{m}");
    }

    #[test]
    fn nested_tables_are_searched() {
        let text = format!("{HEAD}hosts = 4\n[generate.host]\ncpus = 1\ngpus = 8\n");
        let (line, column, m) = error(&text);
        assert_eq!((line, column), (7, 1), "{m}");
        assert!(m.starts_with("[generate.host] unknown field `gpus`"), "{m}");
        let text = format!("{HEAD}hosts = 4\nhost = {{ cpus = 1, gpus_per_host = true }}\n");
        let (line, column, m) = error(&text);
        assert_eq!((line, column), (5, 36), "{m}");
        assert!(
            m.starts_with("[generate.host] gpus_per_host: invalid type"),
            "{m}"
        );
    }

    #[test]
    fn the_tag_and_missing_keys() {
        let (line, column, m) = error("[generate]\nhosts = 4\nkind = \"swotch\"\n");
        assert_eq!((line, column), (3, 8), "{m}");
        assert!(m.contains("unknown variant `swotch`"), "{m}");
        let (line, _, m) = error("a = 1\n[generate]\nhosts = 4\n");
        assert_eq!(line, 2, "{m}");
        assert!(
            m.ends_with(
                "has no `kind`; expected one of `fat-tree`, `rail`, `switch`, `multi-zone`"
            ),
            "{m}"
        );
        let (line, _, m) = error(&format!("{HEAD}tiers = 3\n"));
        assert_eq!(line, 2, "{m}");
        assert!(m.contains("missing field `hosts`"), "{m}");
    }

    #[test]
    fn with_two_mistakes_the_reported_one_is_blamed() {
        // Keys are read in lexicographic order: `hosts` is read (and refused) first.
        let text = format!("{HEAD}tiers = \"two\"\nhosts = \"four\"\n");
        let (line, _, m) = error(&text);
        assert!(m.contains("string \"four\""), "{m}");
        assert_eq!(line, 5, "{m}");
    }

    #[test]
    fn generator_complaints_go_to_the_key_they_name() {
        let text = "[generate]\nkind = \"fat-tree\"\nhosts = 4\nradix = 7\n\
                    [generate.host]\nnvlink_bandwidth = \"x\"\n";
        let root = DeTable::parse(text).unwrap();
        let table = root.get_ref().get("generate").unwrap();
        let at = |message: &str| blame(table, message).map(|span| &text[span]);
        assert_eq!(at("fat-tree: radix is 7; a switch radix …"), Some("7"));
        assert_eq!(at("fat-tree: nvlink_bandwidth: 'x' is …"), Some("\"x\""));
        assert_eq!(at("fat-tree: tiers is 5; …"), None, "not in the table");
        assert_eq!(at("no key named"), None);
        assert_eq!(at("fat-tree: 7 is odd"), None);
    }

    #[test]
    fn not_a_table() {
        let (line, _, m) = error("generate = 5\n");
        assert_eq!(line, 1, "{m}");
        assert!(m.starts_with("[generate] invalid type"), "{m}");
    }
}

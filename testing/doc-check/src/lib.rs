//! What the docs say, for the unit tests that keep them and the code
//! equal: the metric tables of `docs/metrics.md` against what is exported,
//! the configuration and rollout examples against the parsers, the etcd
//! role recipe against the roles granted.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// The text of `path`, relative to the workspace root (`docs/metrics.md`).
pub fn doc(path: &str) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&file)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", file.display()))
}

/// The part of `text` after the line `heading` (e.g. `## Agent metrics`),
/// up to the next heading of the same or a higher level (lines in fenced
/// code blocks are not headings).
pub fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut offset = 0;
    let mut start = None;
    let mut fenced = false;
    for line in text.split_inclusive('\n') {
        let at = offset;
        offset += line.len();
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        let is_heading = hashes > 0 && line[hashes..].starts_with(' ');
        match start {
            None if line.trim_end() == heading => start = Some(offset),
            Some(start) if is_heading && hashes <= level => return &text[start..at],
            _ => {}
        }
    }
    let start = start.unwrap_or_else(|| panic!("no section {heading:?}"));
    &text[start..]
}

/// Metric names in the tables of section `heading` of `path`, without
/// labels or `_total`.
pub fn metrics_in(path: &str, heading: &str) -> BTreeSet<String> {
    families_in(path, heading).into_keys().collect()
}

/// The label names of each family in the tables of section `heading` of
/// `path`, by name (without `_total`): what [`exported_labels`] reads off
/// an exposition.
pub fn labels_in(path: &str, heading: &str) -> BTreeMap<String, BTreeSet<String>> {
    families_in(path, heading)
        .into_iter()
        .map(|(name, family)| (name, family.labels))
        .collect()
}

/// A metric family as a docs table gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// `counter`, `gauge` or `histogram`.
    pub kind: String,
    pub labels: BTreeSet<String>,
}

/// The families in the tables of section `heading` of `path`, by name
/// (without `_total`): their type and label names. A name written
/// `name{…}` has the labels of the cell's first name.
pub fn families_in(path: &str, heading: &str) -> BTreeMap<String, Family> {
    let text = doc(path);
    let mut families = BTreeMap::new();
    for line in section(&text, heading)
        .lines()
        .filter(|line| line.starts_with("| `fleetnet_"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (names, kind) = (cells[1], cells[2].to_string());
        let mut first_labels = BTreeSet::new();
        for written in names.split('`').skip(1).step_by(2) {
            let (name, labels) = written.split_once('{').unwrap_or((written, ""));
            let labels = labels.trim_end_matches('}');
            let labels: BTreeSet<String> = if labels == "…" {
                first_labels.clone()
            } else {
                labels
                    .split(',')
                    .filter(|label| !label.is_empty())
                    .map(str::to_string)
                    .collect()
            };
            if first_labels.is_empty() {
                first_labels = labels.clone();
            }
            let name = name.strip_suffix("_total").unwrap_or(name).to_string();
            let kind = kind.clone();
            families.insert(name, Family { kind, labels });
        }
    }
    families
}

/// The label names each family of an exposition shows on its samples
/// (a histogram's `le` aside), by family name.
pub fn exported_labels(exposition: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut families: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut family = String::new();
    for line in exposition.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            family = declared.split_whitespace().next().unwrap_or("").into();
            families.entry(family.clone()).or_default();
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((_, sample_labels)) = line.split_once('{') else {
            continue;
        };
        let labels = families.entry(family.clone()).or_default();
        labels.extend(label_names(sample_labels));
        labels.remove("le");
    }
    families
}

/// The label names of a sample's `name="value",...}` part (values may
/// hold escaped quotes and commas).
fn label_names(mut rest: &str) -> Vec<String> {
    let mut names = Vec::new();
    while let Some((name, after)) = rest.split_once("=\"") {
        names.push(name.trim_start_matches(',').trim().to_string());
        let mut escaped = false;
        let end = after
            .char_indices()
            .find(|(_, c)| {
                let closes = *c == '"' && !escaped;
                escaped = *c == '\\' && !escaped;
                closes
            })
            .map_or(after.len(), |(at, _)| at + 1);
        rest = &after[end..];
        if rest.starts_with('}') {
            break;
        }
    }
    names
}

/// Metric names an exposition declares.
pub fn exported(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_end_at_the_next_heading_of_their_level() {
        let text = "# A\nintro\n## B\nb1\n### C\nc1\n```\n# not a heading\n```\n## D\nd1\n";
        assert_eq!(
            section(text, "## B"),
            "b1\n### C\nc1\n```\n# not a heading\n```\n"
        );
        assert_eq!(section(text, "### C"), "c1\n```\n# not a heading\n```\n");
        assert_eq!(section(text, "## D"), "d1\n");
    }

    #[test]
    fn label_names_are_read_past_quoted_commas_and_quotes() {
        let exposition = "# TYPE a counter\na_total{x=\"1,2\",y=\"say \\\"hi\\\"\"} 1\n\
                          # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\n# TYPE g gauge\ng 2\n";
        let labels = exported_labels(exposition);
        assert_eq!(labels["a"], BTreeSet::from(["x".into(), "y".into()]));
        assert!(labels["h"].is_empty());
        assert!(labels["g"].is_empty());
    }
}

//! What the docs say, for the unit tests that keep them and the code
//! equal: the metric tables of `docs/metrics.md` against what is exported,
//! the configuration and rollout examples against the parsers, the etcd
//! role recipe against the roles granted.

use std::{collections::BTreeSet, path::Path};

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
    let text = doc(path);
    section(&text, heading)
        .lines()
        .filter(|line| line.starts_with("| `fleetnet_"))
        .flat_map(|line| {
            let first_cell = line.split('|').nth(1).unwrap_or_default();
            first_cell
                .split('`')
                .skip(1)
                .step_by(2)
                .map(|name| {
                    let name = name.split('{').next().unwrap_or(name);
                    name.strip_suffix("_total").unwrap_or(name).to_string()
                })
                .collect::<Vec<_>>()
        })
        .collect()
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
}

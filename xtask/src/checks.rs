//! Checks of the repository's shape that no compiler makes: the crate
//! graph (which crate may depend on what) and the docs' relative links.

use std::{collections::BTreeSet, path::Path, process::Command};

use anyhow::{Context, Result, bail};

/// Crates (with cargo flags) and what must not be in their dependency
/// tree, with why.
const FORBIDDEN: &[(&str, &[&str], &[&str], &str)] = &[
    (
        "fleetnet-cli",
        &["--no-default-features"],
        &["aya", "aya-obj", "dataplane-ebpf", "fleetnet-agent"],
        "the controller's binary (and image) carries no datapath",
    ),
    (
        "fleetnet-fleet",
        &[],
        &["aya", "aya-obj", "dataplane-ebpf", "fleetnet-agent"],
        "the fleet controller never loads the datapath",
    ),
    (
        "fleetnet-store",
        &[],
        &["aya", "kube", "fleetnet-agent"],
        "the store is etcd and the key schema, nothing else",
    ),
    (
        "fleetnet-policy",
        &[],
        &["aya", "kube", "etcd-client", "tokio"],
        "policy compilation is pure",
    ),
];

/// The crates whose edges docs/architecture.md lists.
const PRODUCT: &[&str] = &[
    "dataplane-common",
    "dataplane-ebpf",
    "fleetnet-store",
    "fleetnet-policy",
    "fleetnet-fleet",
    "fleetnet-agent",
    "fleetnet-cli",
];

/// Fails when a crate's dependency tree holds what its role forbids, or
/// when the edges docs/architecture.md lists are not `cargo tree`'s.
pub(crate) fn crate_graph(root: &Path) -> Result<()> {
    forbidden_dependencies()?;
    let documented = documented_edges(&std::fs::read_to_string(root.join("docs/architecture.md"))?);
    for krate in PRODUCT {
        let tree = cargo_tree(krate, &["--depth", "1"])?;
        let actual: BTreeSet<&str> = tree
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next())
            .filter(|name| PRODUCT.contains(name))
            .collect();
        let listed: BTreeSet<&str> = documented
            .get(*krate)
            .map(|deps| deps.iter().map(String::as_str).collect())
            .unwrap_or_default();
        if actual != listed {
            bail!(
                "docs/architecture.md lists {krate} -> {listed:?}, but cargo tree has \
                 {krate} -> {actual:?}; make the list (and the picture) say what is"
            );
        }
    }
    Ok(())
}

/// `- \`a\` → \`b\`, \`c\`` (or `→ nothing`) lines: crate to its dependencies.
fn documented_edges(text: &str) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    text.lines()
        .filter_map(|line| line.strip_prefix("- `"))
        .filter_map(|line| line.split_once("` → "))
        .map(|(krate, deps)| {
            let deps = deps
                .split(',')
                .filter_map(|dep| dep.trim().strip_prefix('`')?.strip_suffix('`'))
                .map(str::to_string)
                .collect();
            (krate.to_string(), deps)
        })
        .collect()
}

/// `cargo tree -p krate` (normal and build edges), one package per line.
fn cargo_tree(krate: &str, extra: &[&str]) -> Result<String> {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--package", krate, "--edges", "normal,build"])
        .args(["--prefix", "none", "--format", "{p}"])
        .args(extra)
        .output()
        .context("cannot run cargo tree")?;
    if !output.status.success() {
        bail!(
            "cargo tree -p {krate} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Fails when a crate's dependency tree holds what its role forbids.
fn forbidden_dependencies() -> Result<()> {
    for (krate, flags, forbidden, why) in FORBIDDEN {
        let tree = cargo_tree(krate, flags)?;
        let found: BTreeSet<&str> = tree
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter(|name| forbidden.contains(name))
            .collect();
        if !found.is_empty() {
            bail!(
                "{krate} {} depends on {} ({why}); `cargo tree -p {krate} {} -i {}` shows \
                 through what",
                flags.join(" "),
                found.iter().copied().collect::<Vec<_>>().join(", "),
                flags.join(" "),
                found.first().expect("not empty")
            );
        }
    }
    Ok(())
}

/// Fails on a relative link in the README or docs/ (under `root`) whose
/// file is missing, or whose anchor names no heading of that file.
pub(crate) fn doc_links(root: &Path) -> Result<()> {
    let mut files = vec![root.join("README.md"), root.join("manifests/README.md")];
    for entry in std::fs::read_dir(root.join("docs")).context("reading docs/")? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "md") {
            files.push(path);
        }
    }
    files.sort();
    let mut broken = Vec::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for target in links(&text) {
            if let Err(problem) = resolve(file, &target) {
                broken.push(format!("{}: ({target}) {problem}", file.display()));
            }
        }
    }
    if !broken.is_empty() {
        bail!("broken links in the docs:\n  {}", broken.join("\n  "));
    }
    Ok(())
}

/// The targets of the Markdown links in `text`, outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let Some(end) = rest.find(')') else {
                break;
            };
            targets.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    targets
}

/// Checks one link target from `file`.
fn resolve(file: &Path, target: &str) -> Result<(), String> {
    if target.contains("://") || target.starts_with("mailto:") {
        return Ok(());
    }
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    };
    let linked = if path.is_empty() {
        file.to_path_buf()
    } else {
        file.parent().unwrap_or(Path::new("")).join(path)
    };
    if !linked.exists() {
        return Err(format!("{} does not exist", linked.display()));
    }
    let Some(anchor) = anchor else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&linked).map_err(|error| error.to_string())?;
    if anchors(&text).contains(anchor) {
        Ok(())
    } else {
        Err(format!("{} has no heading #{anchor}", linked.display()))
    }
}

/// The anchors GitHub gives the headings of `text`: lowercase, only
/// letters, digits, spaces, `-` and `_` kept, spaces made `-`, repeats
/// numbered.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if fenced || hashes == 0 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let slug: String = line[hashes..]
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = slug.clone();
        let mut n = 1;
        while seen.contains(&anchor) {
            anchor = format!("{slug}-{n}");
            n += 1;
        }
        seen.insert(anchor);
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_get_githubs_anchors_and_links_are_found_outside_code() {
        let text = "# Metrics\n## The controller's metrics\n```\n# not a heading\n```\n\
                    ## etcd: several members, outages\n## Metrics\nsee [a](x.md#b) and [c](#d)\n";
        let found = anchors(text);
        for anchor in [
            "metrics",
            "the-controllers-metrics",
            "etcd-several-members-outages",
            "metrics-1",
        ] {
            assert!(found.contains(anchor), "{anchor} not in {found:?}");
        }
        assert!(!found.contains("not-a-heading"));
        assert_eq!(links(text), ["x.md#b", "#d"]);
    }

    #[test]
    fn the_documented_edges_are_read_as_written() {
        let edges = documented_edges("- `a` → `b`, `c`\n- `d` → nothing\n- not an edge\n");
        assert_eq!(edges["a"], ["b".to_string(), "c".to_string()].into());
        assert!(edges["d"].is_empty());
        assert_eq!(edges.len(), 2);
    }

    #[test]
    fn every_relative_link_in_the_docs_resolves() {
        doc_links(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).unwrap();
    }
}

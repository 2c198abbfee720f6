//! The Grafana dashboards in `manifests/dashboards/`: every panel's query
//! and every template variable parses as PromQL and names only metrics
//! the agent or the controller exports, with labels they export or that
//! the scrape configuration adds (`cluster`, `instance`, `job`); grouping,
//! matching and legends use only labels the series they apply to carry.
//! What is exported is read from `docs/metrics.md`, whose tables the
//! agent's and the controller's unit tests hold equal to what they
//! export, label by label.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use fleetnet_doc_check::{Family, families_in};
use promql_parser::parser::{Expr, LabelModifier, parse};
use serde_json::Value;

/// Labels a target gets from its scrape, not from the exposition.
const SCRAPE_LABELS: [&str; 3] = ["cluster", "instance", "job"];

/// Grafana's variables, as a query would see them once expanded.
const VARIABLES: [(&str, &str); 3] = [
    ("$__rate_interval", "2m"),
    ("${cluster}", ".*"),
    ("$cluster", ".*"),
];

fn dashboards() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../manifests/dashboards");
    let mut found: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let value = serde_json::from_str(&text)
                .unwrap_or_else(|error| panic!("{name} is not JSON: {error}"));
            (name, value)
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// Every family the agent or the controller exports.
fn exported() -> BTreeMap<String, Family> {
    let mut families = families_in("docs/metrics.md", "## The agent's metrics");
    families.extend(families_in(
        "docs/metrics.md",
        "## The controller's metrics",
    ));
    families
}

/// Checks PromQL as the dashboards hold it.
struct Checker {
    families: BTreeMap<String, Family>,
    problems: Vec<String>,
}

impl Checker {
    fn new() -> Self {
        Self {
            families: exported(),
            problems: Vec::new(),
        }
    }

    /// Checks `query` (Grafana variables expanded); the legend's
    /// `{{label}}`s must be labels of its result.
    fn query(&mut self, at: &str, query: &str, legend: &str) {
        let mut expanded = query.to_string();
        for (variable, value) in VARIABLES {
            expanded = expanded.replace(variable, value);
        }
        if expanded.contains('$') {
            self.problems
                .push(format!("{at}: an unknown variable in {query}"));
            return;
        }
        let expr = match parse(&expanded) {
            Ok(expr) => expr,
            Err(error) => {
                self.problems
                    .push(format!("{at}: {query} does not parse: {error}"));
                return;
            }
        };
        let labels = self.labels_of(at, &expr);
        for used in legend.split("{{").skip(1) {
            let label = used.split("}}").next().unwrap_or_default().trim();
            if !labels.contains(label) {
                self.problems.push(format!(
                    "{at}: the legend shows {{{{{label}}}}}, which the result of {query} does not carry"
                ));
            }
        }
    }

    /// The family `series` belongs to, and whether it is a histogram's
    /// bucket: a gauge by its name, a counter's `_total`, a histogram's
    /// `_bucket`, `_sum` and `_count`.
    fn family(&self, series: &str) -> Option<(&Family, bool)> {
        let of =
            |name: &str, kind: &str| self.families.get(name).filter(|family| family.kind == kind);
        if let Some(family) = of(series, "gauge") {
            return Some((family, false));
        }
        if let Some(family) = series.strip_suffix("_total").and_then(|n| of(n, "counter")) {
            return Some((family, false));
        }
        if let Some(family) = series
            .strip_suffix("_bucket")
            .and_then(|n| of(n, "histogram"))
        {
            return Some((family, true));
        }
        ["_sum", "_count"].iter().find_map(|suffix| {
            let family = of(series.strip_suffix(suffix)?, "histogram")?;
            Some((family, false))
        })
    }

    /// The label names the result of `expr` may carry; problems with
    /// the metrics and labels it uses are recorded.
    fn labels_of(&mut self, at: &str, expr: &Expr) -> BTreeSet<String> {
        match expr {
            Expr::VectorSelector(selector) => self.selector(at, selector),
            Expr::MatrixSelector(matrix) => self.selector(at, &matrix.vs),
            Expr::Paren(paren) => self.labels_of(at, &paren.expr),
            Expr::Unary(unary) => self.labels_of(at, &unary.expr),
            Expr::Subquery(subquery) => self.labels_of(at, &subquery.expr),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => BTreeSet::new(),
            Expr::Aggregate(aggregate) => {
                let inner = self.labels_of(at, &aggregate.expr);
                match &aggregate.modifier {
                    Some(LabelModifier::Include(by)) => {
                        self.require(at, "groups by", &by.labels, &inner);
                        by.labels.iter().cloned().collect()
                    }
                    Some(LabelModifier::Exclude(without)) => {
                        self.require(at, "groups without", &without.labels, &inner);
                        inner
                            .into_iter()
                            .filter(|label| !without.labels.contains(label))
                            .collect()
                    }
                    None => BTreeSet::new(),
                }
            }
            Expr::Binary(binary) => {
                let left = self.labels_of(at, &binary.lhs);
                let right = self.labels_of(at, &binary.rhs);
                if let Some(matching) = binary.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
                    let labels = &matching.labels().labels;
                    self.require(at, "matches on", labels, &left);
                    self.require(at, "matches on", labels, &right);
                }
                // A scalar side (a number, time()) leaves the other's.
                if left.is_empty() { right } else { left }
            }
            Expr::Call(call) => {
                let mut labels = BTreeSet::new();
                for arg in &call.args.args {
                    labels.extend(self.labels_of(at, arg));
                }
                if call.func.name == "histogram_quantile" && !labels.remove("le") {
                    self.problems.push(format!(
                        "{at}: histogram_quantile over series without buckets (`le`)"
                    ));
                }
                labels
            }
        }
    }

    fn selector(
        &mut self,
        at: &str,
        selector: &promql_parser::parser::VectorSelector,
    ) -> BTreeSet<String> {
        let Some(name) = &selector.name else {
            self.problems
                .push(format!("{at}: a selector without a metric name"));
            return BTreeSet::new();
        };
        let Some((family, bucket)) = self.family(name) else {
            self.problems.push(format!(
                "{at}: {name} is not a series the agent or the controller exports"
            ));
            return BTreeSet::new();
        };
        let mut labels: BTreeSet<String> = family.labels.clone();
        labels.extend(SCRAPE_LABELS.iter().map(|label| label.to_string()));
        if bucket {
            labels.insert("le".into());
        }
        let matched: Vec<String> = selector
            .matchers
            .matchers
            .iter()
            .map(|matcher| matcher.name.clone())
            .filter(|label| label != "__name__")
            .collect();
        self.require(at, &format!("selects {name} by"), &matched, &labels);
        labels
    }

    fn require(&mut self, at: &str, how: &str, used: &[String], carried: &BTreeSet<String>) {
        for label in used {
            if !carried.contains(label) {
                self.problems.push(format!(
                    "{at}: {how} `{label}`, which is not among {carried:?}"
                ));
            }
        }
    }

    /// Checks `label_values(metric, label)`, a template variable's query.
    fn variable(&mut self, at: &str, query: &str) {
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'));
        let Some((metric, label)) = inner.and_then(|inner| inner.rsplit_once(',')) else {
            self.problems
                .push(format!("{at}: {query} is not label_values(metric, label)"));
            return;
        };
        let labels = match parse(metric.trim()) {
            Ok(expr) => self.labels_of(at, &expr),
            Err(error) => {
                self.problems
                    .push(format!("{at}: {metric} does not parse: {error}"));
                return;
            }
        };
        let label = label.trim().to_string();
        self.require(at, "lists the values of", &[label], &labels);
    }
}

/// Panels, rows' panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

#[test]
fn every_panel_queries_what_fleetnet_exports() {
    let dashboards = dashboards();
    let names: Vec<&str> = dashboards.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "fleetnet-datapath.json",
            "fleetnet-mesh.json",
            "fleetnet-rollouts.json"
        ]
    );
    let mut checker = Checker::new();
    let mut uids = BTreeSet::new();
    let mut queries = 0;
    for (name, dashboard) in &dashboards {
        let uid = dashboard["uid"].as_str().unwrap_or_default();
        assert!(uids.insert(uid.to_string()), "{name}: uid {uid:?} again");
        assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
        for variable in dashboard["templating"]["list"].as_array().unwrap() {
            if variable["type"] == "query" {
                let at = format!("{name}, variable {}", variable["name"]);
                let query = variable["query"]["query"].as_str().unwrap_or_default();
                checker.variable(&at, query);
            }
        }
        let mut ids = BTreeSet::new();
        for panel in panels(dashboard) {
            let title = panel["title"].as_str().unwrap_or_default();
            let at = format!("{name}, panel {title:?}");
            assert!(ids.insert(panel["id"].as_u64()), "{at}: id used twice");
            let grid = &panel["gridPos"];
            let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
            assert!(x + w <= 24, "{at}: wider than the dashboard's 24 columns");
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{at}: not on the dashboard's data source"
            );
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{at}: no query");
            for target in targets {
                let expr = target["expr"].as_str().unwrap_or_default();
                let legend = target["legendFormat"].as_str().unwrap_or_default();
                checker.query(&at, expr, legend);
                queries += 1;
            }
        }
    }
    assert!(
        checker.problems.is_empty(),
        "{}",
        checker.problems.join("\n")
    );
    assert!(queries >= 30, "only {queries} queries checked");
}

/// The checks above would catch a metric or label that is not exported,
/// grouping or a legend by a label the series lack, and bad PromQL.
#[test]
fn the_check_catches_what_fleetnet_does_not_export() {
    let mut checker = Checker::new();
    for (query, legend) in [
        ("rate(fleetnet_dropped_packets_total[1m])", ""),
        (
            "sum by (cluster_name) (rate(fleetnet_drop_packets_total[1m]))",
            "",
        ),
        (r#"fleetnet_mesh_cluster_nodes{remote="c2"}"#, ""),
        (
            "sum by (reason) (rate(fleetnet_drop_packets_total[1m]))",
            "{{verdict}}",
        ),
        (
            "histogram_quantile(0.9, fleetnet_mesh_sync_latency_seconds_sum)",
            "",
        ),
        ("sum(rate(fleetnet_drop_packets_total[1m])", ""),
        ("fleetnet_policy_denials", ""),
    ] {
        let before = checker.problems.len();
        checker.query("test", query, legend);
        assert!(
            checker.problems.len() > before,
            "not caught: {query} {legend}"
        );
    }
    checker.variable("test", "label_values(fleetnet_build_info, node)");
    assert_eq!(checker.problems.len(), 8, "{:#?}", checker.problems);
    // What is exported passes.
    let mut fine = Checker::new();
    fine.query(
        "test",
        r#"sum by (source_cluster, destination_cluster) (rate(fleetnet_forwarded_packets_total{cluster=~"$cluster"}[$__rate_interval]))"#,
        "{{source_cluster}} -> {{destination_cluster}}",
    );
    fine.variable("test", "label_values(fleetnet_build_info, cluster)");
    assert!(fine.problems.is_empty(), "{:#?}", fine.problems);
}

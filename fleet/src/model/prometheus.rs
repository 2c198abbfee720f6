//! The Prometheus gate as a strategy writes it, in the terms Argo Rollouts'
//! and Flagger's analyses use: a PromQL query measured every `interval`,
//! `count` times, each measurement a success when `success` holds, the
//! gate failed past `failure-limit` failed measurements. What a
//! measurement found is kept in the run ([`Measurement`]).

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

/// `prometheus: { address, query, success, ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PrometheusGate {
    /// The server's base URL, `http://host:port`.
    pub address: String,
    /// PromQL; `{{clusters}}` becomes a regex matching exactly the stage's
    /// cluster names (`c1|c2`), for a label such as `cluster=~"..."`.
    pub query: String,
    /// When a measurement succeeds: `result < 0.01`, or a range such as
    /// `result >= 0.99 && result <= 1`. Every series the query returns
    /// must satisfy it.
    pub success: String,
    /// Between measurements; the first is taken as the gate begins.
    #[serde(default = "thirty_seconds")]
    pub interval: Interval,
    /// Measurements to take; the gate passes after the last one.
    #[serde(default = "one")]
    pub count: u32,
    /// Failed measurements tolerated; one more fails the gate.
    #[serde(default)]
    pub failure_limit: u32,
    /// What a measurement that cannot reach Prometheus does.
    #[serde(default = "retry")]
    pub on_unreachable: Outcome,
    /// What a query Prometheus refuses (bad PromQL, a timeout) does.
    #[serde(default = "fail")]
    pub on_error: Outcome,
    /// What a query returning no series (or only NaN) does.
    #[serde(default = "retry")]
    pub on_no_data: Outcome,
    /// Measurements retried in a row before the gate fails.
    #[serde(default = "four")]
    pub retry_limit: u32,
}

/// What a measurement that found nothing to judge does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Fail the gate (and roll the stage back).
    Fail,
    /// Measure again after `interval`, at most `retry-limit` times in a
    /// row; then fail.
    Retry,
    /// Hold the gate until `fleetnet rollout approve` (which passes it) or
    /// `rollout rollback`.
    Pause,
}

fn thirty_seconds() -> Interval {
    Interval(30)
}
fn one() -> u32 {
    1
}
fn four() -> u32 {
    4
}
fn retry() -> Outcome {
    Outcome::Retry
}
fn fail() -> Outcome {
    Outcome::Fail
}

impl PrometheusGate {
    /// The first problem with the gate, as one sentence.
    pub fn validate(&self) -> Result<(), String> {
        let rest = self.address.strip_prefix("http://").ok_or_else(|| {
            format!(
                "prometheus address {:?} must be an http:// URL (reach an https server through a proxy on the controller's side)",
                self.address
            )
        })?;
        if rest.trim_end_matches('/').is_empty() {
            return Err(format!(
                "prometheus address {:?} names no host",
                self.address
            ));
        }
        if self.query.trim().is_empty() {
            return Err("a prometheus gate needs a query".into());
        }
        Condition::parse(&self.success)?;
        if self.count == 0 {
            return Err("a prometheus gate's count must be at least 1".into());
        }
        if self.retry_limit == 0 {
            return Err("a prometheus gate's retry-limit must be at least 1".into());
        }
        Ok(())
    }

    /// The query for a stage of `clusters`.
    pub fn query_for<'a>(&self, clusters: impl IntoIterator<Item = &'a str>) -> String {
        let names: Vec<String> = clusters.into_iter().map(regex_escape).collect();
        self.query.replace("{{clusters}}", &names.join("|"))
    }
}

/// A name as a regex matching only itself (Prometheus anchors label
/// matchers, so `c1` does not match `c10`).
fn regex_escape(name: &str) -> String {
    let mut escaped = String::with_capacity(name.len());
    for c in name.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Seconds, written as a number or with a unit: `30s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub u64);

impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}s", self.0))
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Seconds(u64),
            Text(String),
        }
        let seconds = match Written::deserialize(deserializer)? {
            Written::Seconds(seconds) => Some(seconds),
            Written::Text(text) => parse_interval(&text),
        };
        match seconds {
            Some(seconds) if seconds > 0 => Ok(Interval(seconds)),
            _ => Err(D::Error::custom(
                "interval must be a positive duration such as 30s, 5m or 1h",
            )),
        }
    }
}

fn parse_interval(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return None,
    };
    number.checked_mul(scale)
}

/// `success`, read: every comparison must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition(Vec<(Comparison, f64)>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    Equal,
    NotEqual,
}

impl Condition {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        for part in text.split("&&") {
            let part = part.trim();
            let invalid = || {
                format!(
                    "success {text:?}: {part:?} is not a comparison like \"result < 0.01\" (use <, <=, >, >=, == or !=, joined by &&)"
                )
            };
            let rest = part
                .strip_prefix("result")
                .ok_or_else(invalid)?
                .trim_start();
            let (comparison, number) = [
                ("<=", Comparison::LessOrEqual),
                (">=", Comparison::GreaterOrEqual),
                ("==", Comparison::Equal),
                ("!=", Comparison::NotEqual),
                ("<", Comparison::Less),
                (">", Comparison::Greater),
            ]
            .into_iter()
            .find_map(|(op, comparison)| rest.strip_prefix(op).map(|n| (comparison, n)))
            .ok_or_else(invalid)?;
            let number: f64 = number.trim().parse().map_err(|_| invalid())?;
            if !number.is_finite() {
                return Err(invalid());
            }
            parts.push((comparison, number));
        }
        Ok(Condition(parts))
    }

    pub fn holds(&self, value: f64) -> bool {
        self.0.iter().all(|(comparison, bound)| match comparison {
            Comparison::Less => value < *bound,
            Comparison::LessOrEqual => value <= *bound,
            Comparison::Greater => value > *bound,
            Comparison::GreaterOrEqual => value >= *bound,
            Comparison::Equal => value == *bound,
            Comparison::NotEqual => value != *bound,
        })
    }
}

/// What one query to Prometheus returned, as the controller saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// Each series' labels (`{a="b"}`) and value.
    Values(Vec<(String, f64)>),
    /// No answer: connection refused, timed out, not HTTP.
    Unreachable(String),
    /// Prometheus answered with an error (bad query, its own timeout).
    Error(String),
}

/// One measurement of a Prometheus gate, kept in the run for `rollout
/// status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Measurement {
    /// Index of the gate in its stage.
    pub gate: usize,
    pub at_unix: f64,
    pub phase: Phase,
    /// Each series and its value (`{cluster="c1"} 0.002`), at most a few.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Why there was nothing to judge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Successful,
    Failed,
    Unreachable,
    Error,
    NoData,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_and_intervals_read_as_written() {
        let range = Condition::parse("result >= 0.99 && result<=1").unwrap();
        assert!(range.holds(0.995) && range.holds(1.0));
        assert!(!range.holds(0.98) && !range.holds(1.01) && !range.holds(f64::NAN));
        assert!(Condition::parse("result < 0.01").unwrap().holds(0.0));
        assert_eq!(
            Condition::parse("value < 1").unwrap_err(),
            "success \"value < 1\": \"value < 1\" is not a comparison like \"result < 0.01\" (use <, <=, >, >=, == or !=, joined by &&)"
        );
        assert!(Condition::parse("result < lots").is_err());
        assert!(Condition::parse("result ~ 3").is_err());
        let interval = |text: &str| serde_yaml::from_str::<Interval>(text).map(|i| i.0);
        assert_eq!(interval("30s").unwrap(), 30);
        assert_eq!(interval("5m").unwrap(), 300);
        assert_eq!(interval("7").unwrap(), 7);
        assert!(interval("0s").is_err() && interval("5 parsecs").is_err());
    }

    #[test]
    fn the_stage_clusters_become_an_exact_regex() {
        let gate: PrometheusGate = serde_yaml::from_str(
            "{ address: 'http://198.18.0.9:9090', query: 'sum(up{cluster=~\"{{clusters}}\"})', success: 'result > 0' }",
        )
        .unwrap();
        gate.validate().unwrap();
        assert_eq!(
            gate.query_for(["c1", "eu.west"]),
            r#"sum(up{cluster=~"c1|eu\.west"})"#
        );
        assert_eq!(gate.interval, Interval(30));
        assert_eq!(gate.on_unreachable, Outcome::Retry);
        assert_eq!(gate.on_error, Outcome::Fail);
        let https = PrometheusGate {
            address: "https://prom".into(),
            ..gate
        };
        assert!(https.validate().unwrap_err().contains("http:// URL"));
    }
}

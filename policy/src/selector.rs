//! Kubernetes label selectors: `matchLabels` and `matchExpressions` with
//! `In`, `NotIn`, `Exists` and `DoesNotExist`, all ANDed. An empty
//! selector matches everything.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub use crate::identity::Labels;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Requirement {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    pub fn key(&self) -> &str {
        match self {
            Self::In(key, _)
            | Self::NotIn(key, _)
            | Self::Exists(key)
            | Self::DoesNotExist(key) => key,
        }
    }

    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Self::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Self::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Self::Exists(key) => labels.contains_key(key),
            Self::DoesNotExist(key) => !labels.contains_key(key),
        }
    }

    fn with_key(self, key: String) -> Self {
        match self {
            Self::In(_, values) => Self::In(key, values),
            Self::NotIn(_, values) => Self::NotIn(key, values),
            Self::Exists(_) => Self::Exists(key),
            Self::DoesNotExist(_) => Self::DoesNotExist(key),
        }
    }
}

/// A parsed label selector: requirements that must all hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses a Kubernetes selector; the error says what is wrong with it.
    pub fn parse(selector: &LabelSelector) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::In(
                key.clone(),
                BTreeSet::from([value.clone()]),
            ));
        }
        for expression in selector.match_expressions.iter().flatten() {
            let key = expression.key.clone();
            let values: BTreeSet<String> = expression.values.iter().flatten().cloned().collect();
            let requirement = match expression.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!(
                        "matchExpressions on {key:?}: operator {} needs at least one value",
                        expression.operator
                    ));
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!(
                        "matchExpressions on {key:?}: operator {} takes no values",
                        expression.operator
                    ));
                }
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(format!(
                        "matchExpressions on {key:?}: unknown operator {other:?} \
                         (use In, NotIn, Exists or DoesNotExist)"
                    ));
                }
            };
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// True when it has no requirement: it matches everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// True when every requirement (if any) is about `key`.
    pub fn only_mentions(&self, key: &str) -> bool {
        self.requirements.iter().all(|r| r.key() == key)
    }

    /// True when some requirement is about `key`.
    pub fn mentions(&self, key: &str) -> bool {
        self.requirements.iter().any(|r| r.key() == key)
    }

    /// Requirements on `alias` become requirements on `key`.
    pub fn rename_key(mut self, alias: &str, key: &str) -> Self {
        self.requirements = self
            .requirements
            .into_iter()
            .map(|r| {
                if r.key() == alias {
                    r.with_key(key.to_string())
                } else {
                    r
                }
            })
            .collect();
        self
    }

    /// Adds a requirement that `key` is `value`.
    pub fn and_equals(mut self, key: &str, value: &str) -> Self {
        self.requirements.push(Requirement::In(
            key.to_string(),
            BTreeSet::from([value.to_string()]),
        ));
        self
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn every_operator_matches_as_kubernetes_does() {
        let selector = Selector::parse(&LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                expression("tier", "In", &["front", "edge"]),
                expression("env", "NotIn", &["dev"]),
                expression("team", "Exists", &[]),
                expression("legacy", "DoesNotExist", &[]),
            ]),
        })
        .unwrap();
        let base = [("app", "web"), ("tier", "edge"), ("team", "x")];
        assert!(selector.matches(&labels(&base)));
        assert!(
            selector.matches(&labels(&[base[0], base[1], base[2], ("env", "prod")])),
            "NotIn holds for another value"
        );
        assert!(!selector.matches(&labels(&[base[0], base[1], base[2], ("env", "dev")])));
        assert!(!selector.matches(&labels(&[base[0], base[1], base[2], ("legacy", "")])));
        assert!(!selector.matches(&labels(&[base[0], base[1]])), "Exists");
        assert!(
            !selector.matches(&labels(&[base[0], ("tier", "back"), base[2]])),
            "In"
        );
        assert!(!selector.matches(&labels(&[("app", "db"), base[1], base[2]])));
        assert!(
            Selector::default().matches(&labels(&[])),
            "empty matches all"
        );
    }

    #[test]
    fn malformed_expressions_are_refused_with_a_reason() {
        let parse = |e| {
            Selector::parse(&LabelSelector {
                match_expressions: Some(vec![e]),
                ..Default::default()
            })
            .unwrap_err()
        };
        assert_eq!(
            parse(expression("app", "Equals", &["x"])),
            "matchExpressions on \"app\": unknown operator \"Equals\" (use In, NotIn, Exists or DoesNotExist)"
        );
        assert_eq!(
            parse(expression("app", "In", &[])),
            "matchExpressions on \"app\": operator In needs at least one value"
        );
        assert_eq!(
            parse(expression("app", "Exists", &["x"])),
            "matchExpressions on \"app\": operator Exists takes no values"
        );
    }
}

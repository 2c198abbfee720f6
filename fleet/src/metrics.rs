//! The controller's metrics, rebuilt from the runs on every pass, and the
//! endpoint that serves them (`--metrics`: `/metrics`, `/healthz`).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use axum::{Router, http::header::CONTENT_TYPE, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    model::{ClusterState, Gate, Run, RunState, StageState},
    render,
};

/// Seconds as a float gauge.
type Seconds = Gauge<f64, AtomicU64>;

/// What prometheus-client writes: OpenMetrics text, which Prometheus
/// parses as such when told so.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics` and `/healthz` on `address` until the runtime stops.
pub async fn serve(address: SocketAddr, metrics: Arc<ControllerMetrics>) -> std::io::Result<()> {
    let router = Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = metrics.render();
                async move { ([(CONTENT_TYPE, OPENMETRICS)], text) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    let listener = tokio::net::TcpListener::bind(address).await?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    run: String,
    revision: String,
    strategy: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    run: String,
    stage: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CountLabels {
    run: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabel {
    run: String,
}

/// The controller's metrics, rebuilt from the runs on every pass.
#[derive(Default)]
pub struct ControllerMetrics {
    pub(crate) leader: Gauge,
    runs: Family<RunLabels, Gauge>,
    stage_seconds: Family<StageLabels, Seconds>,
    clusters: Family<CountLabels, Gauge>,
    approvals: Family<RunLabel, Gauge>,
    snapshot: Mutex<()>,
}

impl ControllerMetrics {
    pub(crate) fn update(&self, runs: &[(Run, i64)], now: f64) {
        let _guard = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        self.runs.clear();
        self.stage_seconds.clear();
        self.clusters.clear();
        self.approvals.clear();
        for (run, _) in runs {
            let id = run.id.to_string();
            self.runs
                .get_or_create(&RunLabels {
                    run: id.clone(),
                    revision: run.revision.to_string(),
                    strategy: run.strategy.name.clone(),
                    state: render::lower(run.state),
                })
                .set(1);
            let mut pending_approvals = 0;
            for (stage, spec) in run.stages.iter().zip(&run.strategy.stages) {
                if let Some(started) = stage.started_unix {
                    let ended = stage.ended_unix.unwrap_or(now);
                    self.stage_seconds
                        .get_or_create(&StageLabels {
                            run: id.clone(),
                            stage: stage.name.clone(),
                            state: render::lower(stage.state),
                        })
                        .set(ended - started);
                }
                if run.state == RunState::Running
                    && stage.state == StageState::Gating
                    && matches!(spec.gates.get(stage.gate), Some(Gate::Approval {}))
                {
                    pending_approvals += 1;
                }
            }
            for state in [
                ClusterState::Pending,
                ClusterState::Progressing,
                ClusterState::Succeeded,
                ClusterState::Failed,
                ClusterState::RolledBack,
            ] {
                let count = run
                    .stages
                    .iter()
                    .flat_map(|s| &s.clusters)
                    .filter(|c| c.state == state)
                    .count();
                self.clusters
                    .get_or_create(&CountLabels {
                        run: id.clone(),
                        state: render::lower(state),
                    })
                    .set(count as i64);
            }
            self.approvals
                .get_or_create(&RunLabel { run: id })
                .set(pending_approvals);
        }
    }

    pub fn render(&self) -> String {
        let _guard = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let mut registry = Registry::with_prefix("fleetnet");
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register(
            "build_info",
            "1, labelled with the version of fleetnet this controller runs",
            build_info,
        );
        let rollout = registry.sub_registry_with_prefix("rollout");
        rollout.register(
            "controller_leader",
            "1 while this controller holds the controller key",
            self.leader.clone(),
        );
        rollout.register(
            "runs",
            "1 per run, labelled with its revision, strategy and state",
            self.runs.clone(),
        );
        rollout.register(
            "stage_duration_seconds",
            "How long each started stage has taken (so far, while it runs)",
            self.stage_seconds.clone(),
        );
        rollout.register(
            "clusters",
            "Clusters of each run by state (pending, progressing, succeeded, failed, rolled-back)",
            self.clusters.clone(),
        );
        rollout.register(
            "approvals_pending",
            "Stages of each run waiting for `fleetnet rollout approve`",
            self.approvals.clone(),
        );
        let mut text = String::new();
        encode(&mut text, &registry).expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::Strategy, rollout};

    /// The docs' table of controller metrics is what is exported, labels
    /// included.
    #[test]
    fn the_documented_metrics_are_the_exported_ones() {
        let strategy: Strategy =
            serde_yaml::from_str("name: s\nstages: [ { name: a, selector: {} } ]").unwrap();
        let clusters = [("c1".to_string(), Default::default())].into();
        let mut run = rollout::start(1, 1, &strategy, &clusters, 0.0).unwrap();
        rollout::advance(&mut run, &Default::default(), 1.0);
        // Families are rendered once they have a sample.
        let metrics = ControllerMetrics::default();
        metrics.update(&[(run, 0)], 2.0);
        let rendered = metrics.render();
        assert_eq!(
            fleetnet_doc_check::metrics_in("docs/metrics.md", "## The controller's metrics"),
            fleetnet_doc_check::exported(&rendered)
        );
        assert_eq!(
            fleetnet_doc_check::labels_in("docs/metrics.md", "## The controller's metrics"),
            fleetnet_doc_check::exported_labels(&rendered)
        );
    }
}

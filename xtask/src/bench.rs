//! `cargo xtask bench [--quick]`: runs every benchmark with one results
//! file, then writes the figures as BENCHMARKS.md (quick mode: into
//! target/bench/, checking only that every benchmark reported).

use std::{
    collections::BTreeMap,
    fmt::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The benchmarks of fleetnet-benches, in the order they run.
const BENCHES: &[&str] = &[
    "datapath",
    "policy_compile",
    "control_plane",
    "fleet_scale",
    "throughput",
    "service_scale",
    "soak",
];

/// What a goal holds a figure to.
#[derive(Clone, Copy)]
enum Bound {
    /// The value at most this.
    AtMost(f64),
    /// The value at least this.
    AtLeast(f64),
    /// The value over its baseline's at least this.
    RatioAtLeast(f64),
    /// The value over its baseline's at most this.
    RatioAtMost(f64),
}

/// The goals users hold fleetnet to: the goal, and for those a benchmark
/// measures, the figure (by the start of its name) and its bound.
const GOALS: &[(&str, Option<(&str, Bound)>)] = &[
    (
        "service-VIP throughput >= 95% of pod-IP throughput",
        Some(("fleetnet, service VIP, 1 stream", Bound::RatioAtLeast(0.95))),
    ),
    (
        "throughput with pods at MTU 1500 >= 95% of pods at the path MTU (1450)",
        Some((
            "fleetnet, pod IP, pods at MTU 1500, 1 stream",
            Bound::RatioAtLeast(0.95),
        )),
    ),
    (
        "0 IP fragments on the underlay with pods at MTU 1500",
        Some((
            "fleetnet, pod IP, pods at MTU 1500, IP fragments",
            Bound::AtMost(0.0),
        )),
    ),
    (
        "native-routing throughput >= plain kernel routing's",
        Some((
            "fleetnet native routing, pod IP, 1 stream",
            Bound::RatioAtLeast(1.0),
        )),
    ),
    (
        "native-routing throughput >= 110% of the tunnel's",
        Some((
            "fleetnet native routing, pod IP, 1 stream(s), vs fleetnet, pod IP",
            Bound::RatioAtLeast(1.1),
        )),
    ),
    (
        "0 IP fragments on the underlay routing natively, pods at MTU 1500",
        Some((
            "fleetnet native routing, pod IP, IP fragments",
            Bound::AtMost(0.0),
        )),
    ),
    (
        "fleetnet pod-to-pod throughput >= the plain-VXLAN baseline",
        Some(("fleetnet, pod IP, 1 stream", Bound::RatioAtLeast(1.0))),
    ),
    (
        "connect rate at 10,000 services >= 95% of the rate at 1 service",
        Some(("fleetnet, 10000 services", Bound::RatioAtLeast(0.95))),
    ),
    (
        "connect rate at 10,000 services >= 2x the iptables baseline at 10,000",
        Some((
            "fleetnet over kube-proxy iptables, 10000 services",
            Bound::AtLeast(2.0),
        )),
    ),
    (
        "endpoint convergence p99 <= 250 ms at 50 clusters",
        Some((
            "endpoint convergence, 50 members, p99",
            Bound::AtMost(250.0),
        )),
    ),
    (
        "<= 1 KiB written to etcd per backend change at 5,000 backends",
        Some(("bytes written per backend change", Bound::AtMost(1024.0))),
    ),
    (
        "<= 1 KiB agent RSS per remote endpoint",
        Some(("agent memory per remote endpoint", Bound::AtMost(1024.0))),
    ),
    (
        "agent RSS <= 128 MiB at 4,096 clusters x 8 nodes x 30 pods, 5% of namespaces exported",
        Some(("agent RSS at 4096 clusters", Bound::AtMost(128.0))),
    ),
    (
        "agent ready <= 60 s after start at 4,096 clusters",
        Some(("agent start -> ready at 4096 clusters", Bound::AtMost(60.0))),
    ),
    (
        "endpoint-change convergence p99 <= 1 s to every real agent at 4,096 clusters",
        Some((
            "endpoint change convergence at 4096 clusters, p99",
            Bound::AtMost(1000.0),
        )),
    ),
    (
        "etcd within its default 2 GiB quota at 4,096 clusters",
        Some(("etcd database size", Bound::AtMost(2048.0))),
    ),
    (
        "per-packet cost with 32,768 node CIDRs + 50,000 endpoints <= 1.2x the small map",
        Some((
            "from-pod: other cluster (VXLAN), ipcache of 32768 node CIDRs + 50000 endpoints",
            Bound::RatioAtMost(1.2),
        )),
    ),
    (
        "from-pod to another cluster <= 4x the empty program",
        Some(("from-pod: other cluster (VXLAN)", Bound::RatioAtMost(4.0))),
    ),
    (
        "a packet of an established service connection <= 6x the empty program",
        Some((
            "from-pod: established connection to a VIP",
            Bound::RatioAtMost(6.0),
        )),
    ),
    (
        "connect rate to a pod IP >= plain VXLAN's",
        Some((
            "fleetnet, pod IP, connection per request",
            Bound::RatioAtLeast(1.0),
        )),
    ),
    (
        "from-pod <= 500 ns per packet on live traffic",
        Some(("from-pod (pod -> VXLAN)", Bound::AtMost(500.0))),
    ),
    (
        "no map entry left over after minutes of churn",
        Some((
            "map entries differing from before, both nodes",
            Bound::AtMost(0.0),
        )),
    ),
    (
        "no live conntrack entry to a deleted backend after its lifetime",
        Some((
            "live conntrack entries to deleted backends after their lifetime",
            Bound::AtMost(0.0),
        )),
    ),
    (
        "agent memory flat over the churn (<= 5% growth once warm)",
        Some((
            "agent RSS growth after the first third, c1/n1",
            Bound::AtMost(5.0),
        )),
    ),
];

/// How the figures are taken, said in the report.
const METHOD: &str = "The baselines run side by side with fleetnet: each network is its own \
fleet in a box of the same shape, all up at once, and runs alternate between them. \
\"plain VXLAN\" is a kernel overlay built as Flannel's vxlan backend builds it (one VXLAN \
device per node, routes, neighbour and FDB entries; no BPF). \"kube-proxy iptables\" is \
that overlay plus the nat-table chains kube-proxy's iptables mode writes (KUBE-SERVICES, \
KUBE-SVC-*, KUBE-SEP-* with the statistic match), loaded with iptables-restore (nf_tables \
backend). \"plain kernel routing\" is the same shape on a routed underlay (a router \
namespace holding each node's pod CIDR as a route, as a cloud route table does) with no \
agent and no BPF, the kernel routing pods' packets; fleetnet's native routing runs on that \
same topology. Pods are at MTU 1450 when tunnelled, 1500 when routed. from-overlay's and \
from-underlay's per-packet costs are taken on live traffic with BPF_ENABLE_STATS, because \
BPF_PROG_TEST_RUN carries no tunnel metadata and has no FIB or neighbours to route with; \
those figures include the kernel's own clock reads around each run. Convergence is measured with lightweight members (the \
agent's mesh watcher, each on its own etcd client, all in the benchmark's process), from \
the record written to each member receiving it.";

pub(crate) fn run(quick: bool, only: &[String]) -> Result<()> {
    if let Some(unknown) = only.iter().find(|name| !BENCHES.contains(&name.as_str())) {
        bail!(
            "--only: there is no benchmark {unknown:?}; the benchmarks are {}",
            BENCHES.join(", ")
        );
    }
    let dir = PathBuf::from("target/bench");
    std::fs::create_dir_all(&dir)?;
    let results = dir.join("results.jsonl");
    // The figures of the benchmarks not run again, from the last run.
    let kept = if only.is_empty() {
        Vec::new()
    } else {
        read(&results).context("--only keeps the other figures of a previous run")?
    };
    let _ = std::fs::remove_file(&results);
    // The fleet benchmarks run the agent binary of their own profile.
    let mut agent = vec!["build", "--package", "fleetnet-cli", "--bin", "fleetnet"];
    if !quick {
        agent.push("--release");
    }
    crate::cargo(&agent)?;
    let selected = BENCHES
        .iter()
        .filter(|bench| only.is_empty() || only.iter().any(|name| name == *bench));
    for bench in selected {
        let mut command = Command::new(env!("CARGO"));
        command
            .args(["bench", "--package", "fleetnet-benches", "--bench", bench])
            .env("FLEETNET_BENCH_OUT", std::path::absolute(&results)?);
        if quick {
            // The test build's artifacts: no optimised build just to check
            // the benchmarks run.
            command.args(["--profile", "dev"]);
            command.env("FLEETNET_BENCH_QUICK", "1");
        }
        crate::run(&mut command)?;
    }
    let mut figures = read(&results)?;
    let remeasured: Vec<String> = figures
        .iter()
        .filter_map(|figure| figure["group"].as_str().map(str::to_string))
        .collect();
    let earlier: Vec<Value> = kept
        .into_iter()
        .filter(|figure| {
            figure["group"]
                .as_str()
                .is_none_or(|group| !remeasured.iter().any(|g| g == group))
        })
        .collect();
    let partial = !earlier.is_empty();
    figures.extend(earlier);
    // The merged figures are the last run's from now on.
    let lines: Vec<String> = figures.iter().map(Value::to_string).collect();
    std::fs::write(&results, lines.join("\n") + "\n")?;
    let report = if quick {
        dir.join("BENCHMARKS.quick.md")
    } else {
        PathBuf::from("BENCHMARKS.md")
    };
    let mut text = render(&figures, quick);
    if partial {
        let note = format!(
            "Measured apart: {} ran on their own and replaced their tables; the other tables are \
             from an earlier full run.\n\n",
            only.join(", ")
        );
        let at = text.find("## Goals").unwrap_or(text.len());
        text.insert_str(at, &note);
    }
    std::fs::write(&report, text)?;
    eprintln!(
        "bench: {} figures written to {}",
        figures.len(),
        report.display()
    );
    Ok(())
}

fn read(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("the benchmarks wrote no results to {}", path.display()))?;
    let figures: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("bad result line {line:?}")))
        .collect::<Result<_>>()?;
    if figures.is_empty() {
        bail!("the benchmarks recorded no figures");
    }
    Ok(figures)
}

fn machine() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split(':').nth(1))
        .map_or("unknown CPU".to_string(), |m| m.trim().to_string());
    let cores = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    let kernel = read("/proc/sys/kernel/osrelease");
    format!("{model}, {cores} cores, Linux {}", kernel.trim())
}

fn render(figures: &[Value], quick: bool) -> String {
    let mut out = String::from("# Benchmarks\n\n");
    if quick {
        out.push_str(
            "Quick mode (small sizes, to check the benchmarks run): not figures to quote.\n\n",
        );
    }
    let _ = writeln!(
        out,
        "Measured by `cargo xtask bench` on {}. The figures to read are the ratios, \
         measured side by side in the same run; absolute numbers move with the machine \
         and whatever else runs on it.\n",
        machine()
    );
    out.push_str("Reproduce: `cargo xtask bench` as root on Linux >= 6.6 (it installs what it needs, builds, runs every benchmark and rewrites this file).\n\n");
    let _ = writeln!(out, "{METHOD}\n");
    out.push_str("## Goals\n\n| goal | measured | |\n|---|---|---|\n");
    for (goal, measure) in GOALS {
        let found = measure.and_then(|(name, bound)| {
            let figure = figures
                .iter()
                .find(|f| f["name"].as_str().is_some_and(|n| n.starts_with(name)))?;
            Some((figure, bound))
        });
        let (measured, verdict) = match found {
            Some((figure, bound)) => {
                let value = figure["value"].as_f64().unwrap_or(f64::NAN);
                let name = figure["name"].as_str().unwrap_or("");
                let unit = figure["unit"].as_str().unwrap_or("");
                let shown = format!("{value:.1} {unit} ({name})");
                let (shown, met) = match bound {
                    Bound::AtMost(max) => (shown, value <= max),
                    Bound::AtLeast(min) => (shown, value >= min),
                    Bound::RatioAtLeast(_) | Bound::RatioAtMost(_) => {
                        let ratio = figure["ratio"][0].as_f64().unwrap_or(f64::NAN);
                        let baseline = figure["ratio"][1].as_str().unwrap_or("");
                        // Each as its goal says it: a share of the
                        // baseline ("95% of"), or a multiple ("4x").
                        let (shown, met) = match bound {
                            Bound::RatioAtLeast(min) => {
                                (format!("{:.1}%", 100.0 * ratio), ratio >= min)
                            }
                            _ => (
                                format!("{ratio:.2}x"),
                                matches!(bound, Bound::RatioAtMost(max) if ratio <= max),
                            ),
                        };
                        (format!("{shown} ({name} vs {baseline})"), met)
                    }
                };
                (shown, if met { "met" } else { "missed" })
            }
            None => ("not measured yet".to_string(), ""),
        };
        let _ = writeln!(out, "| {goal} | {measured} | {verdict} |");
    }
    let mut groups: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    let mut order = Vec::new();
    for figure in figures {
        let group = figure["group"].as_str().unwrap_or("other");
        if !groups.contains_key(group) {
            order.push(group);
        }
        groups.entry(group).or_default().push(figure);
    }
    for group in order {
        let _ = writeln!(
            out,
            "\n## {group}\n\n| case | value | ratio |\n|---|---:|---|"
        );
        for figure in &groups[group] {
            let value = figure["value"].as_f64().unwrap_or(f64::NAN);
            let unit = figure["unit"].as_str().unwrap_or("");
            let ratio = match (figure["ratio"][0].as_f64(), figure["ratio"][1].as_str()) {
                (Some(ratio), Some(baseline)) if figure["name"].as_str() != Some(baseline) => {
                    format!("{ratio:.2}x {baseline}")
                }
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} | {value:.1} {unit} | {ratio} |",
                figure["name"].as_str().unwrap_or("?")
            );
        }
    }
    out
}

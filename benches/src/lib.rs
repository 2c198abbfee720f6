//! What the benchmarks share: quick mode (small sizes, so `cargo xtask
//! test` runs every benchmark and none can rot) and the figures they
//! record, one JSON line each, for `cargo xtask bench` to put into
//! BENCHMARKS.md.

use std::{fs, io::Write, os::fd::OwnedFd};

use serde::Serialize;

/// Set by `cargo xtask bench --quick`.
pub const QUICK_VARIABLE: &str = "FLEETNET_BENCH_QUICK";
/// The file figures are appended to.
pub const OUT_VARIABLE: &str = "FLEETNET_BENCH_OUT";

pub fn quick() -> bool {
    std::env::var_os(QUICK_VARIABLE).is_some_and(|v| v == "1")
}

/// `full` normally, `small` in quick mode.
pub fn size<T>(full: T, small: T) -> T {
    if quick() { small } else { full }
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// The table it belongs in.
    pub group: String,
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// The value over that of the case named `baseline`, same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<(f64, String)>,
}

impl Figure {
    pub fn new(group: &str, name: &str, value: f64, unit: &str) -> Self {
        Self {
            group: group.into(),
            name: name.into(),
            value,
            unit: unit.into(),
            ratio: None,
        }
    }

    pub fn versus(mut self, baseline_value: f64, baseline: &str) -> Self {
        self.ratio = Some((self.value / baseline_value, baseline.into()));
        self
    }

    /// Appends the figure to the results file, when one is set; a figure
    /// that cannot be written fails the benchmark.
    pub fn record(self) {
        let Some(path) = std::env::var_os(OUT_VARIABLE) else {
            return;
        };
        let line = serde_json::to_string(&self).expect("a figure always serializes");
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|error| panic!("cannot open {}: {error}", path.to_string_lossy()));
        writeln!(file, "{line}")
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.to_string_lossy()));
    }
}

/// Turns on the kernel's per-program run time and count (BPF_ENABLE_STATS)
/// for as long as the returned descriptor is open.
pub fn enable_run_stats() -> std::io::Result<OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|error| std::io::Error::other(format!("BPF_ENABLE_STATS failed: {error}")))
}

/// Run time (ns) and run count, summed over every loaded program named
/// `name` (each agent loads its own copy).
pub fn program_runs(name: &str) -> std::io::Result<(u64, u64)> {
    let mut total = (0, 0);
    for program in aya::programs::loaded_programs() {
        let program = program.map_err(std::io::Error::other)?;
        if program.name_as_str() == Some(name) {
            total.0 += program.run_time().as_nanos() as u64;
            total.1 += program.run_count();
        }
    }
    Ok(total)
}

//! `cargo xtask`: every developer and user workflow behind one entry point.
//!
//! xtask depends on nothing that needs the eBPF toolchain, so `cargo xtask
//! setup` builds and runs on a machine that has none of it yet.

mod bench;
mod checks;
mod fuzz;
mod image;
mod setup;

use std::{
    path::Path,
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "fleetnet's build, test, demo and bench workflows"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: Debian packages, the nightly rust-src
    /// component and bpf-linker (built against the nightly's LLVM). A fast
    /// no-op when everything is there. Every other task runs it first.
    Setup,
    /// Build the agent (with its eBPF object) and the test crates.
    Build,
    /// Format and lint checks, then every test: unit, packet (TestRun),
    /// wire and end-to-end on the fleet in a box, the images built and
    /// checked (the agent's joining a fleet in a box), a short fuzzing run
    /// of every decoder, and the benchmarks in quick mode. Needs root.
    Test,
    /// Build the images (the agent's and the fleet controller's), static
    /// binaries on an empty base, from the Containerfile with buildah, as
    /// OCI archives under target/images/; checks them and loads them into a
    /// local podman or docker when one runs.
    Image,
    /// Start a fleet in a box and show pods talking across clusters.
    Demo {
        /// Leave the fleet running; remove it later with --down.
        #[arg(long, conflicts_with = "down")]
        keep: bool,
        /// Remove a fleet left running by --keep.
        #[arg(long)]
        down: bool,
    },
    /// Benchmarks: per-packet cost of the datapath programs through
    /// BPF_PROG_TEST_RUN, the policy compiler at 1,000 clusters, and the
    /// control plane on the fleet in a box (etcd writes per backend change,
    /// agent memory per remote endpoint); writes BENCHMARKS.md.
    Bench {
        /// Small sizes, only to check every benchmark runs (part of `test`);
        /// the report goes to target/bench/BENCHMARKS.quick.md.
        #[arg(long)]
        quick: bool,
        /// Run only these benchmarks (comma-separated, e.g.
        /// `datapath,fleet_scale`); their tables replace the same tables
        /// of the last run's results (target/bench/results.jsonl), and the
        /// report says which were measured apart.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Fuzz the decoders of untrusted input (etcd values, annotations and
    /// labels, the config file, manifests) with `cargo fuzz`, each target
    /// for a bounded time; reports the executions of each and fails on a
    /// crash, naming the input.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run (default: all of them).
        targets: Vec<String>,
    },
}

fn main() -> ExitCode {
    if std::env::var_os("CI").is_some() && std::env::var_os("CARGO_INCREMENTAL").is_none() {
        // A CI run builds once from a fresh clone: incremental state only
        // costs time and disk (3.4 GiB of the test run's ~11).
        // SAFETY: first thing in main, before any thread exists.
        unsafe { std::env::set_var("CARGO_INCREMENTAL", "0") };
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::ensure(),
        Task::Build => setup::ensure().and_then(|()| build()),
        Task::Test => setup::ensure().and_then(|()| test()),
        Task::Image => setup::ensure().and_then(|()| image()),
        Task::Demo { keep, down } => setup::ensure().and_then(|()| demo(keep, down)),
        Task::Bench { quick, only } => setup::ensure().and_then(|()| bench::run(quick, &only)),
        Task::Fuzz { seconds, targets } => {
            setup::ensure().and_then(|()| fuzz::run_targets(seconds, &targets))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn build() -> Result<()> {
    cargo(&[
        "build",
        "--workspace",
        "--exclude",
        "dataplane-ebpf",
        "--all-targets",
    ])
}

/// What a fresh `cargo xtask test` writes under target/ and fuzz/target
/// (8.5 GiB at its peak, measured on a fresh clone, images included),
/// with some room.
const TEST_DISK_GIB: u64 = 10;

/// A disk that fills mid-build shows up only as the linker dying with
/// SIGBUS, so say beforehand when the room is short.
fn warn_if_disk_is_short() {
    let Ok(out) = Command::new("df").args(["-Pk", "."]).output() else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let free_kib = text
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|kib| kib.parse::<u64>().ok());
    if let Some(kib) = free_kib
        && kib < TEST_DISK_GIB << 20
    {
        eprintln!(
            "xtask: warning: {:.1} GiB free here, and a fresh `cargo xtask test` needs about \
             {TEST_DISK_GIB} GiB; if the disk fills, the linker dies with SIGBUS. Free some \
             space or run `cargo clean` first.",
            kib as f64 / (1u64 << 20) as f64
        );
    }
}

fn test() -> Result<()> {
    warn_if_disk_is_short();
    step("format check");
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["fmt", "--manifest-path", "fuzz/Cargo.toml", "--check"])?;
    step("clippy (userspace)");
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "dataplane-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    step("clippy (fuzz targets)");
    // As `cargo fuzz` builds them (`--cfg fuzzing`: no eBPF object), in a
    // target directory of their own so the workspace's build is kept.
    run(Command::new(env!("CARGO"))
        .args([
            "clippy",
            "--manifest-path",
            "fuzz/Cargo.toml",
            "--all-targets",
        ])
        .args(["--", "-D", "warnings"])
        .env("RUSTFLAGS", "--cfg fuzzing")
        .env("CARGO_TARGET_DIR", "target/fuzz-clippy"))?;
    step("clippy (eBPF programs)");
    run(Command::new("cargo")
        .args([
            "+nightly",
            "clippy",
            "--package",
            "dataplane-ebpf",
            "--release",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"]))?;
    step("crate graph and doc links");
    checks::crate_graph(Path::new("."))?;
    checks::doc_links(Path::new("."))?;
    step("build");
    // The rollout tests' agent of other versions (agent/src/test_build.rs),
    // built first: the plain build after it leaves target/debug/fleetnet
    // this build's.
    cargo(&[
        "build",
        "--package",
        "fleetnet-cli",
        "--bin",
        "fleetnet",
        "--features",
        "test-builds",
    ])?;
    std::fs::copy("target/debug/fleetnet", "target/debug/fleetnet-test-build")
        .context("copying the test build of the agent")?;
    // The fleet tests run the agent binary, so it must be current.
    cargo(&["build", "--package", "fleetnet-cli", "--bin", "fleetnet"])?;
    step("tests");
    cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "dataplane-ebpf",
        "--no-fail-fast",
    ])?;
    step("images");
    let built = image::build()?;
    let agent = image::check(&built)?;
    step("the agent from the image, end to end");
    // The reachability test of the fleet in a box, with every agent the
    // image's binary.
    run(Command::new(env!("CARGO"))
        .args(["test", "--package", "e2e-tests", "--test", "e2e"])
        .arg(E2E_WITH_IMAGE)
        .env("FLEETNET_BIN", std::path::absolute(&agent)?))?;
    step("fuzzing the decoders, briefly");
    fuzz::run_targets(fuzz::TEST_SECONDS, &[])?;
    step("benchmarks, quick mode");
    bench::run(true, &[])
}

/// The end-to-end test run again with the agent of the image.
const E2E_WITH_IMAGE: &str = "a_three_cluster_mesh_built_from_etcd";

fn image() -> Result<()> {
    let built = image::build()?;
    image::check(&built)?;
    for image in &built {
        eprintln!(
            "{}: {} ({:.0} s)",
            image.reference,
            image.archive.display(),
            image.seconds
        );
    }
    Ok(())
}

fn demo(keep: bool, down: bool) -> Result<()> {
    cargo(&["build", "--package", "fleetnet-cli", "--bin", "fleetnet"])?;
    let mut args = vec![
        "run",
        "--quiet",
        "--package",
        "fleetnet-demo",
        "--bin",
        "fleetnet-demo",
        "--",
    ];
    if keep {
        args.push("--keep");
    }
    if down {
        args.push("--down");
    }
    cargo(&args)
}

fn step(name: &str) {
    eprintln!("==> {name}");
}

pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(env!("CARGO")).args(args))
}

pub(crate) fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

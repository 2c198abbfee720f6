//! `cargo xtask fuzz`: runs the `cargo fuzz` targets in fuzz/ (decoders of
//! etcd values, annotations and labels, the config file, manifests) for a
//! bounded time each, and reports how many inputs each executed. Fails on
//! any crash, hang or out-of-memory, naming the input that caused it.
//!
//! Built without a sanitizer (the agent is safe Rust: what is looked for
//! is panics, overflows and hangs) but with debug assertions, so an
//! arithmetic overflow is a crash as it is in the unit tests. Inputs found
//! go to fuzz/target/corpus/, so the checked-in seeds in fuzz/corpus/ stay
//! as they are; crashes go to fuzz/artifacts/<target>/.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::run;

/// What `cargo xtask test` gives each target.
pub(crate) const TEST_SECONDS: u64 = 20;

/// One target's run.
struct Outcome {
    target: String,
    executions: Option<u64>,
    seconds: f64,
    corpus: usize,
    /// The input that crashed it, and why.
    crash: Option<(String, String)>,
}

pub(crate) fn run_targets(seconds: u64, only: &[String]) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask sits in the workspace")?
        .to_path_buf();
    let all = list(&root)?;
    if all.is_empty() {
        bail!("cargo fuzz lists no targets; is fuzz/Cargo.toml intact?");
    }
    if let Some(unknown) = only.iter().find(|target| !all.contains(target)) {
        bail!(
            "there is no fuzz target {unknown}; the targets are {}",
            all.join(", ")
        );
    }
    let targets: Vec<String> = if only.is_empty() { all } else { only.to_vec() };
    eprintln!("fuzz: building {}", targets.join(", "));
    let started = Instant::now();
    // `cargo fuzz build` takes one target, or builds them all.
    let one = match targets.as_slice() {
        [one] => Some(one),
        _ => None,
    };
    run(cargo_fuzz(&root).arg("build").args(FLAGS).args(one))?;
    eprintln!("fuzz: built in {:.0} s", started.elapsed().as_secs_f64());
    let binary_dir = root
        .join("fuzz/target")
        .join(host_triple()?)
        .join("release");
    // One target per core at a time; each is a single process.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut outcomes = Vec::new();
    for batch in targets.chunks(cores) {
        eprintln!("fuzz: {} for {seconds} s", batch.join(", "));
        let runs: Vec<Result<Outcome>> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|target| scope.spawn(|| fuzz(&root, &binary_dir, target, seconds)))
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("a fuzz runner thread"))
                .collect()
        });
        for outcome in runs {
            outcomes.push(outcome?);
        }
    }
    println!("fuzz executions without a crash, {seconds} s per target:");
    for outcome in &outcomes {
        let executions = outcome
            .executions
            .map_or("an unknown number of".to_string(), |n| n.to_string());
        let verdict = match &outcome.crash {
            None => "no crash".to_string(),
            Some((input, reason)) => format!("CRASHED ({reason}) on {input}"),
        };
        println!(
            "  {:<14} {executions:>10} executions in {:.0} s, {} corpus inputs: {verdict}",
            outcome.target, outcome.seconds, outcome.corpus
        );
    }
    let crashed: Vec<&Outcome> = outcomes.iter().filter(|o| o.crash.is_some()).collect();
    if !crashed.is_empty() {
        let inputs: Vec<String> = crashed
            .iter()
            .filter_map(|o| o.crash.as_ref())
            .map(|(input, _)| input.clone())
            .collect();
        bail!(
            "fuzzing found {} crashing input(s): {}; reproduce one with \
             `cargo +nightly fuzz run {} TARGET INPUT`, fix the decoder and \
             add a unit test for it",
            inputs.len(),
            inputs.join(", "),
            FLAGS.join(" ")
        );
    }
    Ok(())
}

/// No sanitizer, debug assertions (overflow checks) on, and the build
/// spread over the cores (cargo fuzz would use one codegen unit a crate).
const FLAGS: [&str; 5] = [
    "--sanitizer",
    "none",
    "--debug-assertions",
    "--codegen-units",
    "16",
];

fn cargo_fuzz(root: &Path) -> Command {
    let mut command = Command::new("cargo");
    command.args(["+nightly", "fuzz"]).current_dir(root);
    command
}

/// What `cargo fuzz` builds for: the nightly's host.
fn host_triple() -> Result<String> {
    let output = Command::new("rustc")
        .args(["+nightly", "-vV"])
        .output()
        .context("running rustc +nightly -vV")?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(|host| host.trim().to_string())
        .context("rustc +nightly -vV names no host")
}

fn list(root: &Path) -> Result<Vec<String>> {
    let output = cargo_fuzz(root)
        .arg("list")
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo fuzz list; `cargo xtask setup` installs cargo-fuzz")?;
    if !output.status.success() {
        bail!("cargo fuzz list failed ({})", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect())
}

fn fuzz(root: &Path, binary_dir: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let fuzz_dir = root.join("fuzz");
    let found = fuzz_dir.join("target/corpus").join(target);
    let seeds = fuzz_dir.join("corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    let log_path = fuzz_dir.join("target/logs").join(format!("{target}.log"));
    for dir in [
        &found,
        &artifacts,
        &log_path.parent().expect("a log directory").to_path_buf(),
    ] {
        std::fs::create_dir_all(dir)?;
    }
    let log = std::fs::File::create(&log_path)?;
    let started = Instant::now();
    // The binary `cargo fuzz build` made, run directly: `cargo fuzz run`
    // would check the build again for every target.
    let status = Command::new(binary_dir.join(target))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(format!("-max_total_time={seconds}"))
        // An input that takes this long is a hang, and a crash.
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .arg(&found)
        .arg(&seeds)
        .current_dir(&fuzz_dir)
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("cannot run fuzz target {target}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let crash = if status.success() {
        None
    } else {
        eprintln!(
            "fuzz: {target} failed; the end of {}:\n{}",
            log_path.display(),
            tail(&text, 60)
        );
        let input = text
            .lines()
            .find_map(|line| line.split("Test unit written to ").nth(1))
            .map(|path| display(root, path.trim()))
            .unwrap_or_else(|| format!("(no input saved; see {})", log_path.display()));
        let reason = text
            .lines()
            .find_map(|line| line.split("ERROR: libFuzzer: ").nth(1))
            .or_else(|| {
                text.lines()
                    .find(|line| line.contains("panicked at"))
                    .map(str::trim)
            })
            .unwrap_or("exited with an error")
            .to_string();
        Some((input, reason))
    };
    Ok(Outcome {
        target: target.to_string(),
        executions: executions(&text),
        seconds,
        corpus: std::fs::read_dir(&found).map_or(0, |entries| entries.count()),
        crash,
    })
}

/// libFuzzer's count of inputs run: its final statistics, or its last
/// `Done N runs` line.
fn executions(log: &str) -> Option<u64> {
    let stat = log.lines().rev().find_map(|line| {
        line.strip_prefix("stat::number_of_executed_units:")
            .and_then(|n| n.trim().parse().ok())
    });
    stat.or_else(|| {
        log.lines().rev().find_map(|line| {
            line.strip_prefix("Done ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
    })
}

fn display(root: &Path, path: &str) -> String {
    let path = PathBuf::from(path);
    let absolute = if path.is_absolute() {
        path
    } else {
        root.join(path)
    };
    absolute.display().to_string()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_come_from_the_final_stats_or_the_done_line() {
        let stats = "#65536\tpulse  cov: 10 ft: 20 corp: 3/40b exec/s: 3000 rss: 80Mb\n\
                     Done 71234 runs in 21 second(s)\n\
                     stat::number_of_executed_units: 71234\n\
                     stat::average_exec_per_sec:     3392\n";
        assert_eq!(executions(stats), Some(71234));
        assert_eq!(executions("Done 512 runs in 1 second(s)\n"), Some(512));
        assert_eq!(executions("ERROR: libFuzzer: deadly signal\n"), None);
    }
}

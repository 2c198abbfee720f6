//! Debian's Chromium, headless, in a namespace of the fleet in a box: a
//! page loaded as a user's browser loads it, its scripts run, then its
//! DOM or a screenshot taken.

use std::{
    io,
    path::{Path, PathBuf},
    process::Output,
};

use crate::netns::Netns;

/// Where Debian installs it (`cargo xtask setup` does).
const CHROMIUM: &str = "/usr/bin/chromium";
/// Virtual time the page gets to fetch and draw before it is read: the
/// clock stops while requests are in flight, so slow answers still land.
const BUDGET_MS: &str = "8000";

/// Where the UI test leaves its screenshots: target/artifacts/ui.
pub fn artifacts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts/ui")
}

fn chromium(netns: &Netns, profile: &Path, args: &[&str]) -> io::Result<Output> {
    if !Path::new(CHROMIUM).exists() {
        return Err(io::Error::other(format!(
            "{CHROMIUM} is missing: the UI test needs Debian's chromium (cargo xtask setup installs it)"
        )));
    }
    let output = netns
        .command(CHROMIUM)?
        // Root (as the tests run) needs --no-sandbox.
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args([
            "--no-first-run",
            "--disable-extensions",
            "--window-size=1400,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={BUDGET_MS}"))
        .args(args)
        .output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "chromium {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output)
}

/// The window pages are loaded in, unless a screenshot asks for another.
pub const WINDOW: (u32, u32) = (1400, 1000);

/// The DOM of `url` once its scripts ran.
pub fn dump_dom(netns: &Netns, profile: &Path, url: &str) -> io::Result<String> {
    let window = format!("--window-size={},{}", WINDOW.0, WINDOW.1);
    let output = chromium(netns, profile, &[&window, "--dump-dom", url])?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A PNG of `url` in a window of `size`, once its scripts ran, written
/// to `path`.
pub fn screenshot(
    netns: &Netns,
    profile: &Path,
    url: &str,
    size: (u32, u32),
    path: &Path,
) -> io::Result<()> {
    let window = format!("--window-size={},{}", size.0, size.1);
    let target = format!("--screenshot={}", path.display());
    chromium(netns, profile, &[&window, &target, url])?;
    if std::fs::metadata(path)?.len() == 0 {
        return Err(io::Error::other(format!(
            "chromium wrote an empty {}",
            path.display()
        )));
    }
    Ok(())
}

//! `cargo xtask demo`: the scenario of [`fleetnet_demo`], with a pause
//! between steps; `--keep` leaves the fleet running, `--down` removes a
//! fleet left running.

use std::time::Duration;

use fleetnet_demo::{self as demo, Options};
use fleetnet_testing::{fleet_in_a_box::FleetInABox, progress};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = |keep| Options {
        pause: Duration::from_secs(1),
        keep,
    };
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => demo::run(&options(false)).map(drop),
        ["--keep"] => demo::run(&options(true)).map(drop),
        ["--down"] => FleetInABox::tear_down_kept().map(|removed| progress(&removed)),
        _ => Err(std::io::Error::other(
            "usage: fleetnet-demo [--keep | --down]",
        )),
    };
    if let Err(error) = result {
        eprintln!("demo: {error}");
        std::process::exit(1);
    }
}

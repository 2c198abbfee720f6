//! Running the datapath's programs through BPF_PROG_TEST_RUN: no network
//! needed, exact bytes in and out, maps seeded and read through the same
//! typed writers the agent uses.

use aya::programs::{ProgramError, TestRun, TestRunOptions};
use fleetnet_agent::datapath::{Datapath, MapSizes};

/// Small maps: many tests load their own datapath side by side.
pub const TEST_SIZES: MapSizes = MapSizes {
    ipcache: 1024,
    endpoints: 256,
    metrics: 256,
    services: 64,
    backends: 256,
    conntrack: 1024,
    policy: 1024,
    maglev_table_size: 251,
    max_service_ids: 15,
};

/// Loads a private (unpinned) copy of the datapath. Fails with the reason
/// when the kernel refuses, which on these machines means a real bug.
pub fn load() -> Datapath {
    load_at(None)
}

/// Like [`load`], with the maps pinned under `pin_dir` if given.
pub fn load_at(pin_dir: Option<&std::path::Path>) -> Datapath {
    load_sized(TEST_SIZES, pin_dir)
}

/// Like [`load_at`], with maps of `sizes`.
pub fn load_sized(sizes: MapSizes, pin_dir: Option<&std::path::Path>) -> Datapath {
    crate::require_root();
    Datapath::load(sizes, pin_dir).unwrap_or_else(|error| panic!("loading the datapath: {error}"))
}

/// What one run of a program did to a packet.
#[derive(Debug)]
pub struct Outcome {
    /// The TC action the program returned.
    pub action: i32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
}

pub fn run(datapath: &mut Datapath, program: &str, packet: &[u8]) -> Outcome {
    try_run(datapath, program, packet)
        .unwrap_or_else(|error| panic!("BPF_PROG_TEST_RUN of {program}: {error:?}"))
}

/// Like [`run`], but returns the kernel's refusal instead of failing. The
/// kernel refuses frames shorter than the L3 header their ethertype
/// announces before the program ever sees them.
pub fn try_run(
    datapath: &mut Datapath,
    program: &str,
    packet: &[u8],
) -> Result<Outcome, ProgramError> {
    let mut out = vec![0u8; packet.len() + 256];
    let classifier = datapath.program(program).expect("program is in the object");
    let mut options = TestRunOptions::new();
    options.data_in = Some(packet);
    options.data_out = Some(&mut out);
    let result = classifier.test_run(options)?;
    out.truncate(result.data_size_out as usize);
    Ok(Outcome {
        action: result.return_value as i32,
        packet: out,
    })
}

/// Median nanoseconds of one run of `program` on each of `packets` (one
/// call each, so every run starts from the packet as given: for programs
/// that rewrite it in place, such as load balancing).
pub fn ns_each(datapath: &mut Datapath, program: &str, packets: &[Vec<u8>]) -> f64 {
    let classifier = datapath.program(program).expect("program is in the object");
    let mut samples: Vec<f64> = packets
        .iter()
        .map(|packet| {
            let mut options = TestRunOptions::new();
            options.data_in = Some(packet);
            let result = classifier.test_run(options).expect("BPF_PROG_TEST_RUN");
            result.duration.as_nanos() as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Median nanoseconds per run of `program` on `packet`.
///
/// BPF_PROG_TEST_RUN repeats a program on the *same* buffer, so a program
/// that decrements the TTL changes its own path after enough repeats. Each
/// call therefore repeats only `repeat` times (the packet's TTL must stay
/// above 1 that long), and `calls` calls give the median.
pub fn ns_per_packet(
    datapath: &mut Datapath,
    program: &str,
    packet: &[u8],
    repeat: u32,
    calls: usize,
) -> f64 {
    let classifier = datapath.program(program).expect("program is in the object");
    let mut samples: Vec<f64> = (0..calls)
        .map(|_| {
            let mut options = TestRunOptions::new();
            options.data_in = Some(packet);
            options.repeat = repeat;
            let result = classifier.test_run(options).expect("BPF_PROG_TEST_RUN");
            // The kernel reports the mean duration of one run.
            result.duration.as_nanos() as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

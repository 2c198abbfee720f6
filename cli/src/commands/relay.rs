//! `fleetnet relay`: every node's flows and status, fleet-wide.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Args;
use fleetnet_relay::{DEFAULT_AGENT_PORT, DEFAULT_LISTEN, RelayOptions};
use fleetnet_store::TlsFiles;

use crate::{etcd_args::EtcdArgs, output::failed};

#[derive(Args)]
pub(crate) struct RelayArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Serve /status, /flows, /map, /rollouts and the web UI here (plain
    /// HTTP: keep it on loopback or behind the cluster's network policy,
    /// as Hubble Relay's port).
    #[arg(long, value_name = "ADDRESS", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// The port of every agent's observe listener (observe.relay-listen).
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_AGENT_PORT)]
    agent_port: u16,
    /// The fleet CA's certificate, which signed the agents' certificates.
    #[arg(long, value_name = "FILE")]
    tls_ca: PathBuf,
    /// The relay's certificate (`fleetnet fleet ca issue --relay`).
    #[arg(long, value_name = "FILE")]
    tls_cert: PathBuf,
    /// Its key.
    #[arg(long, value_name = "FILE")]
    tls_key: PathBuf,
    /// Seconds between two rounds over a cluster's agents; the agents are
    /// listed in etcd every ten.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    interval: f64,
    /// Merged flows kept for `fleetnet observe --fleet`.
    #[arg(long, value_name = "FLOWS", default_value_t = 65_536)]
    flows_kept: usize,
}

pub(super) fn run(args: RelayArgs) -> ExitCode {
    if !(args.interval.is_finite() && (0.1..=3600.0).contains(&args.interval)) {
        return failed(format!(
            "--interval {} is not between 0.1 and 3600 seconds",
            args.interval
        ));
    }
    let options = RelayOptions {
        listen: args.listen,
        agent_port: args.agent_port,
        tls: TlsFiles {
            ca_file: args.tls_ca,
            cert_file: Some(args.tls_cert),
            key_file: Some(args.tls_key),
        },
        interval: Duration::from_secs_f64(args.interval),
        flows_kept: args.flows_kept.max(1),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return failed(format!("cannot start a runtime: {error}")),
    };
    let result = runtime.block_on(async {
        let etcd = args
            .etcd
            .client()
            .await
            .map_err(|error| error.to_string())?;
        fleetnet_relay::run(etcd, options).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => failed(error),
    }
}

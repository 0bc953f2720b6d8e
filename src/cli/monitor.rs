//! `imgstream monitor`: the group's lag per partition, in records and seconds, at `/metrics`,
//! whether or not a consumer is alive. One per group; it never joins the group.

use super::parse;
use clap::Args;
use imgstream::config::Settings;
use imgstream::group_lag::{self, MonitorOptions};
use imgstream::shutdown::Shutdown;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args)]
pub struct MonitorArgs {
    /// Serve /metrics (Prometheus), /healthz and /readyz here
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9465")]
    metrics_addr: std::net::SocketAddr,
    /// How often the group's offsets are read (e.g. 5s, 1m; a bare number is seconds)
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse::duration)]
    interval: Duration,
}

pub async fn run(settings: &Settings, args: MonitorArgs) -> Result<ExitCode, String> {
    let shutdown = Shutdown::on_signals();
    let opts = MonitorOptions {
        addr: args.metrics_addr,
        interval: args.interval.max(Duration::from_millis(100)),
    };
    let addr = group_lag::start(settings, opts, shutdown.clone()).await?;
    println!(
        "group lag of {} at http://{addr}/metrics",
        settings.kafka.group_id
    );
    shutdown.triggered().await;
    Ok(ExitCode::SUCCESS)
}

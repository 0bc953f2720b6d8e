//! The `imgstream` command line: parse, load settings, call the library, print. Every failure
//! ends as one line on stderr and a non-zero exit code. The commands, their flags and handlers
//! are in [`cli`], one file each; this file starts the runtime and dispatches.

mod cli;

use clap::Parser;
use cli::{Cli, Command};
use imgstream::config::Settings;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    keep_large_buffers_mapped();
    let cli = Cli::parse();
    let telemetry = match cli::logging::init() {
        Ok(telemetry) => telemetry,
        Err(message) => {
            eprintln!("imgstream: tracing: {message}");
            return ExitCode::FAILURE;
        }
    };
    // One async thread, with decoding, hashing and blocking librdkafka calls on the blocking pool.
    // Measured on the consumer (README, "Choices the measurements made"): the multi-threaded
    // runtime spent 4.8 context switches per 16 KiB image handing HTTP and Kafka work between
    // threads, this one 1.1, and CPU per image fell by 10-18% at the same throughput.
    let mut builder = tokio::runtime::Builder::new_current_thread();
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("imgstream: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("imgstream: {}", imgstream::config::redact(&message));
            ExitCode::FAILURE
        }
    };
    // Spans still queued go to the collector now (the SDK waits at most 5 s).
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    // The work is done and reported; what is left is saying goodbye to the services (a consumer
    // leaving its group), which must not hold the process when a service stopped answering.
    let limit = Duration::from_secs(10);
    runtime.shutdown_timeout(limit);
    if !imgstream::kafka::wait_for_closes(limit) {
        eprintln!(
            "imgstream: Kafka did not confirm that this consumer left its group within {}s; exiting anyway (the group hands its partitions on after its session timeout)",
            limit.as_secs()
        );
    }
    code
}

/// Large buffers freed stay with the allocator for the next one. librdkafka reads each fetch
/// response (up to 8 MiB, or one larger record) into a fresh buffer, and glibc's defaults hand
/// such a buffer back to the kernel when it is freed, so every fetch faulted in and zeroed its
/// pages again: on 2 MiB images that was about 40% of librdkafka's receiving thread. With buffers
/// up to 32 MiB kept in the heap, the consumer's CPU per 2 MiB image went from a median of 2.5 ms
/// (six runs) to 2.1 ms (nine runs; README, "Choices the measurements made"). Trimming still
/// returns free heap beyond 64 MiB.
fn keep_large_buffers_mapped() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's thresholds; it is called before any other thread
    // exists, and a refused value leaves the defaults in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let settings = Settings::load().map_err(|e| format!("configuration: {e}"))?;
    match cli.command {
        Command::Setup(args) => cli::setup::run(&settings, args).await,
        Command::Produce(args) => cli::produce::run(&settings, args).await,
        Command::Consume(args) => cli::consume::run(&settings, args).await,
        Command::Status(args) => cli::audit::status(&settings, args).await,
        Command::Verify(args) => cli::audit::verify(&settings, args).await,
        Command::Erase(args) => cli::erase::erase(&settings, args).await,
        Command::Retain(args) => cli::erase::retain(&settings, args).await,
        Command::Rewind(args) => cli::rewind::run(&settings, args).await,
        Command::Dlq(command) => cli::dlq::run(&settings, command).await,
        Command::Serve(args) => cli::serve::run(&settings, args).await,
        Command::Monitor(args) => cli::monitor::run(&settings, args).await,
    }
}

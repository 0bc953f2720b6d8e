//! `imgstream serve`: the gallery, the JSON API and the pipeline overview, until a signal.

use clap::Args;
use imgstream::config::{ServeSettings, Settings};
use imgstream::serve::{self, ServeOptions};
use imgstream::shutdown::Shutdown;
use std::process::ExitCode;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on; 127.0.0.1 keeps it on this machine. Any other address needs
    /// sign-in (IMGSTREAM_OIDC_ISSUER and IMGSTREAM_OIDC_AUDIENCE)
    #[arg(long, env = "IMGSTREAM_SERVE_ADDR", default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// Thumbnails made at once (default: the number of cores)
    #[arg(long)]
    thumbnail_makers: Option<usize>,
}

pub async fn run(settings: &Settings, args: ServeArgs) -> Result<ExitCode, String> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let opts = ServeOptions {
        addr: args.addr,
        thumbnail_makers: args.thumbnail_makers.unwrap_or(cores).max(1),
        security: ServeSettings::load().map_err(|e| e.to_string())?,
    };
    let serving = serve::start(settings, opts).await?;
    println!("gallery at http://{}/", serving.addr);
    let shutdown = Shutdown::on_signals();
    tokio::select! {
        _ = shutdown.triggered() => Ok(ExitCode::SUCCESS),
        _ = serving.wait() => Err("the server stopped on its own (see the log above)".into()),
    }
}

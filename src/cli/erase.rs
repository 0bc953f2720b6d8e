//! `imgstream erase` and `imgstream retain`: forget images on request, or once they are older
//! than the retention period, each run kept as an erasure (see `imgstream::erase`).

use imgstream::config::Settings;
use imgstream::erase::{self, EraseOptions, EraseReport, Request};
use imgstream::wiring;
use std::io::IsTerminal;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct EraseArgs {
    /// Erase this customer's images (all of them so far, or those created before --before)
    #[arg(long, value_name = "CUSTOMER")]
    customer: Option<String>,
    /// With --customer: only images created before this RFC 3339 time, or this long ago (30d)
    #[arg(long, value_name = "TIME")]
    before: Option<String>,
    /// Erase these images by id (repeat the flag or list several)
    #[arg(long = "image", value_name = "ID", num_args = 1..)]
    images: Vec<String>,
    /// With --customer: record the erasure even if no image of the customer is stored yet, so
    /// that their records still on the topic are never stored
    #[arg(long, requires = "customer")]
    record_anyway: bool,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
pub struct RetainArgs {
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Say what would be erased, change nothing
    #[arg(long)]
    dry_run: bool,
    /// Rows (with their objects) removed per batch
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Who asks, kept with the erasure (default: $USER)
    #[arg(long, value_name = "WHO")]
    requested_by: Option<String>,
    /// Print the report as JSON on stdout
    #[arg(long)]
    json: bool,
}

impl EraseArgs {
    /// The request the flags make; every mistake is one line, found before anything changes.
    fn request(&self) -> Result<Request, String> {
        match (&self.customer, self.images.is_empty()) {
            (None, true) => Err(
                "erase needs a selector: --customer C [--before T], or --image ID…".into(),
            ),
            (Some(_), false) => Err("give --customer or --image, not both".into()),
            (None, false) if self.before.is_some() => Err(
                "--before applies to --customer; an image erased by id goes whatever its age".into(),
            ),
            (Some(customer), true) => Ok(Request::Customer {
                customer_id: customer.clone(),
                before: self
                    .before
                    .as_deref()
                    .map(|t| super::parse::since(t).map_err(|e| format!("--before: {e}")))
                    .transpose()?,
            }),
            (None, false) => self
                .images
                .iter()
                .flat_map(|s| s.split(','))
                .map(|id| {
                    uuid::Uuid::parse_str(id.trim()).map_err(|_| {
                        format!("--image {id:?} is not an image id (a UUID such as 3f2a0c1e-8b7d-4c6e-9a51-0d2e4f6a8b9c)")
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Request::Images),
        }
    }
}

pub async fn erase(settings: &Settings, args: EraseArgs) -> Result<ExitCode, String> {
    let request = args.request()?;
    run(settings, &request, &args.run, args.record_anyway).await
}

pub async fn retain(settings: &Settings, args: RetainArgs) -> Result<ExitCode, String> {
    let Some(period) = settings.retention else {
        println!("IMGSTREAM_RETENTION is unset: images are kept forever, nothing to erase");
        return Ok(ExitCode::SUCCESS);
    };
    run(settings, &Request::Retention(period), &args.run, false).await
}

async fn run(
    settings: &Settings,
    request: &Request,
    args: &RunArgs,
    record_anyway: bool,
) -> Result<ExitCode, String> {
    let index = wiring::index(settings).await.map_err(|e| e.to_string())?;
    let store = wiring::store(settings).map_err(|e| e.to_string())?;
    let opts = EraseOptions {
        dry_run: args.dry_run,
        batch_size: args.batch_size.max(1),
        requested_by: args
            .requested_by
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unknown".into()),
        record_anyway,
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} rows erased  {per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let progress = |done: u64, total: u64| {
        if let Some(bar) = &bar {
            bar.set_length(total.max(done));
            bar.set_position(done);
        } else {
            tracing::info!(removed = done, of = total, "erasing");
        }
    };
    let result = erase::erase(settings, &index, &store, request, &opts, &progress).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    index.close().await;
    let report = result.map_err(|e| e.to_string())?;
    print(&report, args.json)?;
    Ok(match report.dry_run || report.finished {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(2),
    })
}

fn print(report: &EraseReport, json: bool) -> Result<(), String> {
    if json {
        super::print_json(report)
    } else {
        print!("{}", report.render());
        Ok(())
    }
}

//! Tuning sweep: for every point of a grid of server knobs, start the tiergate server with
//! those knobs, run a scenario's load levels against it, stop it; then one table, rows
//! appended to CSV and JSON lines, and a throughput-vs-latency chart (SVG).
//!
//! cargo run --release --example sweep -- --scenario loadtests/scenarios/chat-128.toml \
//!     --grid loadtests/scenarios/sweep-grid.toml --itl-target-ms 50

#[path = "../bench/mod.rs"]
mod bench;
mod chart;
mod grid;
mod server;

use bench::client::Target;
use bench::report::{self, Row};
use bench::runner::{self, Ctx};
use bench::scenario::Scenario;
use clap::Parser;
use grid::{Grid, Point};
use server::Server;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "sweep",
    about = "Run a scenario against tiergate once per point of a grid of server knobs"
)]
struct Args {
    /// Scenario file (TOML); its concurrency (or rate) list is run at every grid point.
    #[arg(long)]
    scenario: PathBuf,
    /// Grid file (TOML): `model` and a `[knobs]` table of value lists.
    #[arg(long)]
    grid: PathBuf,
    /// The tiergate binary to start.
    #[arg(long, default_value = "target/release/tiergate")]
    server_bin: PathBuf,
    /// Config copied for each point, with the knobs set in the model's [[models]] block.
    #[arg(long, default_value = "config/tiergate.toml")]
    base_config: PathBuf,
    /// Where the configs, server logs, sweep.csv, sweep.jsonl and sweep.svg go.
    #[arg(long, default_value = "loadtests/results")]
    out_dir: PathBuf,
    /// How long a server may take to answer /ready (model loading; a first start downloads).
    #[arg(long, default_value_t = 600)]
    ready_timeout_secs: u64,
    /// Draw a horizontal line at this p95 inter-token latency (the service target).
    #[arg(long)]
    itl_target_ms: Option<f64>,
    /// Override the scenario's concurrency list (comma-separated), e.g. for a short trial.
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Override the scenario's requests per level.
    #[arg(long)]
    requests: Option<usize>,
    /// Override the scenario's max_tokens.
    #[arg(long)]
    max_tokens: Option<u32>,
}

impl Args {
    fn scenario(&self) -> Result<Scenario, String> {
        let mut s = Scenario::from_file(&self.scenario)?;
        if !self.concurrency.is_empty() {
            (s.concurrency, s.rate) = (self.concurrency.clone(), Vec::new());
        }
        s.requests = self.requests.unwrap_or(s.requests);
        s.max_tokens = self.max_tokens.unwrap_or(s.max_tokens);
        s.validate()?;
        Ok(s)
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args).await {
        eprintln!("sweep: {e}");
        std::process::exit(2);
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

async fn run(args: &Args) -> Result<(), String> {
    let scenario = args.scenario()?;
    let grid = Grid::from_toml(&read(&args.grid)?).map_err(|e| format!("grid: {e}"))?;
    let model = grid.model.clone().unwrap_or_else(|| scenario.model.clone());
    let base = read(&args.base_config)?;
    if !args.server_bin.exists() {
        return Err(format!(
            "no server binary at {} (cargo build --release, or --server-bin)",
            args.server_bin.display()
        ));
    }
    std::fs::create_dir_all(&args.out_dir).map_err(|e| e.to_string())?;
    let (csv, jsonl) = (
        args.out_dir.join("sweep.csv"),
        args.out_dir.join("sweep.jsonl"),
    );
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (n, point) in grid.points().iter().enumerate() {
        let config = grid::config_for(&base, &model, point)?;
        match run_point(args, &scenario, n, point, &config).await {
            Ok(point_rows) => {
                // Appended per point, so the rows of finished points survive a later failure.
                report::append(&point_rows, &csv, &jsonl)?;
                rows.extend(point_rows);
            }
            Err(e) => {
                eprintln!("sweep: point {n} failed: {e}");
                failures.push(format!("{}: {e}", point_text(point)));
            }
        }
    }
    print!("{}", report::table(&rows));
    let svg = args.out_dir.join("sweep.svg");
    let title = format!("{}: throughput vs p95 inter-token latency", scenario.name);
    chart::draw(&svg, &title, &series(&rows), args.itl_target_ms)?;
    eprintln!(
        "rows appended to {}, chart in {}",
        csv.display(),
        svg.display()
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} point(s) failed: {}",
            failures.len(),
            failures.join("; ")
        ))
    }
}

fn point_text(point: &Point) -> String {
    let labels: Vec<String> = grid::labels(point)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    labels.join(" ")
}

/// One server start, the scenario against it, the server stopped (also on error: `Drop`).
async fn run_point(
    args: &Args,
    scenario: &Scenario,
    n: usize,
    point: &Point,
    config: &str,
) -> Result<Vec<Row>, String> {
    let config_path = args.out_dir.join(format!("sweep-config-{n}.toml"));
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let log = args.out_dir.join(format!("sweep-server-{n}.log"));
    eprintln!(
        "sweep: point {n} ({}): starting {}",
        point_text(point),
        args.server_bin.display()
    );
    let mut server = Server::start(&args.server_bin, &config_path, &log)?;
    server
        .wait_ready(Duration::from_secs(args.ready_timeout_secs))
        .await?;
    let target = Target {
        url: server.url.clone(),
        api_key: None,
        keep_alive: false,
    };
    let ctx = Ctx::new(target, scenario.clone(), Some(server.pid()))?;
    let rows = runner::run_scenario(&ctx, &grid::labels(point)).await;
    server.stop();
    Ok(rows)
}

/// One chart line per knob setting, its points in load order; levels without a p95 ITL
/// (no successful streamed request) are left out rather than drawn at zero.
fn series(rows: &[Row]) -> Vec<chart::Series> {
    let mut out: Vec<chart::Series> = Vec::new();
    for r in rows {
        let label = r.labels_text(" ");
        let Some(itl) = r.summary.itl_ms[1] else {
            continue;
        };
        let point = (r.summary.output_tok_s, itl, r.load.to_string());
        match out.iter_mut().find(|s| s.label == label) {
            Some(s) => s.points.push(point),
            None => out.push(chart::Series {
                label,
                points: vec![point],
            }),
        }
    }
    out
}

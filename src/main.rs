//! The `perisai` command line. Wiring only; everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

use perisai::bank::BankSet;
use perisai::config::Settings;
use perisai::event::{MediaRef, UploadEvent, UPLOAD_SCHEMA};
use perisai::hash::pdq;
use perisai::media::decode::{self, DecodeLimits};
use perisai::metrics::{Metrics, MetricsServer, Readiness};
use perisai::pipeline::Worker;
use perisai::screen::Mode;
use perisai::{app, demo};

#[derive(Parser)]
#[command(name = "perisai", version, about = "Screens uploaded images: hash banks and a classifier, Kafka in, verdicts out")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a worker: consume upload events, produce verdicts, serve metrics.
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the whole path on an embedded broker with sample media, print the verdicts.
    Demo {
        #[arg(long, default_value = "127.0.0.1:0")]
        metrics_listen: String,
        /// Keep serving /metrics this many seconds after the verdicts are in.
        #[arg(long, default_value_t = 0)]
        linger_secs: u64,
    },
    /// Screen local files without Kafka: one verdict JSON per line (media_id = the path as given).
    Scan {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// PDQ-hash files like pdq-photo-hasher: `HASH,QUALITY,FILE` per line.
    Hash {
        /// Hash at full resolution (default: the `cli` convention, 512×512 above 512 px).
        #[arg(long)]
        full: bool,
        /// Print the 8 dihedral hashes (reference order), then quality, then file.
        #[arg(long)]
        dihedral: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the effective configuration, or every validation error (exit 2).
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Hash bank tools.
    Bank {
        #[command(subcommand)]
        command: BankCommand,
    },
}

#[derive(Subcommand)]
enum BankCommand {
    /// Load every configured bank and print its entry counts (errors name file and line).
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(config),
        Command::Hash { full, dihedral, files } => hash_files(full, dihedral, &files),
        other => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
            match runtime.block_on(async_main(other)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("perisai: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn async_main(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => run(config).await,
        Command::Demo { metrics_listen, linger_secs } => {
            init_logging("warn", "text");
            let report =
                demo::run(demo::DemoOptions { metrics_listen, linger: Duration::from_secs(linger_secs) }).await?;
            print!("{}", demo::render(&report));
            Ok(ExitCode::SUCCESS)
        }
        Command::Scan { config, files } => scan(config, files).await,
        Command::Bank { command: BankCommand::Check { config } } => {
            let settings = load_settings(config.as_deref())?;
            let metrics = Metrics::new();
            let banks = BankSet::load(&settings.banks, &metrics)?;
            for bank in &banks.banks {
                let counts: Vec<String> = [perisai::bank::Signal::Md5, perisai::bank::Signal::Sha256, perisai::bank::Signal::Pdq]
                    .iter()
                    .map(|s| format!("{}={}", s.as_str(), bank.count(*s)))
                    .collect();
                println!("{} ({}): {}", bank.name(), bank.settings.action.as_str(), counts.join(" "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { .. } | Command::Hash { .. } => unreachable!("handled synchronously"),
    }
}

fn load_settings(file: Option<&std::path::Path>) -> anyhow::Result<Settings> {
    Settings::load(file).context("configuration")
}

fn init_logging(level: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PERISAI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let settings = Arc::new(load_settings(config.as_deref())?);
    init_logging(&settings.log.level, &settings.log.format);
    let metrics = Metrics::new();
    let readiness = Arc::new(Readiness::default());
    let banks = BankSet::load(&settings.banks, &metrics).context("loading banks")?;
    let screen = app::build_screen(&settings, banks, &metrics, &readiness, Mode::Worker)?;

    let listen = settings.metrics.listen.parse().expect("validated address");
    let server = MetricsServer::start(listen, metrics.clone(), readiness.clone())
        .await
        .with_context(|| format!("cannot serve metrics on {}", settings.metrics.listen))?;
    tracing::info!(addr = %server.addr, "serving /metrics, /healthz, /readyz");
    let worker = Worker { settings: settings.clone(), screen, metrics, readiness, instance: app::instance_name() };
    let summary = worker.run(shutdown_signal()).await?;
    server.shutdown().await;
    tracing::info!(events = summary.events, abandoned = summary.abandoned, "bye");
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

async fn scan(config: Option<PathBuf>, files: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    let settings = Arc::new(load_settings(config.as_deref())?);
    init_logging("warn", "text");
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let banks = BankSet::load(&settings.banks, &metrics).context("loading banks")?;
    let screen = app::build_screen(&settings, banks, &metrics, &readiness, Mode::ScoreAll)?;
    let mut failed = false;
    for file in files {
        let name = file.display().to_string();
        let received = Instant::now();
        let bytes = match read_capped(&file, settings.media.max_bytes) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("perisai: {name}: {e}");
                failed = true;
                continue;
            }
        };
        let event = UploadEvent {
            schema: UPLOAD_SCHEMA.into(),
            event_id: name.clone(),
            media_id: name.clone(),
            tenant: "scan".into(),
            surface: None,
            content_type: None,
            media: MediaRef::Path(name),
            uploaded_at: None,
            attributes: Default::default(),
        };
        let verdict = screen.screen_bytes(&event, bytes, received).await;
        println!("{}", serde_json::to_string(&verdict)?);
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn read_capped(path: &std::path::Path, max: usize) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path)?.len();
    anyhow::ensure!(len <= max as u64, "{len} bytes, over media.max_bytes = {max}");
    Ok(std::fs::read(path)?)
}

fn check_config(config: Option<PathBuf>) -> ExitCode {
    match Settings::load(config.as_deref()) {
        Ok(settings) => {
            print!("{}", toml::to_string_pretty(&settings).expect("settings serialize"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("perisai: {e}");
            ExitCode::from(2)
        }
    }
}

/// Hashes files the way `pdq-photo-hasher` prints them; unreadable files are reported on stderr
/// and make the exit code non-zero, and the other files are still hashed.
fn hash_files(full: bool, dihedral: bool, files: &[PathBuf]) -> ExitCode {
    let convention = if full { pdq::Convention::Full } else { pdq::Convention::Cli };
    let limits = DecodeLimits::default();
    let mut failed = false;
    for file in files {
        let name = file.display();
        let image = std::fs::read(file)
            .map_err(|e| e.to_string())
            .and_then(|bytes| decode::decode(&bytes, &limits).map_err(|e| e.to_string()));
        match image {
            Ok(image) if dihedral => {
                let (hashes, quality) = pdq::hash_dihedral(&image, convention);
                let hashes: Vec<String> = hashes.iter().map(ToString::to_string).collect();
                println!("{},{quality},{name}", hashes.join(","));
            }
            Ok(image) => {
                let out = pdq::hash(&image, convention);
                println!("{},{},{name}", out.hash, out.quality);
            }
            Err(e) => {
                eprintln!("perisai: {name}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

//! The `perisai` command line. Wiring only; everything else lives in the library.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::StreamExt;

use perisai::admin::{self, ExportFormat};
use perisai::bank::formats::Format;
use perisai::bank::{BankSet, Signal};
use perisai::config::Settings;
use perisai::event::UploadEvent;
use perisai::hash::pdq;
use perisai::hash::vpdq;
use perisai::media::decode::{self, DecodeLimits};
use perisai::metrics::{Metrics, MetricsServer, Readiness};
use perisai::pipeline::Worker;
use perisai::replay;
use perisai::screen::Mode;
use perisai::app;
use perisai::demo;

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
    /// Run a retro replica: remember recent verdicts, and write superseding verdicts when a bank
    /// entry added, withdrawn or released later changes an upload's decision.
    Retro {
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
        /// Files screened at once (verdicts still print in the order given): the classifier
        /// batches images across them, and decoding overlaps inference.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
        jobs: u16,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// PDQ-hash images like pdq-photo-hasher (`HASH,QUALITY,FILE` per line), or a video like
    /// Meta's vpdq (`--video`: `FRAME_NUMBER,QUALITY,PDQ_HEX,TIMESTAMP` per sampled frame).
    Hash {
        /// Hash at full resolution (default: the `cli` convention, 512×512 above 512 px).
        #[arg(long, conflicts_with = "video")]
        full: bool,
        /// Print the 8 dihedral hashes (reference order), then quality, then file.
        #[arg(long, conflicts_with = "video")]
        dihedral: bool,
        /// vPDQ-hash one video, decoded by the `perisai-video` helper under `[video]`'s limits.
        #[arg(long)]
        video: bool,
        /// With --video: one frame hashed every this many seconds (0 = every frame).
        #[arg(long, default_value_t = 1.0, requires = "video")]
        seconds_per_hash: f64,
        /// With --video: limits and helper from this configuration (default: the built-in one).
        #[arg(long, short, requires = "video")]
        config: Option<PathBuf>,
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
    /// Policy tools for trust-and-safety analysts.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// What-if: re-decide recorded verdicts under a proposed policy (from their reasons: no media,
    /// no model) and print, per tenant and surface, the transitions, the review volume per day and,
    /// with reviewers' labels, precision and recall of the bands.
    Replay {
        /// The proposed policy: a TOML file with a [policy] table, as in the configuration.
        #[arg(long)]
        policy: PathBuf,
        /// Kafka settings, and the current policy whose bands are drawn beside the proposed ones.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Read the verdict topic from this long ago up to its end at start: <number><d|h|m|s>.
        #[arg(long, default_value = "7d", value_parser = parse_since, conflicts_with = "from")]
        since: u64,
        /// Read verdicts from a JSON-lines file instead of the verdict topic (needs no broker).
        #[arg(long)]
        from: Option<PathBuf>,
        /// Only this tenant's verdicts.
        #[arg(long)]
        tenant: Option<String>,
        /// Reviewers' labels (perisai.review/v1) from a JSON-lines file instead of
        /// kafka.reviews_topic (which is read only when verdicts come from the verdict topic).
        #[arg(long)]
        reviews: Option<PathBuf>,
        /// Also report the lowest threshold whose precision on the labelled verdicts reaches this.
        #[arg(long, value_parser = parse_precision)]
        target_precision: Option<f64>,
        /// Also write the report as one self-contained HTML page with charts.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Event ids listed per changed transition, for spot checks.
        #[arg(long, default_value_t = 5)]
        samples: usize,
    },
}

#[derive(Subcommand)]
enum BankCommand {
    /// Load every configured bank (files, then the bank topic) and print its entry counts
    /// (errors name file and line).
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Publish a partner's hash list to the bank topic (a second run publishes nothing new).
    /// Bad rows are reported by line and make the exit code 1; the good rows are published.
    Import {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A bank declared in the configuration.
        #[arg(long)]
        bank: String,
        /// csv (signal,hash,entry), te (ThreatExchange lines or CLI export), stopncii (JSON lines).
        #[arg(long, default_value = "csv", value_parser = parse_format)]
        format: Format,
        /// Recorded as each entry's source (default: manual, threatexchange or stopncii).
        #[arg(long)]
        source: Option<String>,
        /// Entry id for rows that carry none (default: the source).
        #[arg(long)]
        entry: Option<String>,
        /// The list; `-` reads standard input.
        file: PathBuf,
    },
    /// Withdraw hashes from a bank: a tombstone each on the bank topic.
    Withdraw {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        bank: String,
        /// md5, sha256, pdq or vpdq (a vPDQ entry by its digest, the last part of its record key).
        #[arg(long, value_parser = parse_signal)]
        signal: Signal,
        /// A file with one hash per line (blank lines and `#` comments ignored).
        #[arg(long, conflicts_with = "hashes")]
        file: Option<PathBuf>,
        hashes: Vec<String>,
    },
    /// Lift the quarantine of entries that flooded (their matches give review until then): they
    /// apply their bank's action again and are never quarantined automatically again.
    Release {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        bank: String,
        /// md5, sha256, pdq or vpdq (a vPDQ entry by its digest, the last part of its record key).
        #[arg(long, value_parser = parse_signal)]
        signal: Signal,
        #[arg(required = true)]
        hashes: Vec<String>,
    },
    /// Print a bank's live entries (its file, then the bank topic read to its end).
    Export {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        bank: String,
        /// csv (signal,hash,entry) or te (ThreatExchange `<signal_type> <hash>` lines).
        #[arg(long, default_value = "csv", value_parser = parse_export_format)]
        format: ExportFormat,
    },
}

fn parse_format(s: &str) -> Result<Format, String> {
    Format::parse(s).ok_or_else(|| format!("{s:?}: expected csv, te or stopncii"))
}

fn parse_export_format(s: &str) -> Result<ExportFormat, String> {
    match s {
        "csv" => Ok(ExportFormat::Csv),
        "te" => Ok(ExportFormat::Te),
        _ => Err(format!("{s:?}: expected csv or te")),
    }
}

fn parse_since(s: &str) -> Result<u64, String> {
    perisai::config::parse_duration_secs(s).ok_or_else(|| format!("{s:?}: expected <number><d|h|m|s>, e.g. 7d"))
}

fn parse_precision(s: &str) -> Result<f64, String> {
    s.parse::<f64>().ok().filter(|p| (0.0..=1.0).contains(p)).ok_or_else(|| format!("{s:?}: expected a number from 0 to 1"))
}

fn parse_signal(s: &str) -> Result<Signal, String> {
    Signal::parse(s).ok_or_else(|| format!("{s:?}: expected md5, sha256, pdq or vpdq"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(config),
        Command::Hash { video: true, seconds_per_hash, config, files, .. } => hash_video(config, seconds_per_hash, &files),
        Command::Hash { full, dihedral, files, .. } => hash_files(full, dihedral, &files),
        // Synchronous: the topic reader polls on this thread, no runtime needed.
        Command::Policy { command } => match policy_command(command) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("perisai: {e:#}");
                ExitCode::FAILURE
            }
        },
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
        Command::Retro { config } => retro(config).await,
        Command::Demo { metrics_listen, linger_secs } => {
            init_logging("warn", "text");
            let report =
                demo::run(demo::DemoOptions { metrics_listen, linger: Duration::from_secs(linger_secs) }).await?;
            print!("{}", demo::render(&report));
            Ok(ExitCode::SUCCESS)
        }
        Command::Scan { config, jobs, files } => scan(config, usize::from(jobs), files).await,
        Command::Bank { command } => bank_command(command).await,
        Command::CheckConfig { .. } | Command::Hash { .. } | Command::Policy { .. } => unreachable!("handled synchronously"),
    }
}

async fn bank_command(command: BankCommand) -> anyhow::Result<ExitCode> {
    match command {
        BankCommand::Check { config } => {
            let settings = load_settings(config.as_deref())?;
            init_logging("warn", "text");
            let metrics = Metrics::new();
            let banks = BankSet::load(&settings.banks, &metrics)?;
            if !settings.kafka.banks_topic.is_empty() {
                let records = perisai::kafka::bank_feed::read_into(&settings.kafka, &banks, &metrics)?;
                println!("bank topic {}: {records} records read, version {}", settings.kafka.banks_topic, banks.version().unwrap_or_default());
            }
            for (name, action, md5, sha256, pdq, vpdq) in banks.counts() {
                println!("{name} ({}): md5={md5} sha256={sha256} pdq={pdq} vpdq={vpdq}", action.as_str());
            }
            Ok(ExitCode::SUCCESS)
        }
        BankCommand::Import { config, bank, format, source, entry, file } => {
            let settings = load_settings(config.as_deref())?;
            init_logging("warn", "text");
            let bytes = read_input(&file)?;
            let options = admin::ImportOptions { bank, format, source, entry };
            let summary = admin::import(&settings, &options, &bytes).await?;
            let name = file.display();
            for e in &summary.rejected {
                eprintln!("perisai: {name}:{}: {}", e.line, e.problem);
            }
            println!("{summary}");
            Ok(if summary.rejected.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        BankCommand::Withdraw { config, bank, signal, file, hashes } => {
            let settings = load_settings(config.as_deref())?;
            init_logging("warn", "text");
            let hashes = match &file {
                Some(file) => String::from_utf8_lossy(&read_input(file)?)
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string)
                    .collect(),
                None => hashes,
            };
            anyhow::ensure!(!hashes.is_empty(), "no hashes given (arguments or --file)");
            let (published, refused) = admin::withdraw(&settings, &bank, signal, &hashes).await?;
            Ok(report_hashes(published, &format!("withdrawn from {bank}"), &refused))
        }
        BankCommand::Release { config, bank, signal, hashes } => {
            let settings = load_settings(config.as_deref())?;
            init_logging("warn", "text");
            let (published, refused) = admin::release(&settings, &bank, signal, &hashes).await?;
            Ok(report_hashes(published, &format!("released in {bank}"), &refused))
        }
        BankCommand::Export { config, bank, format } => {
            let settings = load_settings(config.as_deref())?;
            init_logging("warn", "text");
            print!("{}", admin::export(&settings, &bank, format)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn policy_command(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Replay { policy, config, since, from, tenant, reviews, target_precision, html, samples } => {
            let settings = load_settings(config.as_deref())?;
            init_logging("warn", "text");
            let request = replay::Request {
                policy,
                since_secs: since,
                from,
                tenant,
                reviews,
                options: replay::Options { samples, target_precision },
            };
            let report = replay::run(&settings, &request)?;
            // Bad records are reported where they are, and the replay goes on without them.
            for problem in report.input.problems.kept.iter().chain(report.labels.iter().flat_map(|l| l.problems.kept.iter())) {
                eprintln!("perisai: {problem}");
            }
            let unlisted = report.input.problems.count + report.labels.as_ref().map_or(0, |l| l.problems.count)
                - report.input.problems.kept.len() as u64
                - report.labels.as_ref().map_or(0, |l| l.problems.kept.len() as u64);
            if unlisted > 0 {
                eprintln!("perisai: … and {unlisted} more malformed records");
            }
            print!("{}", replay::report::text(&report));
            if let Some(path) = html {
                let page = replay::report::html(&report)?;
                std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
                println!("\nHTML report: {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Reports hashes given as arguments: the refused ones by position, then the count; exit 1 when any
/// was refused.
fn report_hashes(published: usize, done: &str, refused: &[perisai::bank::formats::RowError]) -> ExitCode {
    for e in refused {
        eprintln!("perisai: hash #{}: {}", e.line, e.problem);
    }
    println!("{published} {done}, {} refused", refused.len());
    if refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A file's bytes, or standard input's for `-`.
fn read_input(file: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).context("reading standard input")?;
        return Ok(bytes);
    }
    std::fs::read(file).with_context(|| format!("reading {}", file.display()))
}

fn load_settings(file: Option<&std::path::Path>) -> anyhow::Result<Settings> {
    Settings::load(file).context("configuration")
}

fn init_logging(level: &str, format: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PERISAI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colour codes only for a person at a terminal: files and log collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let hangups = perisai::live_policy::hangups().context("listening for SIGHUP")?;
    let settings = Arc::new(load_settings(config.as_deref())?);
    init_logging(&settings.log.level, &settings.log.format);
    let metrics = Metrics::new();
    let readiness = Arc::new(Readiness::default());
    // Metrics first: /readyz says what is loading while the banks are read.
    let listen = settings.metrics.listen.parse().expect("validated address");
    let server = MetricsServer::start(listen, metrics.clone(), readiness.clone())
        .await
        .with_context(|| format!("cannot serve metrics on {}", settings.metrics.listen))?;
    tracing::info!(addr = %server.addr, "serving /metrics, /healthz, /readyz");
    let (banks, feed) = app::load_live_banks(&settings, &metrics, &readiness).await.context("loading banks")?;
    let screen = app::build_screen(&settings, banks, &metrics, Mode::Worker)?;
    readiness.screen_ready.store(true, std::sync::atomic::Ordering::Release);
    let reload = tokio::spawn(perisai::live_policy::watch(
        screen.live_policy(),
        config.clone(),
        settings.clone(),
        metrics.clone(),
        hangups,
    ));
    let replica = perisai::kafka::replica::Replica::claim(&settings.kafka);
    let worker = Worker { settings: settings.clone(), screen, metrics, readiness, instance: app::instance_name(), replica };
    let summary = worker.run(shutdown_signal()).await;
    reload.abort();
    let summary = summary?;
    if let Some(feed) = feed {
        tokio::task::spawn_blocking(move || feed.stop()).await.ok();
    }
    server.shutdown().await;
    tracing::info!(events = summary.events, abandoned = summary.abandoned, "bye");
    Ok(ExitCode::SUCCESS)
}

async fn retro(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    // SIGHUP reloads workers' policies; retro reads its policy at start (a restart applies a new
    // one), but must not die of a SIGHUP sent to every replica.
    let mut hangups = perisai::live_policy::hangups().context("listening for SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::warn!("SIGHUP: the retro role reads its policy at start only; restart it to apply a new one");
        }
    });
    let settings = Arc::new(load_settings(config.as_deref())?);
    init_logging(&settings.log.level, &settings.log.format);
    if settings.kafka.banks_topic.is_empty() {
        tracing::warn!("kafka.banks_topic is empty: banks never change, so retro only re-decides what it reads back at start");
    }
    let metrics = Metrics::new();
    let readiness = Arc::new(Readiness::default());
    let listen = settings.metrics.listen.parse().expect("validated address");
    let server = MetricsServer::start(listen, metrics.clone(), readiness.clone())
        .await
        .with_context(|| format!("cannot serve metrics on {}", settings.metrics.listen))?;
    tracing::info!(addr = %server.addr, "serving /metrics, /healthz, /readyz");
    let (banks, feed) = app::load_live_banks(&settings, &metrics, &readiness).await.context("loading banks")?;
    readiness.screen_ready.store(true, std::sync::atomic::Ordering::Release);
    let role = perisai::retro::RetroRole::new(settings.clone(), banks, metrics, readiness);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let role_stop = stop.clone();
    let mut task = tokio::task::spawn_blocking(move || role.run(&role_stop));
    let outcome = tokio::select! {
        _ = shutdown_signal() => {
            stop.store(true, std::sync::atomic::Ordering::Release);
            task.await
        }
        done = &mut task => done,
    };
    if let Some(feed) = feed {
        tokio::task::spawn_blocking(move || feed.stop()).await.ok();
    }
    server.shutdown().await;
    outcome.context("retro thread")??;
    tracing::info!("bye");
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

async fn scan(config: Option<PathBuf>, jobs: usize, files: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    let settings = Arc::new(load_settings(config.as_deref())?);
    init_logging("warn", "text");
    let metrics = Metrics::new();
    // Bank files only: `scan` needs no broker.
    let banks = Arc::new(BankSet::load(&settings.banks, &metrics).context("loading banks")?);
    let screen = app::build_screen(&settings, banks, &metrics, Mode::ScoreAll)?;
    // Said once, on stderr (stdout stays one verdict JSON per line): a verdict without a
    // classifier reason then means "not classified", not "scored clean".
    match app::classifier_plan(&settings)? {
        app::ClassifierPlan::Load => eprintln!("perisai scan: classifier on ({})", settings.classifier.model_path),
        app::ClassifierPlan::Off(why) => eprintln!("perisai scan: classifier off: {why}; verdicts rest on hash banks only"),
    }
    // Up to `jobs` files in flight, printed in the order given (`buffered`, not `buffer_unordered`):
    // one file at a time would hand the classifier batches of one.
    let screened = futures::stream::iter(files)
        .map(|file| {
            let (screen, settings) = (screen.clone(), settings.clone());
            async move {
                let name = file.display().to_string();
                let received = Instant::now();
                let bytes = read_capped(&file, settings.media.max_bytes).map_err(|e| format!("{name}: {e}"))?;
                Ok::<_, String>(screen.screen_bytes(&UploadEvent::local(&name, "scan"), bytes, received).await)
            }
        })
        .buffered(jobs);
    futures::pin_mut!(screened);
    let mut failed = false;
    while let Some(outcome) = screened.next().await {
        match outcome {
            Ok(verdict) => println!("{}", serde_json::to_string(&verdict)?),
            Err(e) => {
                eprintln!("perisai: {e}");
                failed = true;
            }
        }
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
/// `perisai hash --video`: the lines vpdq's hasher writes, for one video.
fn hash_video(config: Option<PathBuf>, seconds_per_hash: f64, files: &[PathBuf]) -> ExitCode {
    let [file] = files else {
        eprintln!("perisai: --video hashes one file at a time");
        return ExitCode::from(2);
    };
    if !(seconds_per_hash.is_finite() && seconds_per_hash >= 0.0) {
        eprintln!("perisai: --seconds-per-hash must be a number >= 0");
        return ExitCode::from(2);
    }
    let settings = match Settings::load(config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("perisai: {e}");
            return ExitCode::from(2);
        }
    };
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("perisai: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let mut limits = settings.video.limits();
    limits.seconds_per_hash = seconds_per_hash;
    // Two threads: one reads the helper's frames while the other hashes.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let (features, error) = runtime.block_on(vpdq::hash_video(&bytes, &limits));
    let mut out = std::io::stdout().lock();
    for feature in &features {
        let _ = writeln!(out, "{}", feature.line());
    }
    match error {
        None => ExitCode::SUCCESS,
        Some(e) => {
            eprintln!("perisai: {}: {} ({})", file.display(), e, e.kind());
            ExitCode::FAILURE
        }
    }
}

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

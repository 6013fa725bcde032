//! The `tiergate` process: command line, config loaded and validated before any port is bound
//! (exit 64 on a bad config), logging, the runtime, and signals.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tiergate::config::{Config, parse_duration};
use tiergate::snapshot::{Secrets, Snapshot};

/// EX_USAGE / EX_CONFIG style exit code for a configuration that cannot be used.
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "tiergate", version, about = "Tier-aware rate-limiting reverse proxy sidecar")]
struct Cli {
    /// Config file. Default: $TIERGATE_CONFIG, then ./config.toml
    #[arg(long, global = true, env = "TIERGATE_CONFIG", default_value = "config.toml")]
    config: PathBuf,
    /// Tokio worker threads (default: the CPUs this process may use).
    #[arg(long, global = true)]
    workers: Option<usize>,
    /// How `run` spreads connections over its workers: one current-thread runtime and listener
    /// per worker (`thread-per-core`), or tokio's `work-stealing` runtime. One worker is always a
    /// current-thread runtime.
    #[arg(long, global = true, value_enum, default_value_t = Layout::ThreadPerCore)]
    runtime: Layout,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Layout {
    ThreadPerCore,
    WorkStealing,
}

#[derive(Subcommand)]
enum LimitsAction {
    /// The windows of KEY (`user:42`, `ip:10.0.0.7`), read without consuming.
    Show {
        key: String,
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// The tier to read them for (default: the one the replica last saw KEY with).
        #[arg(long)]
        tier: Option<String>,
    },
    /// Clears KEY's counters in every window (the token comes from TIERGATE_ADMIN_TOKEN).
    Reset {
        key: String,
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        #[arg(long)]
        tier: Option<String>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the config and print the effective tiers and limits.
    Check,
    /// Print an HS256 token signed with the configured secret.
    Token {
        #[arg(long)]
        sub: String,
        #[arg(long)]
        tier: String,
        /// Lifetime, e.g. 1h, 30m, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Read the secret from this environment variable instead of identity.jwt_secret_env.
        #[arg(long)]
        secret_env: Option<String>,
    },
    /// A live view of a running tiergate: rates and refusals per tier and class, storage, who is refused.
    Top {
        /// The admin port of the tiergate to watch.
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// Print one plain-text frame and exit (for scripts).
        #[arg(long)]
        once: bool,
    },
    /// One identity's windows on a running tiergate: show them, or reset them.
    Limits {
        #[command(subcommand)]
        action: LimitsAction,
    },
    /// Only the built-in echo upstream (what the demo and the tests use), for load tests and soaks.
    Echo {
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
    },
    /// tiergate in front of a built-in echo upstream, with tokens and curl lines to try.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    match command {
        Command::Check => check(&cli.config),
        Command::Token { sub, tier, ttl, secret_env } => token(&cli.config, &sub, &tier, &ttl, secret_env.as_deref()),
        Command::Run => {
            // Config first: nothing is bound, started or logged before it is known to be good. The
            // process globals (crypto provider, metrics recorder) go in before it compiles, so its
            // metric handles count into the recorder /metrics renders.
            tiergate::app::install_process_globals();
            let (config, snapshot) = match load(&cli.config) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            init_logging("info");
            if let Some(note) = tiergate::snapshot::ineffective(&config) {
                tracing::warn!("{note}");
            }
            let workers = worker_count(cli.workers);
            // Thread per core: this thread's runtime is worker 0; the app starts the others.
            let (threads, extra) = match cli.runtime {
                Layout::ThreadPerCore => (1, workers - 1),
                Layout::WorkStealing => (workers, 0),
            };
            let Some(rt) = runtime(Some(threads)) else { return ExitCode::FAILURE };
            let code = rt.block_on(run(snapshot, cli.config, extra));
            // A write to a stdout nobody reads (the access log) may never return: do not wait on it.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            code
        }
        Command::Top { admin, once } => operate(cli.workers, async move {
            if once {
                return tiergate::cli::top_once(&admin).await;
            }
            use std::io::{IsTerminal, Write};
            let color = std::io::stdout().is_terminal();
            tiergate::cli::top_live(&admin, color, |frame| {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(frame.as_bytes());
                let _ = out.flush();
            })
            .await
            .map(|()| String::new())
        }),
        Command::Limits { action: LimitsAction::Show { key, admin, tier } } => {
            operate(cli.workers, async move { tiergate::cli::limits_show(&admin, &key, tier.as_deref()).await })
        }
        Command::Limits { action: LimitsAction::Reset { key, admin, tier } } => operate(cli.workers, async move {
            let token = std::env::var("TIERGATE_ADMIN_TOKEN").ok();
            tiergate::cli::limits_reset(&admin, &key, tier.as_deref(), token.as_deref()).await
        }),
        Command::Echo { listen } => operate(cli.workers, async move {
            let listener =
                tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            tiergate::demo::spawn_echo(listener);
            let _ = tokio::signal::ctrl_c().await;
            Ok(String::new())
        }),
        Command::Demo { listen, admin_listen } => {
            init_logging("warn");
            let Some(rt) = runtime(cli.workers) else { return ExitCode::FAILURE };
            match rt.block_on(tiergate::demo::run(tiergate::demo::DemoOptions { listen, admin_listen })) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tiergate demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs one operator command: its output on stdout, or its one-line error on stderr (exit 1).
fn operate(workers: Option<usize>, command: impl std::future::Future<Output = Result<String, String>>) -> ExitCode {
    let Some(rt) = runtime(workers) else { return ExitCode::FAILURE };
    match rt.block_on(command) {
        Ok(out) => {
            use std::io::Write;
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tiergate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> Result<(Config, Snapshot), ExitCode> {
    let problems = |errs: tiergate::config::ConfigErrors| {
        eprintln!("{}: {} problem(s):", path.display(), errs.0.len());
        for e in &errs.0 {
            eprintln!("  {e}");
        }
        ExitCode::from(EXIT_CONFIG)
    };
    let config = Config::load(path).map_err(problems)?;
    let snapshot = Snapshot::compile(config.clone(), &Secrets::from_env()).map_err(problems)?;
    Ok((config, snapshot))
}

fn check(path: &std::path::Path) -> ExitCode {
    match load(path) {
        Ok((config, _)) => {
            // A closed pipe (`tiergate check | head -1`) is not an error worth a panic.
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "{}: ok\n\n{}", path.display(), tiergate::snapshot::describe(&config));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn token(path: &std::path::Path, sub: &str, tier: &str, ttl: &str, secret_env: Option<&str>) -> ExitCode {
    let Some(ttl) = parse_duration(ttl).filter(|d| *d >= Duration::from_secs(1)) else {
        eprintln!("--ttl: expected a duration like 1h, 30m, 7d, got {ttl:?}");
        return ExitCode::from(EXIT_CONFIG);
    };
    // The config names the secret's variable, issuer and audience; without a config file, defaults.
    let config = if path.exists() {
        match Config::load(path) {
            Ok(c) => Some(c),
            Err(errs) => {
                eprintln!("{}: {errs}", path.display());
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    } else {
        None
    };
    if let Some(c) = &config
        && !c.tiers.iter().any(|t| t.name == tier)
    {
        let names: Vec<&str> = c.tiers.iter().map(|t| t.name.as_str()).collect();
        eprintln!("--tier: {tier:?} is not a tier in {} (tiers: {})", path.display(), names.join(", "));
        return ExitCode::from(EXIT_CONFIG);
    }
    let env_name =
        secret_env.map(str::to_string).or_else(|| config.as_ref().map(|c| c.identity.jwt_secret_env.clone()));
    let env_name = env_name.unwrap_or_else(|| "JWT_SECRET_KEY".into());
    let Some(secret) = std::env::var(&env_name).ok().filter(|s| !s.is_empty()) else {
        eprintln!("environment variable {env_name} is not set: export the HMAC secret tiergate verifies tokens with");
        return ExitCode::from(EXIT_CONFIG);
    };
    let issuer = config.as_ref().and_then(|c| c.identity.issuer.as_deref());
    let audience = config.as_ref().and_then(|c| c.identity.audience.as_deref());
    match tiergate::identity::mint_hs256(secret.as_bytes(), sub, tier, ttl, issuer, audience) {
        Ok(t) => {
            use std::io::Write;
            let _ = writeln!(std::io::stdout().lock(), "{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot sign the token: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--workers`, else the CPUs this process may use. Explicit: tokio would otherwise follow the
/// host's cores, not the container's CPU allowance.
fn worker_count(workers: Option<usize>) -> usize {
    workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1)
}

fn runtime(workers: Option<usize>) -> Option<tokio::runtime::Runtime> {
    let workers = worker_count(workers);
    // One worker: a current-thread runtime does the same work without the work-stealing machinery.
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            None
        }
    }
}

fn init_logging(default: &str) {
    // redis-rs logs every failed reconnect at warn (100+ lines/s per replica while a cluster master is
    // down); tiergate reports storage trouble itself, once per transition. RUST_LOG overrides this.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},redis=error")));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .init();
}

async fn run(snapshot: Snapshot, config_path: PathBuf, extra_workers: usize) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    // Signal handlers go in before anything can report ready: a SIGTERM or SIGHUP that arrives
    // between `/readyz` turning 200 and the handlers existing would otherwise kill the process.
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    let hup = signal(SignalKind::hangup()).ok();
    let access = tiergate::access::AccessLog::stdout();
    let server =
        match tiergate::app::start_workers(snapshot, tiergate::limit::Clock::System, access, extra_workers).await {
            Ok(s) => s,
            Err(tiergate::app::StartError::Config(errs)) => {
                for e in &errs.0 {
                    eprintln!("tiergate: {e}");
                }
                return ExitCode::from(EXIT_CONFIG);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("tiergate: {e}");
                return ExitCode::FAILURE;
            }
        };
    server.watch_config(config_path, Secrets::from_env(), hup);
    let signal = wait_for_signal(term, int).await;
    tracing::info!(signal, "draining");
    server.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn wait_for_signal(
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
) -> &'static str {
    let (Some(mut term), Some(mut int)) = (term, int) else {
        // Without signal handlers there is nothing to wait for but Ctrl-C.
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

//! The `creditd` command: serve, check the configuration, inspect a data directory.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use creditd::config::{Config, LogFormat};

/// A prepaid-credit wallet and metering engine.
#[derive(Debug, Parser)]
#[command(name = "creditd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// The configuration file.
        #[arg(long, default_value = "./config.toml")]
        config: PathBuf,
    },
    /// Print the effective configuration (file + CREDITD_* overrides), secrets masked.
    CheckConfig {
        /// The configuration file.
        #[arg(long, default_value = "./config.toml")]
        config: PathBuf,
    },
    /// Generate load against a running server and report throughput and latency.
    Loadgen(creditd::loadgen::LoadOptions),
    /// Inspect the write-ahead log and snapshots of a data directory (read only).
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
    /// Check the audit log of a data directory (read only).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the audit hash chain in history.sqlite3; exit 1 naming the first bad record.
    Verify {
        /// The data directory (holding history.sqlite3).
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum WalCommand {
    /// Check every record and snapshot and replay the state in memory; exit 1 on damage.
    Verify {
        /// The data directory (holding wal/ and snapshots/).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Print one line per event.
    Dump {
        /// The data directory (holding wal/ and snapshots/).
        #[arg(long)]
        data_dir: PathBuf,
        /// Start at this LSN.
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Loadgen(options) => loadgen(&options),
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(config) => {
                print!("{}", config.to_toml_masked());
                ExitCode::SUCCESS
            }
            Err(error) => fail(&format!("{}: {error}", config.display())),
        },
        Command::Wal {
            command: WalCommand::Verify { data_dir },
        } => match creditd::inspect::verify(&data_dir, &mut std::io::stdout().lock()) {
            Ok(found) if found.damage.is_empty() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(error) => fail(&format!("{}: {error}", data_dir.display())),
        },
        Command::Wal {
            command: WalCommand::Dump { data_dir, from },
        } => match creditd::inspect::dump(&data_dir, from, &mut std::io::stdout().lock()) {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(error) => fail(&format!("{}: {error}", data_dir.display())),
        },
        Command::Audit {
            command: AuditCommand::Verify { data_dir },
        } => audit_verify(&data_dir),
    }
}

fn audit_verify(data_dir: &std::path::Path) -> ExitCode {
    use creditd::history::audit::{self, VerifyError};
    let path = data_dir.join(creditd::history::FILE_NAME);
    if !path.is_file() {
        return fail(&format!("{}: no history database", path.display()));
    }
    match audit::verify(&path) {
        Ok(verified) => {
            println!(
                "audit chain ok: {} records, last hash {}",
                verified.records,
                audit::hex(&verified.last_hash)
            );
            ExitCode::SUCCESS
        }
        Err(VerifyError::Broken(broken)) => {
            println!("{broken}");
            ExitCode::FAILURE
        }
        Err(error) => fail(&format!("{}: {error}", path.display())),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("creditd: {message}");
    ExitCode::FAILURE
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn loadgen(options: &creditd::loadgen::LoadOptions) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("starting the runtime: {error}")),
    };
    if options.setup_only {
        return match runtime.block_on(creditd::loadgen::setup(options)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(&error),
        };
    }
    match runtime.block_on(creditd::loadgen::run(options)) {
        Ok(report) => {
            println!("{}", report.render(options));
            ExitCode::SUCCESS
        }
        Err(error) => fail(&error),
    }
}

fn serve(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => return fail(&format!("{}: {error}", path.display())),
    };
    init_logging(&config);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.server.workers > 0 {
        builder.worker_threads(config.server.workers as usize);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("starting the runtime: {error}")),
    };
    match runtime.block_on(creditd::server::run_from_config(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error.to_string()),
    }
}

//! The `edgeward` command: `run` serves a configuration, `validate` checks one, `filter`
//! helps filter authors.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "edgeward",
    version,
    about = "An edge reverse proxy that runs proxy-wasm filters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start serving the configuration (after checking it like `validate`). SIGHUP reloads it;
    /// SIGUSR2 hands over to the binary now at this one's path (as `run --upgrade` does).
    Run {
        #[arg(long, short, default_value = "config/edgeward.yaml")]
        config: PathBuf,
        /// Reload whenever the configuration file or a file it names (filter modules,
        /// certificates, the geo database) changes.
        #[arg(long)]
        watch: bool,
        /// Take over the listening sockets of the edgeward running the same configuration
        /// file: it stops accepting, finishes its requests and exits (a binary upgrade
        /// without a refused connection).
        #[arg(long)]
        upgrade: bool,
    },
    /// Check a configuration and report every problem found, with file:line:column.
    Validate {
        #[arg(long, short, default_value = "config/edgeward.yaml")]
        config: PathBuf,
    },
    /// Tools for filter authors.
    Filter {
        #[command(subcommand)]
        command: FilterCommand,
    },
}

#[derive(Subcommand)]
enum FilterCommand {
    /// Create a ready-to-build filter project NAME (with the proxy-wasm SDK version edgeward is
    /// tested with): a filter that reads its JSON configuration, sets a header and answers a
    /// local response, its tests, and an edgeward.yaml that serves it.
    New {
        /// The filter's name: lower-case letters, digits, `-` and `_`.
        name: String,
        /// Rust (the proxy-wasm Rust SDK, built with cargo) or AssemblyScript (the
        /// proxy-wasm AssemblyScript SDK, built with npm).
        #[arg(long, value_enum, default_value = "rust")]
        lang: edgeward::scaffold::Lang,
        /// Where to create the project folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Run a filter (or a route's chain of filters) against a request written in a file,
    /// without a proxy or an origin, by the host the proxy runs filters with: each phase's
    /// outcome and what the filters changed, what would go upstream and what the client gets,
    /// and the filters' log. Exits 1 when a filter fails (a trap, a limit).
    Test {
        #[command(flatten)]
        trial: edgeward::trial::Trial,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show what a filter module is as edgeward sees it, without running it: its proxy-wasm
    /// ABI, the callbacks it exports, each host function it imports and whether edgeward
    /// provides it, its memory and debug info. Exits 1 when the module cannot load.
    Inspect {
        /// The filter's .wasm file.
        module: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `filter test` keeps the log for its report; every other command writes it to stderr.
    let keeps_log = matches!(
        cli.command,
        Command::Filter {
            command: FilterCommand::Test { .. }
        }
    );
    if !keeps_log {
        env_logger::Builder::new()
            .parse_filters("info,pingora_core=warn,pingora_proxy=warn")
            .parse_env("EDGEWARD_LOG")
            .init();
    }
    match cli.command {
        Command::Filter {
            command: FilterCommand::Test { trial, json },
        } => filter_test(&trial, json),
        Command::Validate { config: path } => match edgeward::config::load(&path) {
            // Loading the filters compiles them and runs their start-up and on_configure;
            // the geo database is opened as MaxMind data.
            Ok(config) => {
                let geo = config.geo.as_ref().map(|g| {
                    edgeward::geo::Geo::open(&g.database, g.trusted_proxies.clone()).map(drop)
                });
                // Each filter that fails is a problem of its own, at its place in the file.
                let filters = edgeward::wasm::FilterHost::load(&config).err();
                let mut problems: Vec<String> = filters
                    .iter()
                    .flat_map(|e| e.problems())
                    .map(|problem| {
                        let at = problem
                            .at()
                            .map(|m| format!(":{}:{}", m.line, m.col))
                            .unwrap_or_default();
                        let problem = edgeward::describe(problem);
                        format!("{}{at}: error: {problem}", path.display())
                    })
                    .collect();
                if let Some(Err(e)) = geo {
                    problems.push(format!("{}: error: {}", path.display(), with_causes(e)));
                }
                if problems.is_empty() {
                    println!("ok");
                    return ExitCode::SUCCESS;
                }
                for problem in &problems {
                    eprintln!("{problem}");
                }
                let n = problems.len();
                eprintln!("{n} problem{} found", if n == 1 { "" } else { "s" });
                ExitCode::FAILURE
            }
            Err(e) => {
                report(e);
                ExitCode::FAILURE
            }
        },
        Command::Filter {
            command: FilterCommand::New { name, lang, dir },
        } => match edgeward::scaffold::new_filter(&name, lang, &dir) {
            Ok(files) => {
                for file in &files {
                    println!("created {}", file.display());
                }
                println!("\nnext:\n  cd {}", dir.join(&name).display());
                for step in lang.next_steps() {
                    println!("  {step}");
                }
                println!("  edgeward run --config edgeward.yaml --watch");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("edgeward: {}", with_causes(e));
                ExitCode::FAILURE
            }
        },
        Command::Filter {
            command: FilterCommand::Inspect { module, json },
        } => match edgeward::wasm::inspect(&module) {
            Ok(inspection) => {
                if json {
                    match serde_json::to_string_pretty(&inspection) {
                        Ok(text) => println!("{text}"),
                        Err(e) => {
                            eprintln!("edgeward: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                } else {
                    println!("{}\n{inspection}", module.display());
                }
                if inspection.loadable() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("edgeward: {}", with_causes(e));
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config,
            watch,
            upgrade,
        } => {
            let config = match edgeward::config::load(&config) {
                Ok(config) => config,
                Err(e) => {
                    report(e);
                    eprintln!("edgeward: not starting");
                    return ExitCode::FAILURE;
                }
            };
            let options = edgeward::server::RunOptions { watch, upgrade };
            match edgeward::server::run(config, options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("edgeward: {}", with_causes(e));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `filter test`: the report, with every log line of the run (the filter's own among them)
/// kept for it rather than written as they come.
fn filter_test(trial: &edgeward::trial::Trial, json: bool) -> ExitCode {
    let logs = Arc::new(Mutex::new(Vec::new()));
    if log::set_boxed_logger(Box::new(KeptLog(logs.clone()))).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("edgeward: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(edgeward::trial::run(trial));
    let logs = logs.lock().map(|l| l.clone()).unwrap_or_default();
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            for line in &logs {
                eprintln!("{line}");
            }
            eprintln!("edgeward: {}", with_causes(e));
            return ExitCode::FAILURE;
        }
    };
    if json {
        let value = serde_json::json!({"report": report, "log": logs});
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        print!("{report}");
        println!("\nlog:");
        for line in &logs {
            println!("  {line}");
        }
    }
    if report.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// A logger that keeps lines for `filter test`'s report.
struct KeptLog(Arc<Mutex<Vec<String>>>);

impl log::Log for KeptLog {
    /// The filter's own lines, and the host's warnings and errors (a crash report).
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        let own = metadata.target() == "edgeward::filter";
        metadata.level()
            <= if own {
                log::Level::Info
            } else {
                log::Level::Warn
            }
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            if let Ok(mut lines) = self.0.lock() {
                lines.push(format!("{} {}", record.level(), record.args()));
            }
        }
    }

    fn flush(&self) {}
}

/// The error and the chain of its causes on one line: `outer: inner: innermost`.
fn with_causes(error: impl std::error::Error + Send + Sync + 'static) -> String {
    format!("{:#}", anyhow::Error::from(error))
}

fn report(error: edgeward::config::ConfigError) {
    let n = error.problems_found();
    eprintln!("{}", with_causes(error));
    if n > 0 {
        eprintln!("{n} problem{} found", if n == 1 { "" } else { "s" });
    }
}

//! The command line: argument parsing and hand-over. `serve` is the default command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use std::io::Write as _;

use crate::admission;
use crate::certs;
use crate::check::{self, Format};
use crate::config;
use crate::server::{self, tls};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
pub const DEFAULT_TLS_CERT: &str = "certs/tls.crt";
pub const DEFAULT_TLS_KEY: &str = "certs/tls.key";

/// Kubernetes admission webhook for apps/v1 DaemonSets: validates the selector and restart
/// policy as the API server does, and patches in the tolerations the DaemonSet controller gives
/// every daemon pod and default cpu/memory limits and requests.
#[derive(Debug, Parser)]
#[command(
    name = "daemonset-webhook",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `serve`'s flags, accepted without the word `serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve POST /mutate and POST /validate over HTTPS (the default command).
    Serve(ServeArgs),
    /// Judge DaemonSet manifests as the webhook would, without a server or a cluster.
    #[command(after_long_help = CHECK_HELP)]
    Check(CheckArgs),
    /// Answer one AdmissionReview (file or -) exactly as the server would.
    #[command(after_long_help = REVIEW_HELP)]
    Review(ReviewArgs),
    /// Make a CA and a serving certificate for the in-cluster Service, with the Secret and the
    /// webhook configurations' caBundle patch for kustomize.
    Certs(CertsArgs),
    /// Work with the policy file.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a policy file and print the policy it makes (exit 0), or the error naming the
    /// line and field (exit 2).
    Check {
        /// The policy file (YAML).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

const CHECK_HELP: &str = "\
Input: files, directories (searched recursively for *.yaml, *.yml, *.json) and - for standard
input; YAML streams of many documents (helm template, kustomize build), JSON, and kind: List.
Objects other than DaemonSets are passed over. extensions/v1beta1 and apps/v1beta2 DaemonSets
are judged as apps/v1, as the API server converts them.

Exit status:
  0  every DaemonSet is valid (and, with --require-mutated, already complete)
  1  a DaemonSet is invalid or of an unsupported apiVersion (or, with --require-mutated, would
     still be patched)
  2  an input or the policy file could not be read or parsed";

const REVIEW_HELP: &str = "\
Prints the AdmissionReview (or, for a malformed request, the metav1.Status) the server would
answer, byte for byte.

Exit status:
  0  allowed
  1  denied
  2  not a well-formed AdmissionReview, or unreadable";

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Manifest files or directories, or - for standard input.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// What to print.
    #[arg(long, short, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// Fail (exit 1) when the webhook would still patch a DaemonSet, so a repository can insist
    /// its manifests already say what the cluster will store.
    #[arg(long)]
    pub require_mutated: bool,
    /// Policy file (YAML), the same as `serve --config`.
    #[arg(long, env = "DAEMONSET_WEBHOOK_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The namespace of objects that name none (for namespace exemptions), as
    /// `kubectl apply -n` would give them.
    #[arg(long, short = 'n', default_value = "default", value_name = "NAME")]
    pub namespace: String,
    /// Colour in text output.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Args)]
pub struct ReviewArgs {
    /// An AdmissionReview as JSON, or - for standard input.
    #[arg(default_value = "-", value_name = "FILE")]
    pub input: PathBuf,
    /// Which webhook answers.
    #[arg(long, value_enum, default_value_t = EndpointArg::Mutate)]
    pub endpoint: EndpointArg,
    /// Policy file (YAML), the same as `serve --config`.
    #[arg(long, env = "DAEMONSET_WEBHOOK_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EndpointArg {
    /// POST /mutate
    Mutate,
    /// POST /validate
    Validate,
}

#[derive(Debug, Clone, Args)]
pub struct CertsArgs {
    /// The webhook's Service; the certificate is for <service>.<namespace>.svc.
    #[arg(long, default_value = certs::SERVICE_NAME)]
    pub service: String,
    /// The Service's namespace (also the Secret's).
    #[arg(long, default_value = certs::SERVICE_NAMESPACE)]
    pub namespace: String,
    /// Where to write ca.crt, tls.crt, tls.key, secret.yaml and webhook-ca-bundle.yaml.
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// How long the CA and the certificate are valid.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub validity_days: i64,
    /// Replace certificates already in --out-dir.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address and port to serve HTTPS on.
    #[arg(long, env = "DAEMONSET_WEBHOOK_LISTEN", default_value = DEFAULT_LISTEN, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,

    /// PEM certificate chain to serve. With this default and neither file present, a
    /// development CA and certificate are generated into certs/.
    #[arg(long, env = "DAEMONSET_WEBHOOK_TLS_CERT", default_value = DEFAULT_TLS_CERT, value_name = "PATH")]
    pub tls_cert: PathBuf,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "DAEMONSET_WEBHOOK_TLS_KEY", default_value = DEFAULT_TLS_KEY, value_name = "PATH")]
    pub tls_key: PathBuf,

    /// Policy file (YAML); the built-in defaults apply without one. Reloaded when it changes.
    #[arg(long, env = "DAEMONSET_WEBHOOK_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// PEM CA bundle: require client certificates signed by it (mutual TLS with the API
    /// server). Reloaded when it changes.
    #[arg(long, env = "DAEMONSET_WEBHOOK_CLIENT_CA", value_name = "PATH")]
    pub client_ca: Option<PathBuf>,

    /// Also serve GET /metrics over plain HTTP on this address (it is always served on the
    /// HTTPS port too).
    #[arg(
        long,
        env = "DAEMONSET_WEBHOOK_METRICS_LISTEN",
        value_name = "ADDR:PORT"
    )]
    pub metrics_listen: Option<SocketAddr>,

    /// How often the certificate, key, client CA and policy file are checked for changes.
    #[arg(long, env = "DAEMONSET_WEBHOOK_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub reload_interval: Duration,

    /// Connections served at once, and apart from them connections in their TLS handshake at
    /// once; beyond either, new ones wait in the listen backlog.
    #[arg(long, env = "DAEMONSET_WEBHOOK_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Connections open at once from one client address, in any phase (handshake included);
    /// more are closed as they are accepted. kube-apiserver keeps far fewer to one webhook.
    #[arg(long, env = "DAEMONSET_WEBHOOK_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_client: u32,

    /// Request bodies held in memory at once, across all connections, like 32Mi or 1Gi. A
    /// request that cannot get its share within half a second is answered 503 with
    /// Retry-After. Keep it well below the container's memory limit (README, "Operate it").
    #[arg(long, env = "DAEMONSET_WEBHOOK_MAX_BODY_MEMORY", default_value = "32Mi", value_parser = parse_size, value_name = "SIZE")]
    pub max_body_memory: usize,

    /// Concurrent HTTP/2 streams per connection.
    #[arg(long, env = "DAEMONSET_WEBHOOK_HTTP2_MAX_STREAMS", default_value_t = 250, value_parser = clap::value_parser!(u32).range(1..))]
    pub http2_max_streams: u32,

    /// Offer only HTTP/1.1 (kube-apiserver uses HTTP/1.1 with webhooks anyway).
    #[arg(long, env = "DAEMONSET_WEBHOOK_DISABLE_HTTP2", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub disable_http2: bool,

    /// The TLS handshake, a connection's first request, and every request's headers must
    /// arrive within this.
    #[arg(long, env = "DAEMONSET_WEBHOOK_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub header_read_timeout: Duration,

    /// A keep-alive connection with no request for this long is closed. Keep it above the 90 s
    /// kube-apiserver keeps idle connections, so the client closes them first.
    #[arg(long, env = "DAEMONSET_WEBHOOK_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// A request body must arrive within this (answer: 408).
    #[arg(long, env = "DAEMONSET_WEBHOOK_BODY_READ_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub body_read_timeout: Duration,

    /// A client must take its answer within this: a write that makes no progress for this long
    /// closes the connection, as does a closing connection not done within it.
    #[arg(long, env = "DAEMONSET_WEBHOOK_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub write_timeout: Duration,

    /// After SIGTERM, in-flight reviews get this long before connections are closed; keep it
    /// below the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "DAEMONSET_WEBHOOK_SHUTDOWN_TIMEOUT", default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    pub shutdown_timeout: Duration,

    /// Log format: json, text, or auto (text on a terminal, JSON otherwise). Verbosity comes
    /// from RUST_LOG (default info).
    #[arg(long, env = "DAEMONSET_WEBHOOK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    /// Debugging: log every AdmissionReview whole (at debug level, so with RUST_LOG=debug).
    /// Objects can hold secrets in env values: never on by default.
    #[arg(long, env = "DAEMONSET_WEBHOOK_LOG_OBJECTS", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub log_objects: bool,

    /// Whether --tls-cert and --tls-key both kept their defaults (not given on the command line or
    /// in the environment); only then may a development certificate be generated.
    #[arg(skip)]
    pub tls_paths_defaulted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

/// The longest duration a flag takes: beyond it a value is surely a slip of the unit.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// `500ms`, `2s`, `1m`, or a number of seconds; zero allowed, at most a day.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid = || format!("{text:?} is not a duration like 500ms, 2s or 1m");
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: u64 = number.parse().map_err(|_| invalid())?;
    let duration = match unit {
        "ms" => Duration::from_millis(value),
        "s" => Duration::from_secs(value),
        "m" => Duration::from_secs(value.saturating_mul(60)),
        _ => return Err(invalid()),
    };
    if duration > MAX_DURATION {
        return Err(format!(
            "{text:?} is longer than the most allowed, 24h (1440m)"
        ));
    }
    Ok(duration)
}

/// A duration above zero: for intervals and timeouts, where zero would spin or refuse all.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("{:?} must be above zero", text.trim())),
        duration => Ok(duration),
    }
}

/// The largest size a flag takes (the memory budget counts in 32 bits).
const MAX_SIZE: u64 = 4 * 1024 * 1024 * 1024 - 1;

/// A size in bytes as Kubernetes writes memory: `1048576`, `512Ki`, `32Mi`, `1Gi`, or with the
/// decimal suffixes `k`, `M`, `G`; above zero, below 4Gi.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let invalid = || format!("{text:?} is not a size like 32Mi, 512Ki or 1Gi");
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let value: u64 = number.parse().map_err(|_| invalid())?;
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1000,
        "M" => 1000 * 1000,
        "G" => 1000 * 1000 * 1000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return Err(invalid()),
    };
    match value.checked_mul(scale) {
        Some(0) => Err(format!("{text:?} must be above zero")),
        Some(bytes) if bytes <= MAX_SIZE => Ok(bytes as usize),
        _ => Err(format!(
            "{text:?} is more than the most allowed, 4Gi less a byte"
        )),
    }
}

/// Why a command failed, and so its exit status and the words it ends with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// An input could not be used: exit 2.
    #[error(transparent)]
    Policy(#[from] config::ConfigError),
    #[error("{}: {source}", path.display())]
    Input {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} exists; pass --force to replace the certificates in {}", existing.display(), dir.display())]
    CertificatesExist { existing: PathBuf, dir: PathBuf },
    /// The command could not do its work: exit 1.
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    #[error(transparent)]
    Certificates(#[from] certs::CertError),
    #[error("{} exists but {} does not; provide both or neither", present.display(), missing.display())]
    HalfAPair { present: PathBuf, missing: PathBuf },
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Policy(_) | CliError::Input { .. } | CliError::CertificatesExist { .. } => {
                ExitCode::from(check::EXIT_INPUT_ERROR)
            }
            CliError::Serve(_)
            | CliError::Certificates(_)
            | CliError::HalfAPair { .. }
            | CliError::Runtime(_) => ExitCode::FAILURE,
        }
    }
}

/// Parses the process arguments and runs the chosen command. The one place a command's error
/// becomes words and an exit status: for `serve`, a log line (its logs are what operators
/// read); for the others, `error: ...` on stderr.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let log_format = match &cli.command {
        Some(Command::Serve(args)) => args.log_format,
        None => cli.serve.log_format,
        Some(_) => LogFormat::Text,
    };
    let _flush_logs = init_logging(log_format);
    let serving = matches!(cli.command, Some(Command::Serve(_)) | None);
    let result = match cli.command {
        Some(Command::Serve(mut args)) => {
            let sub = matches
                .subcommand_matches("serve")
                .expect("clap parsed the serve subcommand");
            args.tls_paths_defaulted = tls_paths_defaulted(sub);
            run_serve(args)
        }
        Some(Command::Certs(args)) => run_certs(&args),
        Some(Command::Check(args)) => run_check(&args),
        Some(Command::Review(args)) => run_review(&args),
        Some(Command::Config(ConfigCommand::Check { file })) => {
            config::load(&file).map_err(CliError::from).map(|policy| {
                println!("{}: ok: {}", file.display(), config::describe(&policy));
                ExitCode::SUCCESS
            })
        }
        None => {
            let mut args = cli.serve;
            args.tls_paths_defaulted = tls_paths_defaulted(&matches);
            run_serve(args)
        }
    };
    result.unwrap_or_else(|error| {
        if serving {
            tracing::error!("{error}");
        } else {
            eprintln!("error: {error}");
        }
        error.exit_code()
    })
}

/// The policy of `--config`, or the built-in one.
fn load_policy(path: Option<&Path>) -> Result<crate::policy::Policy, CliError> {
    match path {
        None => Ok(Default::default()),
        Some(path) => Ok(config::load(path)?),
    }
}

fn run_check(args: &CheckArgs) -> Result<ExitCode, CliError> {
    let policy = load_policy(args.config.as_deref())?;
    let color = match args.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::IsTerminal::is_terminal(&std::io::stdout())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    };
    let options = check::Options {
        format: args.output,
        namespace: &args.namespace,
        require_mutated: args.require_mutated,
        color: color && args.output == Format::Text,
    };
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut err = stderr.lock();
    let summary = check::run(&args.paths, &policy, options, &mut out, &mut err);
    drop(out);
    Ok(ExitCode::from(summary.exit_code(args.require_mutated)))
}

fn run_review(args: &ReviewArgs) -> Result<ExitCode, CliError> {
    use std::io::Read as _;
    let policy = load_policy(args.config.as_deref())?;
    let mut body = Vec::new();
    let limit = admission::MAX_REVIEW_BYTES as u64 + 1;
    let read = if args.input.as_os_str() == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut body)
    } else {
        std::fs::File::open(&args.input).and_then(|f| f.take(limit).read_to_end(&mut body))
    };
    read.map_err(|source| CliError::Input {
        path: args.input.clone(),
        source,
    })?;
    let endpoint = match args.endpoint {
        EndpointArg::Mutate => admission::Endpoint::Mutate,
        EndpointArg::Validate => admission::Endpoint::Validate,
    };
    let answer = if body.len() > admission::MAX_REVIEW_BYTES {
        Err(admission::EnvelopeError::too_large())
    } else {
        admission::review(&body, endpoint, &policy)
    };
    // A malformed review is an answer too: the server's metav1.Status, on stdout.
    let mut stdout = std::io::stdout().lock();
    Ok(match answer {
        Ok(reviewed) => {
            let _ = stdout.write_all(&reviewed.body);
            let _ = stdout.write_all(b"\n");
            ExitCode::from(if reviewed.record.allowed { 0 } else { 1 })
        }
        Err(error) => {
            let _ = stdout.write_all(&error.to_status_json());
            let _ = stdout.write_all(b"\n");
            eprintln!("error: {}", error.message);
            ExitCode::from(check::EXIT_INPUT_ERROR)
        }
    })
}

fn run_certs(args: &CertsArgs) -> Result<ExitCode, CliError> {
    let existing = args.out_dir.join(certs::CERT_FILE);
    if existing.exists() && !args.force {
        return Err(CliError::CertificatesExist {
            existing,
            dir: args.out_dir.clone(),
        });
    }
    let names = certs::service_dns_names(&args.service, &args.namespace);
    certs::generate(&names, args.validity_days)?.write_kustomize(&args.out_dir, &args.namespace)?;
    println!(
        "wrote a CA and a certificate for {} (valid {} days) to {}/: {}, {}, {}, {}, {}",
        names.join(", "),
        args.validity_days,
        args.out_dir.display(),
        certs::CA_FILE,
        certs::CERT_FILE,
        certs::KEY_FILE,
        certs::SECRET_FILE,
        certs::CA_BUNDLE_PATCH_FILE,
    );
    Ok(ExitCode::SUCCESS)
}

fn tls_paths_defaulted(matches: &ArgMatches) -> bool {
    ["tls_cert", "tls_key"]
        .iter()
        .all(|id| matches.value_source(id) == Some(ValueSource::DefaultValue))
}

/// Logs to stderr: JSON lines (one object per event, fields at the top level) for log
/// pipelines, or text for people; `auto` picks text on a terminal. The guard flushes at exit.
fn init_logging(format: LogFormat) -> Option<crate::logging::Flush> {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    crate::logging::init(json, terminal)
}

fn run_serve(args: ServeArgs) -> Result<ExitCode, CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let result = runtime.block_on(serve(args));
    // Whatever is still running (a review on the blocking pool past the shutdown timeout, a
    // file read stuck on a hung mount) does not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(500));
    result.map(|()| ExitCode::SUCCESS)
}

fn limits(args: &ServeArgs) -> server::Limits {
    server::Limits {
        max_connections: args.max_connections as usize,
        max_connections_per_client: args.max_connections_per_client as usize,
        max_body_memory: args.max_body_memory,
        http2_max_streams: args.http2_max_streams,
        http2: !args.disable_http2,
        header_read_timeout: args.header_read_timeout,
        idle_timeout: args.idle_timeout,
        body_read_timeout: args.body_read_timeout,
        write_timeout: args.write_timeout,
        shutdown_timeout: args.shutdown_timeout,
    }
}

async fn serve(args: ServeArgs) -> Result<(), CliError> {
    // The first load is of the watch's own snapshot, so an edit during start-up is a change.
    let policy_watch = args
        .config
        .as_ref()
        .map(|path| (path.clone(), server::reload::Watch::new(vec![path.clone()])));
    let policy = match &policy_watch {
        Some((path, watch)) => config::load_contents(path, &watch.contents()[0])?,
        None => Default::default(),
    };
    tracing::info!(
        config = %args.config.as_deref().map_or("built-in defaults".into(), |p| p.display().to_string()),
        policy = %config::describe(&policy),
        "policy loaded"
    );

    // Bind first: a port in use should not leave freshly generated certificates behind.
    let listener = server::bind(args.listen).await?;
    if args.tls_paths_defaulted {
        ensure_dev_certificate(&args.tls_cert, &args.tls_key)?;
    }
    let options = server::ServeOptions {
        metrics_listen: args.metrics_listen,
        tls: tls::TlsFiles {
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
            client_ca: args.client_ca.clone(),
        },
        config: policy_watch,
        reload_interval: args.reload_interval,
        limits: limits(&args),
        log_objects: args.log_objects,
    };
    server::run(
        listener,
        options,
        crate::admission::Reviewer::new(policy),
        server::shutdown_signal(),
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}

/// With the default paths and neither file present, generates a development CA and server
/// certificate so a newcomer's first run serves HTTPS. One file without the other is an error:
/// overwriting half of someone's pair would hide their mistake.
fn ensure_dev_certificate(cert: &Path, key: &Path) -> Result<(), CliError> {
    match (cert.exists(), key.exists()) {
        (true, true) => Ok(()),
        (false, false) => {
            let dir = cert.parent().unwrap_or(Path::new("."));
            certs::generate(&certs::dev_subject_alt_names(), certs::DEV_VALIDITY_DAYS)?
                .write_to(dir)?;
            tracing::warn!(
                "!!! GENERATED A DEVELOPMENT CERTIFICATE: {} did not exist. \
                 Wrote a new CA ({}) and a server certificate for {} into {}/. \
                 Trust it with curl --cacert {}. Not for production: see certs/README.md !!!",
                cert.display(),
                dir.join(certs::CA_FILE).display(),
                certs::dev_subject_alt_names().join(", "),
                dir.display(),
                dir.join(certs::CA_FILE).display(),
            );
            Ok(())
        }
        (true, false) => Err(CliError::HalfAPair {
            present: cert.to_path_buf(),
            missing: key.to_path_buf(),
        }),
        (false, true) => Err(CliError::HalfAPair {
            present: key.to_path_buf(),
            missing: cert.to_path_buf(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> (Cli, ArgMatches) {
        let matches = Cli::command().try_get_matches_from(args).unwrap();
        (Cli::from_arg_matches(&matches).unwrap(), matches)
    }

    #[test]
    fn no_arguments_means_serve_with_defaults() {
        let (cli, matches) = parse(&["daemonset-webhook"]);
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(cli.serve.tls_cert, PathBuf::from(DEFAULT_TLS_CERT));
        assert!(tls_paths_defaulted(&matches));
    }

    #[test]
    fn explicit_paths_are_not_defaulted() {
        let (_, matches) = parse(&["daemonset-webhook", "--tls-cert", DEFAULT_TLS_CERT]);
        assert!(!tls_paths_defaulted(&matches));
        let (cli, matches) = parse(&["daemonset-webhook", "serve", "--tls-key", "k.pem"]);
        let sub = matches.subcommand_matches("serve").unwrap();
        assert!(!tls_paths_defaulted(sub));
        let Some(Command::Serve(args)) = cli.command else {
            panic!("expected serve")
        };
        assert_eq!(args.tls_key, PathBuf::from("k.pem"));
    }

    #[test]
    fn help_documents_every_environment_variable() {
        let help = Cli::command().render_long_help().to_string();
        for var in [
            "DAEMONSET_WEBHOOK_LISTEN",
            "DAEMONSET_WEBHOOK_TLS_CERT",
            "DAEMONSET_WEBHOOK_TLS_KEY",
            "DAEMONSET_WEBHOOK_CONFIG",
        ] {
            assert!(help.contains(var), "{var} missing from --help");
        }
    }

    #[test]
    fn flag_defaults_are_the_servers_defaults() {
        // Tests and embedders start servers on Limits::default(): the binary must match them.
        let (cli, _) = parse(&["daemonset-webhook"]);
        assert_eq!(limits(&cli.serve), server::Limits::default());
    }

    #[test]
    fn sizes_take_kubernetes_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_size("32Mi"), Ok(32 << 20));
        assert_eq!(parse_size("512Ki"), Ok(512 << 10));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        assert_eq!(parse_size("64M"), Ok(64_000_000));
        assert_eq!(parse_size("1000"), Ok(1000));
        for bad in ["", "Mi", "-1Mi", "1.5Mi", "1 Mi", "1mi", "1Ti", "0", "0Mi"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(parse_size("4Gi").unwrap_err().contains("most allowed"));
        assert!(parse_size("99999999999999999999").is_err());
    }

    #[test]
    fn durations_take_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "s", "-1s", "1h", "1.5s", "2 s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        let err = parse_duration("99999999999999999999m").unwrap_err();
        assert!(err.contains("not a duration"), "{err}");
        let err = parse_duration("18446744073709551615m").unwrap_err();
        assert!(err.contains("24h"), "{err}");
        assert_eq!(parse_duration("1440m"), Ok(MAX_DURATION));
    }

    #[test]
    fn zero_intervals_and_timeouts_are_refused_at_parse_time() {
        for flag in [
            "--reload-interval",
            "--header-read-timeout",
            "--idle-timeout",
            "--body-read-timeout",
            "--write-timeout",
        ] {
            let err = Cli::command()
                .try_get_matches_from(["daemonset-webhook", flag, "0s"])
                .unwrap_err()
                .to_string();
            assert!(err.contains("must be above zero"), "{flag}: {err}");
        }
        // Zero is a meaningful shutdown timeout: do not wait.
        let (cli, _) = parse(&["daemonset-webhook", "--shutdown-timeout", "0"]);
        assert_eq!(cli.serve.shutdown_timeout, Duration::ZERO);
    }

    #[test]
    fn boolean_flags_read_their_environment_twins_leniently() {
        // The flag's own parser, read from a variable no other test touches.
        let var = "DAEMONSET_WEBHOOK_TEST_ONLY_DISABLE_HTTP2";
        let matches = |value: &str| {
            // SAFETY: no other code reads or writes this variable.
            unsafe { std::env::set_var(var, value) };
            // clap reads the variable when the argument is built.
            let command = Cli::command().mut_arg("disable_http2", |arg| arg.env(var));
            let result = command.try_get_matches_from(["daemonset-webhook"]);
            unsafe { std::env::remove_var(var) };
            result.map(|m| Cli::from_arg_matches(&m).unwrap().serve.disable_http2)
        };
        for yes in ["true", "1", "yes", "on"] {
            assert!(matches(yes).unwrap(), "{yes}");
        }
        for no in ["false", "0", "no", "off"] {
            assert!(!matches(no).unwrap(), "{no}");
        }
        assert!(matches("maybe").is_err());
    }

    #[test]
    fn one_file_of_a_pair_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::write(&cert, "x").unwrap();
        let err = ensure_dev_certificate(&cert, &key).unwrap_err().to_string();
        assert!(err.contains("tls.key"), "{err}");
    }

    #[test]
    fn generates_a_pair_when_both_are_missing() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("certs/tls.crt");
        let key = dir.path().join("certs/tls.key");
        ensure_dev_certificate(&cert, &key).unwrap();
        let files = tls::TlsFiles {
            cert,
            key,
            client_ca: None,
        };
        assert!(tls::load(&files, true).is_ok());
        assert!(dir.path().join("certs/ca.crt").is_file());
    }
}

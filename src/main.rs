//! The `pgward` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use pgward::config::{Config, ConfigError};
use pgward::proxy::Proxy;

#[derive(Parser)]
#[command(
    name = "pgward",
    version,
    about = "A transparent PostgreSQL proxy that guards your data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Config file (TOML). Without one, built-in defaults apply.
        #[arg(long, env = "PGWARD_CONFIG")]
        config: Option<PathBuf>,
        /// Listen address, overriding listen.addresses.
        #[arg(long)]
        listen: Option<String>,
        /// Upstream HOST:PORT, overriding upstream.host/port.
        #[arg(long, conflicts_with = "upstream_socket")]
        upstream: Option<String>,
        /// Upstream unix socket directory, overriding upstream.socket_dir.
        #[arg(long)]
        upstream_socket: Option<PathBuf>,
        /// Admin HTTP address, overriding admin.listen ("" = none).
        #[arg(long)]
        admin_listen: Option<String>,
    },
    /// Validate a config file; exit 1 with line and column on error.
    Check { file: PathBuf },
    /// Show how the policy judges a statement: facts, each rule, the verdict.
    Explain {
        /// Config file whose [policy] is used (default: built-in policy).
        #[arg(long, env = "PGWARD_CONFIG")]
        config: Option<PathBuf>,
        /// Session user the rules are scoped by.
        #[arg(long, default_value = "app")]
        user: String,
        #[arg(long, default_value = "postgres")]
        database: String,
        #[arg(long, default_value = "")]
        application: String,
        /// Client IP address the rules are scoped by.
        #[arg(long)]
        client: Option<std::net::IpAddr>,
        /// The SQL text (one Query message; several statements allowed).
        sql: String,
    },
    /// Print SQL a DBA needs for the configured features.
    Sql {
        #[command(subcommand)]
        what: SqlCommand,
    },
    /// Work with audit files: verify the hash chain, query, statistics.
    Audit {
        #[command(subcommand)]
        what: pgward::audit::cli::AuditCommand,
    },
    /// Start a throwaway local Postgres and pgward in front of it.
    Demo {
        /// Config file for pgward (default: config/pgward.toml when present).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Port pgward listens on.
        #[arg(long, default_value_t = 6432)]
        port: u16,
    },
}

#[derive(Subcommand)]
enum SqlCommand {
    /// DDL for the [[policy.soft_delete]] tables: columns, unique indexes
    /// over live rows, an RLS policy hiding deleted rows.
    SoftDelete {
        #[arg(long, env = "PGWARD_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            listen,
            upstream,
            upstream_socket,
            admin_listen,
        } => upstream
            .as_deref()
            .map(parse_upstream)
            .transpose()
            .and_then(|upstream| run(config, listen, upstream, upstream_socket, admin_listen)),
        Command::Check { file } => return check(&file),
        Command::Audit { what } => {
            return match pgward::audit::cli::run(what) {
                Ok(code) => ExitCode::from(code as u8),
                Err(e) => {
                    eprintln!("pgward audit: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Demo { config, port } => pgward_demo(config, port),
        Command::Sql {
            what: SqlCommand::SoftDelete { config },
        } => load_config(Some(&config))
            .map_err(anyhow::Error::from)
            .and_then(|cfg| {
                pgward::soft_delete_ddl::ddl(&cfg.policy).map_err(|e| anyhow::anyhow!(e))
            })
            .map(|sql| println!("{sql}")),
        Command::Explain {
            config,
            user,
            database,
            application,
            client,
            sql,
        } => explain(config, user, database, application, client, &sql),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgward: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default()),
    }
}

fn run(
    config: Option<PathBuf>,
    listen: Option<String>,
    upstream: Option<(String, u16)>,
    upstream_socket: Option<PathBuf>,
    admin_listen: Option<String>,
) -> anyhow::Result<()> {
    let overrides = move |cfg: &mut Config| {
        if let Some(admin) = &admin_listen {
            cfg.admin.listen = Some(admin.clone());
        }
        if let Some(listen) = &listen {
            cfg.listen.addresses = vec![listen.clone()];
        }
        if let Some((host, port)) = &upstream {
            cfg.upstream.host = host.clone();
            cfg.upstream.port = *port;
            cfg.upstream.socket_dir = None;
        }
        if let Some(dir) = &upstream_socket {
            cfg.upstream.socket_dir = Some(dir.clone());
        }
    };
    let mut cfg = load_config(config.as_ref())?;
    overrides(&mut cfg);
    cfg.validate().map_err(anyhow::Error::msg)?;
    pgward::logging::init(&cfg.log);
    let runtime = build_runtime()?;
    runtime.block_on(async {
        let proxy = match &config {
            Some(path) => Proxy::bind_file(path, overrides).await?,
            None => Proxy::bind(cfg.clone()).await?,
        };
        serve_until_signalled(proxy, &cfg).await
    })
}

/// Parse `--upstream HOST:PORT`.
fn parse_upstream(up: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = up
        .rsplit_once(':')
        .with_context(|| format!("--upstream {up:?} is not HOST:PORT"))?;
    let port = port
        .parse()
        .with_context(|| format!("--upstream {up:?}: bad port"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// Run the proxy and its admin port; SIGHUP reloads, SIGTERM drains for
/// `timeouts.shutdown_secs`, SIGINT drains for at most 5 s.
async fn serve_until_signalled(proxy: Proxy, cfg: &Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handle = proxy.handle();
    let admin = match cfg.admin.listen_addr() {
        None => None,
        Some((listen, required)) => {
            match pgward::admin::AdminServer::bind(listen, handle.clone()).await {
                Ok(server) => Some(server.spawn()),
                Err(e) if !required => {
                    tracing::warn!(
                        listen,
                        error = %e,
                        "admin port not available; running without it (set admin.listen to require it)"
                    );
                    None
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!("admin.listen {listen}")))
                }
            }
        }
    };
    let watcher = tokio::spawn(handle.clone().watch_file(std::time::Duration::from_secs(2)));
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let accept = tokio::spawn(proxy.run(async {
        let _ = stop_rx.await;
    }));
    let grace = loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                // Off the event loop: a reload may check the live schema.
                let h = handle.clone();
                let _ = tokio::task::spawn_blocking(move || h.reload()).await;
            }
            _ = term.recv() => {
                break handle.live().config.timeouts.shutdown();
            }
            _ = int.recv() => {
                break handle.live().config.timeouts.shutdown().min(std::time::Duration::from_secs(5));
            }
        }
    };
    let _ = stop_tx.send(());
    let drain = handle.shutdown(grace);
    tokio::pin!(drain);
    loop {
        tokio::select! {
            _ = &mut drain => break,
            _ = term.recv() => handle.close_now(),
            _ = int.recv() => handle.close_now(),
        }
    }
    let _ = accept.await;
    watcher.abort();
    if let Some(admin) = admin {
        admin.abort();
    }
    Ok(())
}

fn check(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(cfg) => match pgward::proxy::Live::build(cfg, None).map(|_| ()) {
            Ok(()) => {
                println!("{}: OK", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn explain(
    config: Option<PathBuf>,
    user: String,
    database: String,
    application_name: String,
    client_addr: Option<std::net::IpAddr>,
    sql: &str,
) -> anyhow::Result<()> {
    let cfg = load_config(config.as_ref())?;
    let policy = pgward::policy::Policy::from_config(&cfg.policy_config())?;
    let scope = pgward::policy::SessionScope {
        user,
        database,
        application_name,
        client_addr,
        identity: Default::default(),
    };
    print!("{}", policy.explain(sql, &scope));
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on unix");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn pgward_demo(config: Option<PathBuf>, port: u16) -> anyhow::Result<()> {
    let config_path = config.or_else(|| {
        let p = PathBuf::from("config/pgward.toml");
        p.exists().then_some(p)
    });
    let mut cfg = load_config(config_path.as_ref())?;
    pgward::logging::init(&cfg.log);
    eprintln!("pgward demo: starting a throwaway PostgreSQL cluster…");
    let cluster = pgward::cluster::PgCluster::start(pgward::cluster::ClusterOptions::default())
        .context("starting the demo PostgreSQL cluster")?;
    cluster
        .psql(
            "postgres",
            "CREATE ROLE demo LOGIN PASSWORD 'demo' CREATEDB; CREATE DATABASE demo OWNER demo;",
        )
        .context("creating the demo role and database")?;
    cfg.listen.addresses = vec![format!("127.0.0.1:{port}")];
    cfg.upstream.host = "127.0.0.1".into();
    cfg.upstream.port = cluster.port;
    cfg.upstream.socket_dir = None;
    cfg.client_tls = Default::default();
    cfg.upstream.tls = Default::default();
    let runtime = build_runtime()?;
    let result = runtime.block_on(async {
        let proxy = Proxy::bind(cfg).await?;
        let addr = proxy.local_addrs()[0];
        println!();
        println!(
            "pgward is running in front of PostgreSQL on port {}.",
            cluster.port
        );
        println!("Connect with:");
        println!(
            "  PGPASSWORD=demo psql \"host={} port={} user=demo dbname=demo\"",
            addr.ip(),
            addr.port()
        );
        println!("Press Ctrl-C to stop and remove everything.");
        let handle = proxy.handle();
        proxy.run(shutdown_signal()).await;
        handle.shutdown(std::time::Duration::from_secs(2)).await;
        anyhow::Ok(())
    });
    drop(runtime);
    eprintln!("pgward demo: stopping PostgreSQL and removing its data directory");
    drop(cluster);
    result
}

/// The runtime for accepting, the admin port and reloads (sessions run on
/// `proxy::loops`, the audit pipeline on its own thread).
/// `PGWARD_WORKER_THREADS=1` makes it single-threaded too; otherwise one
/// worker per core.
fn build_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    match std::env::var("PGWARD_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) if n > 1 => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        _ => tokio::runtime::Runtime::new(),
    }
}

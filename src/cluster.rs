//! A throwaway PostgreSQL cluster, started with the machine's own `initdb`
//! and `pg_ctl`.
//!
//! Used by `pgward demo` and by the integration tests (see DESIGN.md,
//! "Testing": real Postgres, never a mock). Everything here is synchronous
//! `std::process` on purpose: starting a cluster is a one-off, blocking
//! operation, and keeping tokio out lets test harnesses call it from a
//! `OnceLock` initialiser without a runtime.
//!
//! `initdb` and `postgres` refuse to run as root. When the current process is
//! root (common in containers and CI), the server-side commands are run as the
//! `postgres` OS user via `runuser`, and the cluster's directory is handed to
//! that user. `psql` has no such restriction and runs as the caller.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The OS user that owns and runs the cluster when we are root.
const PG_OS_USER: &str = "postgres";

/// Errors from starting, querying or locating a cluster. Each carries the
/// command line and what it printed on stderr, because "initdb failed" alone is
/// useless when debugging a CI machine.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No `initdb`/`postgres` binaries were found.
    #[error(
        "PostgreSQL server binaries (initdb, postgres, pg_ctl) not found on PATH or under \
         /usr/lib/postgresql/*/bin; install PostgreSQL server packages, e.g. \
         `apt-get install postgresql`, or set PGWARD_PG_BIN to their directory"
    )]
    BinariesNotFound,
    /// A filesystem or process-spawn operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A command ran but exited unsuccessfully.
    #[error("command `{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

/// How to configure the cluster before starting it.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Server certificate and key (PEM). When set, `ssl = on`; the files are
    /// copied into the data directory with mode 0600 because Postgres refuses
    /// group- or world-readable keys.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Extra `postgresql.conf` lines, appended last (so they win).
    pub extra_conf: Vec<String>,
    /// `pg_hba.conf` lines. When empty: local trust, SCRAM over TCP loopback.
    pub hba: Vec<String>,
    /// Directory in which the cluster's temp dir is created (default: the
    /// system temp dir). Must be traversable by the `postgres` user when
    /// running as root. Test harnesses use a well-known directory so that
    /// leftovers can be found by [`PgCluster::reap_orphans`].
    pub base_dir: Option<PathBuf>,
}

/// A running throwaway cluster. Stopped on [`PgCluster::stop`] or drop; its
/// directory is deleted on drop.
#[derive(Debug)]
pub struct PgCluster {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Directory holding the Unix socket (`.s.PGSQL.<port>`).
    pub socket_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Directory of `initdb`, `pg_ctl`, `psql`, `pgbench`, ...
    pub bin_dir: PathBuf,
    /// Superuser name (`postgres`), trusted over the Unix socket.
    pub superuser: String,
    run_as_postgres: bool,
    stopped: bool,
    // Declared last so it is dropped after `Drop::drop` has stopped the server.
    dir: tempfile::TempDir,
}

impl PgCluster {
    /// Locate the PostgreSQL server binaries: `$PGWARD_PG_BIN`, then
    /// `initdb` + `postgres` on PATH (symlinks resolved, so Debian's
    /// `/usr/lib/postgresql/N/bin` is found with its `pgbench` etc.), then the
    /// newest `/usr/lib/postgresql/*/bin`.
    pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
        let complete = |d: &Path| {
            ["initdb", "postgres", "pg_ctl"]
                .iter()
                .all(|b| d.join(b).is_file())
        };
        if let Some(dir) = std::env::var_os("PGWARD_PG_BIN") {
            let dir = PathBuf::from(dir);
            if complete(&dir) {
                return Ok(dir);
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                let initdb = dir.join("initdb");
                if !initdb.is_file() || !dir.join("postgres").is_file() {
                    continue;
                }
                if let Some(real) = fs::canonicalize(&initdb)
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                {
                    if complete(&real) {
                        return Ok(real);
                    }
                }
                if complete(&dir) {
                    return Ok(dir);
                }
            }
        }
        let mut candidates: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e
                    .file_name()
                    .to_string_lossy()
                    .split('.')
                    .map(|p| p.parse::<u32>().ok())
                    .collect::<Option<Vec<u32>>>()?;
                let bin = e.path().join("bin");
                complete(&bin).then_some((version, bin))
            })
            .collect();
        candidates.sort();
        candidates
            .pop()
            .map(|(_, bin)| bin)
            .ok_or(ClusterError::BinariesNotFound)
    }

    /// Create, configure and start a cluster; returns once it accepts
    /// connections. See the module docs for the root handling.
    pub fn start(opts: ClusterOptions) -> Result<PgCluster, ClusterError> {
        let bin_dir = Self::find_bin_dir()?;
        let run_as_postgres = is_root();
        let owner = if run_as_postgres {
            Some(ensure_postgres_user()?)
        } else {
            None
        };

        let base = opts.base_dir.clone().unwrap_or_else(std::env::temp_dir);
        fs::create_dir_all(&base).map_err(io_err(format!("creating {}", base.display())))?;
        let dir = tempfile::Builder::new()
            .prefix("pgward-pg-")
            .tempdir_in(&base)
            .map_err(io_err(format!("creating temp dir in {}", base.display())))?;
        let socket_dir = dir.path().join("socket");
        fs::create_dir(&socket_dir)
            .map_err(io_err(format!("creating {}", socket_dir.display())))?;
        fs::write(dir.path().join("owner.pid"), std::process::id().to_string())
            .map_err(io_err("writing owner.pid"))?;
        // TempDir creates 0700; hand it (and its contents) to the server user.
        if let Some((uid, gid)) = owner {
            for p in [dir.path(), &socket_dir, &dir.path().join("owner.pid")] {
                chown(p, uid, gid)?;
            }
        }

        let mut cluster = PgCluster {
            port: 0,
            socket_dir,
            data_dir: dir.path().join("data"),
            bin_dir,
            superuser: "postgres".to_string(),
            run_as_postgres,
            stopped: true,
            dir,
        };

        let data = cluster.data_dir.to_string_lossy().into_owned();
        cluster.run_server_cmd(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                &cluster.superuser,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        // initdb creates it 0700 already; be explicit since Postgres insists.
        fs::set_permissions(&cluster.data_dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod data dir"))?;

        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!(
                "unix_socket_directories = '{}'",
                cluster.socket_dir.display()
            ),
            "password_encryption = 'scram-sha-256'".to_string(),
            "fsync = off".to_string(),
            "synchronous_commit = off".to_string(),
            "full_page_writes = off".to_string(),
            "max_connections = 200".to_string(),
            "shared_buffers = '32MB'".to_string(),
            "logging_collector = off".to_string(),
        ];
        if let Some((cert, key)) = &opts.tls {
            for (src, name) in [(cert, "server.crt"), (key, "server.key")] {
                let dst = cluster.data_dir.join(name);
                fs::copy(src, &dst).map_err(io_err(format!(
                    "copying {} to {}",
                    src.display(),
                    dst.display()
                )))?;
                fs::set_permissions(&dst, fs::Permissions::from_mode(0o600))
                    .map_err(io_err(format!("chmod {}", dst.display())))?;
                if let Some((uid, gid)) = owner {
                    chown(&dst, uid, gid)?;
                }
            }
            conf.push("ssl = on".to_string());
            conf.push("ssl_cert_file = 'server.crt'".to_string());
            conf.push("ssl_key_file = 'server.key'".to_string());
        }
        conf.extend(opts.extra_conf.iter().cloned());
        // Appending/truncating keeps the files' owner (postgres) intact.
        append(
            &cluster.data_dir.join("postgresql.conf"),
            &format!("\n# pgward cluster\n{}\n", conf.join("\n")),
        )?;
        let hba = if opts.hba.is_empty() {
            vec![
                "local all all trust".to_string(),
                "host all all 127.0.0.1/32 scram-sha-256".to_string(),
                "host all all ::1/128 scram-sha-256".to_string(),
            ]
        } else {
            opts.hba.clone()
        };
        let hba_path = cluster.data_dir.join("pg_hba.conf");
        fs::write(&hba_path, format!("{}\n", hba.join("\n")))
            .map_err(io_err(format!("writing {}", hba_path.display())))?;

        // Picking a free port by binding port 0 is racy (someone may take it
        // before the postmaster binds), so retry a few times with a new one.
        // Later `port` lines in postgresql.conf override earlier ones.
        let log = cluster.log_path().to_string_lossy().into_owned();
        let mut last_err = None;
        for _ in 0..3 {
            let port = free_port()?;
            append(
                &cluster.data_dir.join("postgresql.conf"),
                &format!("port = {port}\n"),
            )?;
            cluster.port = port;
            match cluster.run_server_cmd(
                "pg_ctl",
                &["-D", &data, "-l", &log, "-w", "-t", "60", "start"],
            ) {
                Ok(_) => {
                    cluster.stopped = false;
                    last_err = None;
                    break;
                }
                Err(e) => {
                    // pg_ctl's own stderr rarely says why; the server log does.
                    let tail = fs::read_to_string(cluster.log_path()).unwrap_or_default();
                    let tail: String = tail.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                    last_err = Some(match e {
                        ClusterError::Command {
                            command,
                            status,
                            stderr,
                        } => ClusterError::Command {
                            command,
                            status,
                            stderr: format!(
                                "{stderr}\nserver log (last lines, newest first):\n{tail}"
                            ),
                        },
                        other => other,
                    });
                }
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
        // pg_ctl -w already waited for readiness; one real query proves it.
        cluster.psql("postgres", "SELECT 1")?;
        Ok(cluster)
    }

    /// Run SQL with `psql` over the Unix socket as the superuser, one
    /// statement after another (fed on stdin, so `CREATE DATABASE` works in a
    /// multi-statement script), stopping at the first error. Returns stdout
    /// in unaligned, tuples-only form.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, ClusterError> {
        let socket = self.socket_dir.to_string_lossy().into_owned();
        let port = self.port.to_string();
        let mut cmd = Command::new(self.bin_dir.join("psql"));
        cmd.args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-h",
            &socket,
            "-p",
            &port,
            "-U",
            &self.superuser,
            "-d",
            db,
            "-f",
            "-",
        ]);
        for var in [
            "PGOPTIONS",
            "PGSERVICE",
            "PGSSLMODE",
            "PGPASSWORD",
            "PGCONNECT_TIMEOUT",
        ] {
            cmd.env_remove(var);
        }
        let command = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err(format!("spawning {command}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(sql.as_bytes())
                .and_then(|_| stdin.write_all(b"\n"))
                .map_err(io_err("writing SQL to psql"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(io_err(format!("waiting for {command}")))?;
        check(command, out)
    }

    /// Stop the server (`pg_ctl stop -m fast`). Idempotent; errors are
    /// ignored because this also runs from `Drop`.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let data = self.data_dir.to_string_lossy().into_owned();
        let _ = self.run_server_cmd("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
    }

    /// The server log (`pg_ctl -l`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Spawn a small detached watchdog (`sh`) that stops this cluster
    /// (`-m immediate`) and deletes its directory once the current process
    /// has exited. Needed where `Drop` never runs: clusters held in statics
    /// (test harnesses) or processes killed by a signal.
    pub fn stop_when_process_exits(&self) -> Result<(), ClusterError> {
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let runuser = if self.run_as_postgres {
            format!("runuser -u {PG_OS_USER} -- ")
        } else {
            String::new()
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {runuser}{pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; \
             rm -rf {dir}",
            pid = std::process::id(),
            pg_ctl = sh_quote(&pg_ctl),
            data = sh_quote(&self.data_dir),
            dir = sh_quote(self.dir.path()),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .current_dir("/")
            .spawn()
            .map_err(io_err("spawning cluster watchdog"))?;
        Ok(())
    }

    /// Stop and delete clusters under `base_dir` whose owning process (the
    /// `owner.pid` written by [`PgCluster::start`]) is gone. A backup for
    /// [`PgCluster::stop_when_process_exits`] (e.g. the watchdog was killed).
    /// Clusters of live processes, such as concurrently running test
    /// binaries, are left alone. Best effort: errors are ignored.
    pub fn reap_orphans(base_dir: &Path) {
        let Ok(entries) = fs::read_dir(base_dir) else {
            return;
        };
        let bin_dir = Self::find_bin_dir().ok();
        for entry in entries.flatten() {
            let dir = entry.path();
            if !entry
                .file_name()
                .to_string_lossy()
                .starts_with("pgward-pg-")
            {
                continue;
            }
            let owner_alive = fs::read_to_string(dir.join("owner.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if owner_alive {
                continue;
            }
            let data = dir.join("data");
            if let (Some(bin), true) = (&bin_dir, data.join("postmaster.pid").exists()) {
                let data = data.to_string_lossy().into_owned();
                let _ = server_cmd(
                    is_root(),
                    &bin.join("pg_ctl"),
                    &dir,
                    &["-D", &data, "-m", "immediate", "-w", "stop"],
                )
                .output();
            }
            let _ = fs::remove_dir_all(&dir);
        }
    }

    /// Run `initdb`/`pg_ctl` from the bin dir, as `postgres` when root.
    fn run_server_cmd(&self, program: &str, args: &[&str]) -> Result<String, ClusterError> {
        let mut cmd = server_cmd(
            self.run_as_postgres,
            &self.bin_dir.join(program),
            self.dir.path(),
            args,
        );
        let command = format!("{cmd:?}");
        // pg_ctl start: the postmaster gets the log file as stdout/stderr, so
        // capturing pg_ctl's own output does not leave pipes held open.
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(io_err(format!("running {command}")))?;
        check(command, out)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Build a server-side command; under root, wrapped in `runuser -u postgres`.
/// The working directory is one `postgres` can enter (not `/root`), otherwise
/// initdb/pg_ctl complain about the cwd.
fn server_cmd(as_postgres: bool, program: &Path, cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", PG_OS_USER, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).current_dir(cwd);
    cmd
}

fn check(command: String, out: Output) -> Result<String, ClusterError> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ClusterError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Effective uid is 0? Read from /proc so we need no libc dependency.
fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// uid/gid of the `postgres` OS user, creating it (`useradd --system
/// --no-create-home postgres`) if missing: initdb/postgres will not run as
/// root, so under root we need some unprivileged user, and `postgres` is the
/// conventional one (it exists wherever the server packages are installed).
fn ensure_postgres_user() -> Result<(u32, u32), ClusterError> {
    let id = |flag: &str| -> Result<u32, ClusterError> {
        let mut cmd = Command::new("id");
        cmd.args([flag, PG_OS_USER]);
        let command = format!("{cmd:?}");
        let out = cmd.output().map_err(io_err(format!("running {command}")))?;
        check(command.clone(), out)?
            .trim()
            .parse()
            .map_err(|_| ClusterError::Command {
                command,
                status: "ok".into(),
                stderr: "unparsable id output".into(),
            })
    };
    if id("-u").is_err() {
        let mut cmd = Command::new("useradd");
        cmd.args(["--system", "--no-create-home", PG_OS_USER]);
        let command = format!("{cmd:?}");
        let out = cmd.output().map_err(io_err(format!("running {command}")))?;
        check(command, out)?;
    }
    Ok((id("-u")?, id("-g")?))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), ClusterError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(io_err(format!("chown {}", path.display())))
}

fn append(path: &Path, text: &str) -> Result<(), ClusterError> {
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(io_err(format!("appending to {}", path.display())))
}

fn free_port() -> Result<u16, ClusterError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io_err("picking a free port"))
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.to_string_lossy().replace('\'', r"'\''"))
}

//! Shared harness for the integration tests: one real PostgreSQL cluster per
//! test binary (DESIGN.md, "Testing"), each test in its own database.
//!
//! Include with `mod common;` and call [`cluster()`].
//!
//! Cluster lifetime: statics are never dropped, so the cluster cannot be
//! stopped by `Drop`. Instead [`PgCluster::stop_when_process_exits`] spawns a
//! tiny watchdog that stops it (and deletes its directory) once the test
//! process is gone, and every new harness first reaps clusters under
//! [`CLUSTERS_DIR`] whose owning process is dead (in case a watchdog was
//! killed). Clusters of live processes (parallel test binaries, nextest) are
//! left alone.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use pgward::cluster::{ClusterOptions, PgCluster};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// Well-known parent of all test clusters, so leftovers can be found.
pub const CLUSTERS_DIR: &str = "/tmp/pgward-test-clusters";

pub const SCRAM_USER: &str = "scram_user";
pub const SCRAM_PW: &str = "scram_pw";
pub const MD5_USER: &str = "md5_user";
pub const MD5_PW: &str = "md5_pw";
pub const CLEAR_USER: &str = "clear_user";
pub const CLEAR_PW: &str = "clear_pw";
/// The superuser also gets a password so it can log in over TCP (SCRAM).
pub const SUPERUSER_PW: &str = "postgres";

/// The per-binary cluster plus the test PKI.
pub struct Harness {
    pub pg: PgCluster,
    /// Test CA (PEM) that signed the server and client certificates.
    pub ca_cert: PathBuf,
    /// Server certificate for `localhost` / `127.0.0.1`, also used by the cluster.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Client certificate with CN `alice`.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Keeps the PEM files alive.
    pub certs_dir: TempDir,
}

impl Harness {
    /// `host=127.0.0.1 port=.. user=.. password=.. dbname=..` for the cluster itself.
    pub fn conn_str(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db}",
            self.pg.port
        )
    }
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

/// The cluster for this test binary, started (with TLS and the test roles)
/// on first use.
pub fn cluster() -> &'static Harness {
    HARNESS.get_or_init(|| start().unwrap_or_else(|e| panic!("starting test cluster: {e}")))
}

/// Statics are never dropped, so each test binary's certificate directory
/// outlives it: remove those whose owning process is gone.
fn reap_cert_dirs() {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("pgward-certs-") else {
            continue;
        };
        let owner_alive = rest
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !owner_alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn start() -> Result<Harness, Box<dyn std::error::Error>> {
    PgCluster::reap_orphans(CLUSTERS_DIR.as_ref());
    std::fs::create_dir_all(CLUSTERS_DIR)?;
    // Must be traversable by the `postgres` OS user when we run as root.
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(CLUSTERS_DIR, std::fs::Permissions::from_mode(0o1777));
    }

    reap_cert_dirs();
    let certs_dir = tempfile::Builder::new()
        .prefix(&format!("pgward-certs-{}-", std::process::id()))
        .tempdir()?;
    let write = |name: &str, pem: String| -> std::io::Result<PathBuf> {
        let p = certs_dir.path().join(name);
        std::fs::write(&p, pem)?;
        Ok(p)
    };

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pgward test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = server_params.signed_by(&server_key, &ca, &ca_key)?;

    let client_key = KeyPair::generate()?;
    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "alice");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params.signed_by(&client_key, &ca, &ca_key)?;

    let ca_cert = write("ca.crt", ca.pem())?;
    let server_cert = write("server.crt", server.pem())?;
    let server_key = write("server.key", server_key.serialize_pem())?;
    let client_cert = write("client.crt", client.pem())?;
    let client_key = write("client.key", client_key.serialize_pem())?;

    // First match wins. `host` covers both SSL and non-SSL TCP connections.
    let hba = [
        "local all all trust",
        "host all md5_user 127.0.0.1/32 md5",
        "host all md5_user ::1/128 md5",
        "host all clear_user 127.0.0.1/32 password",
        "host all clear_user ::1/128 password",
        "host all all 127.0.0.1/32 scram-sha-256",
        "host all all ::1/128 scram-sha-256",
    ]
    .map(String::from)
    .to_vec();

    let pg = PgCluster::start(ClusterOptions {
        tls: Some((server_cert.clone(), server_key.clone())),
        extra_conf: vec![],
        hba,
        base_dir: Some(CLUSTERS_DIR.into()),
    })?;
    pg.stop_when_process_exits()?;

    pg.psql(
        "postgres",
        &format!(
            "ALTER ROLE postgres PASSWORD '{SUPERUSER_PW}';\n\
             CREATE ROLE {SCRAM_USER} LOGIN CREATEDB PASSWORD '{SCRAM_PW}';\n\
             SET password_encryption = 'md5';\n\
             CREATE ROLE {MD5_USER} LOGIN CREATEDB PASSWORD '{MD5_PW}';\n\
             RESET password_encryption;\n\
             CREATE ROLE {CLEAR_USER} LOGIN CREATEDB PASSWORD '{CLEAR_PW}';\n"
        ),
    )?;

    Ok(Harness {
        pg,
        ca_cert,
        server_cert,
        server_key,
        client_cert,
        client_key,
        certs_dir,
    })
}

/// Create a new, uniquely named database (`<prefix>_<pid>_<n>`) owned by
/// `scram_user`, usable by all test roles, and return its name.
pub fn fresh_database(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let name = format!("{prefix}_{}_{n}", std::process::id());
    let h = cluster();
    h.pg.psql(
        "postgres",
        &format!(
            "CREATE DATABASE {name} OWNER {SCRAM_USER};\n\
             GRANT ALL ON DATABASE {name} TO PUBLIC;\n"
        ),
    )
    .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
    // Since PG 15 only the owner may create in schema public.
    h.pg.psql(&name, "GRANT ALL ON SCHEMA public TO PUBLIC;")
        .unwrap_or_else(|e| panic!("granting on {name}: {e}"));
    name
}

/// Path of a client binary (`psql`, `pgbench`, ...) from the server's bin
/// dir, falling back to a bare name looked up on PATH.
pub fn pg_bin(name: &str) -> PathBuf {
    PgCluster::find_bin_dir()
        .map(|d| d.join(name))
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A pgward config pointing at the shared cluster, listening on a free port.
#[allow(dead_code)]
pub fn proxy_config() -> pgward::config::Config {
    let h = cluster();
    let mut cfg = pgward::config::Config::default();
    cfg.listen.addresses = vec!["127.0.0.1:0".to_string()];
    cfg.upstream.host = "127.0.0.1".to_string();
    cfg.upstream.port = h.pg.port;
    cfg
}

/// Start pgward in-process on the current tokio runtime; it stops when the
/// returned handle is dropped.
#[allow(dead_code)]
pub async fn start_proxy(cfg: pgward::config::Config) -> pgward::proxy::RunningProxy {
    pgward::proxy::Proxy::bind(cfg)
        .await
        .expect("pgward binds")
        .spawn()
}

/// A tokio-postgres client on `addr` (pgward or Postgres itself), its
/// connection driven by a spawned task.
#[allow(dead_code)]
pub async fn connect_client(
    addr: std::net::SocketAddr,
    user: &str,
    password: &str,
    db: &str,
) -> tokio_postgres::Client {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(addr.ip().to_string())
        .port(addr.port())
        .user(user)
        .password(password)
        .dbname(db);
    let (client, connection) = cfg.connect(tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// Poll `read` until `want` holds for the audit events it returns; fails
/// the test after 15 s, showing what was there.
pub async fn poll_events(
    read: impl Fn() -> Vec<serde_json::Value>,
    want: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let events = read();
        if want(&events) {
            return events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out: {events:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The statement events among `events`.
pub fn statements(events: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    events.iter().filter(|e| e["type"] == "statement").collect()
}

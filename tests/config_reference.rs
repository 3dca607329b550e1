//! The annotated reference config must always load: it is the documentation.

use pgward::config::Config;
use pgward::policy::Policy;

#[test]
fn reference_config_loads_and_compiles() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/pgward.toml");
    let cfg = Config::load(std::path::Path::new(path)).expect("reference config is valid");
    Policy::from_config(&cfg.policy).expect("reference policy compiles");
    assert_eq!(cfg.limits.max_startup_packet, 10_000);
}

#[test]
fn check_command_reports_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nmax_client_connections = 5\nbogus = 1\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgward"))
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3:1"), "{err}");
    assert!(err.contains("bogus"), "{err}");
}

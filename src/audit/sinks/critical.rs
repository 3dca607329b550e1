//! Longer retention for critical events: a file sink with
//! `critical_retention_days` writes every event to its main stream (kept
//! `retention_days`) and the critical ones again to a second stream,
//! `critical-<file name>` next to it, rotated the same way and kept
//! `critical_retention_days`. The prefix keeps the main stream's glob
//! (`audit*.jsonl`) from picking up the other chain.
//!
//! A separate stream rather than "keep the rotated files that hold critical
//! events longer": deleting files from the middle of one chain would make
//! `pgward audit verify` report missing events. Each stream has its own hash
//! chain, and retention only ever removes a stream's oldest files, which
//! `verify` accepts (the chain "continues" an earlier, deleted file).

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::file::{chain_end, State};
use crate::audit::chain::{self, Chain};
use crate::audit::config::FileSinkConfig;
use crate::audit::sink::Lines;

/// `dir/audit.jsonl` → `dir/critical-audit.jsonl`.
pub fn critical_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("critical-{name}"))
}

/// The few fields criticality depends on; everything else is skipped.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    statement: Option<StatementProbe<'a>>,
    #[serde(default, borrow)]
    auth: Option<AuthProbe<'a>>,
}

#[derive(Deserialize)]
struct StatementProbe<'a> {
    #[serde(borrow)]
    verdict: Cow<'a, str>,
    #[serde(borrow)]
    class: Cow<'a, str>,
}

#[derive(Deserialize)]
struct AuthProbe<'a> {
    #[serde(borrow)]
    result: Cow<'a, str>,
}

/// Critical: every event but an allowed statement of a class other than
/// DDL and ROLE, a connection open/close, and a successful authentication.
/// That is: blocked, monitored and rewritten statements, DDL and ROLE
/// statements, failed authentications, policy reloads and alerts. An event
/// that cannot be read is taken as critical (kept longer, not shorter).
pub fn is_critical(event: &str) -> bool {
    let Ok(p) = serde_json::from_str::<Probe>(event) else {
        return true;
    };
    match p.kind.as_ref() {
        "statement" => p
            .statement
            .is_none_or(|s| s.verdict != "allowed" || matches!(s.class.as_ref(), "DDL" | "ROLE")),
        "connection" => false,
        "auth" => p.auth.is_none_or(|a| a.result != "success"),
        _ => true,
    }
}

/// The second stream of a file sink: its own file, rotation and chain.
pub struct CriticalStream {
    state: State,
    chain: Chain,
    /// The `hash` ending a batch the main stream has written and this stream
    /// has not: when the pipeline offers that batch again, only this
    /// stream writes it (the main stream must not hold it twice).
    main_written: Option<String>,
}

impl CriticalStream {
    pub async fn open(main: &FileSinkConfig, retention_days: u64) -> anyhow::Result<Self> {
        let path = critical_path(&main.path);
        let config = FileSinkConfig {
            path: path.clone(),
            retention_days,
            critical_retention_days: None,
            ..main.clone()
        };
        let state = State::open_async(config).await?;
        let last = tokio::task::spawn_blocking(move || chain_end(&path)).await?;
        Ok(CriticalStream {
            state,
            chain: Chain::new(last),
            main_written: None,
        })
    }

    /// Deliver `events` (chained for the main stream): run `main`, which
    /// writes them all to the main stream, then write the critical ones here.
    pub fn deliver_after(
        &mut self,
        events: &Lines,
        main: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let end = events.last().and_then(|e| chain::hash_of(e.as_bytes()));
        if end.is_none() || self.main_written != end {
            main()?;
            self.main_written = end;
        }
        self.write(events)?;
        self.main_written = None;
        Ok(())
    }

    fn write(&mut self, events: &Lines) -> anyhow::Result<()> {
        // Link on a copy: the chain only moves on once the lines are written.
        let mut chain = self.chain.clone();
        let mut buf = Vec::new();
        for e in events.iter().filter(|e| is_critical(e)) {
            let body = chain::body_of(e).unwrap_or_else(|| e.to_string());
            buf.extend_from_slice(chain.link(&body).as_bytes());
            buf.push(b'\n');
        }
        if !buf.is_empty() {
            self.state.write(&buf)?;
        }
        self.chain = chain;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_means_not_a_plain_allowed_statement_connection_or_login() {
        let stmt = |verdict: &str, class: &str| {
            format!(
                r#"{{"v":1,"type":"statement","statement":{{"protocol":"simple","kind":"x","class":"{class}","verdict":"{verdict}","sql":"x"}}}}"#
            )
        };
        assert!(!is_critical(&stmt("allowed", "WRITE")));
        assert!(!is_critical(&stmt("allowed", "READ")));
        for (v, c) in [
            ("blocked", "WRITE"),
            ("monitored", "READ"),
            ("rewritten", "WRITE"),
            ("allowed", "DDL"),
            ("allowed", "ROLE"),
        ] {
            assert!(is_critical(&stmt(v, c)), "{v} {c}");
        }
        assert!(!is_critical(
            r#"{"v":1,"type":"connection","connection":{"action":"open"}}"#
        ));
        assert!(!is_critical(
            r#"{"v":1,"type":"auth","auth":{"result":"success"}}"#
        ));
        assert!(is_critical(
            r#"{"v":1,"type":"auth","auth":{"result":"failure","reason":"x"}}"#
        ));
        assert!(is_critical(r#"{"v":1,"type":"policy"}"#));
        assert!(is_critical(r#"{"v":1,"type":"alert"}"#));
        assert!(is_critical("not json"));
    }

    #[test]
    fn the_critical_stream_sits_next_to_the_main_one_and_is_not_its_rotated_file() {
        let main = Path::new("/var/log/pgward/audit.jsonl");
        let c = critical_path(main);
        assert_eq!(c, Path::new("/var/log/pgward/critical-audit.jsonl"));
        assert_eq!(
            critical_path(Path::new("audit")),
            Path::new("critical-audit")
        );
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("audit.jsonl");
        let rotated_critical =
            super::super::file::rotated_name(&critical_path(&main), 1_700_000_000_000_000);
        std::fs::write(&rotated_critical, "x\n").unwrap();
        assert!(super::super::file::rotated_files(&main).is_empty());
        assert_eq!(
            super::super::file::rotated_files(&critical_path(&main)),
            vec![rotated_critical]
        );
    }
}

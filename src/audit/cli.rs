//! `pgward audit verify | query | stats` over JSON-lines audit files.
//!
//! `verify` streams the files in the order given (the rotated files of one
//! sink sort chronologically: `ls audit*.jsonl`), recomputing each line's
//! hash and checking its link to the previous one, and stops at the first
//! problem: a modified line, a missing event, or events out of order.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::chain::{self, GENESIS};
use super::event::Event;
use super::time;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of audit files; exit 1 at the first modified,
    /// missing or reordered event (progress on stderr).
    Verify {
        /// The files of one sink, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Seconds between progress lines (fractions allowed).
        #[arg(long, default_value_t = 2.0, value_parser = parse_interval)]
        progress_every: f64,
    },
    /// Print the events that match every filter given.
    Query {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// From this time on (RFC 3339 or YYYY-MM-DD, UTC unless an offset is given).
        #[arg(long)]
        since: Option<String>,
        /// Before this time.
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        user: Option<String>,
        /// A table the statement touched (`t` matches `schema.t`).
        #[arg(long)]
        table: Option<String>,
        /// allowed | blocked | rewritten | monitored
        #[arg(long)]
        verdict: Option<String>,
        /// READ | WRITE | FUNCTION | ROLE | DDL | MISC | MISC_SET
        #[arg(long)]
        class: Option<String>,
        #[arg(long, value_enum, default_value = "json")]
        format: Format,
    },
    /// Count events by type, verdict, user, table and class (JSON).
    Stats {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Json,
    Csv,
}

/// Run a subcommand; the exit code.
pub fn run(cmd: AuditCommand) -> anyhow::Result<i32> {
    match cmd {
        AuditCommand::Verify {
            files,
            progress_every,
        } => {
            let every = Duration::from_secs_f64(progress_every);
            let report = verify_every(&files, &mut std::io::stderr(), every)?;
            println!("{}", report.summary());
            Ok(if report.problem.is_some() { 1 } else { 0 })
        }
        AuditCommand::Query {
            files,
            since,
            until,
            user,
            table,
            verdict,
            class,
            format,
        } => {
            let filter = QueryFilter {
                since: since
                    .as_deref()
                    .map(time::parse)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                until: until
                    .as_deref()
                    .map(time::parse)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                user,
                table,
                verdict: verdict.map(|v| v.to_ascii_lowercase()),
                class: class.map(|c| c.to_ascii_uppercase()),
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            query(&files, &filter, format, &mut out)?;
            out.flush()?;
            Ok(0)
        }
        AuditCommand::Stats { files } => {
            let s = stats(&files)?;
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(0)
        }
    }
}

/// Where in the input a line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub file: PathBuf,
    /// 1-based.
    pub line: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The line's bytes do not match its hash (or it is not a chained event).
    Modified(Position),
    /// The line links to an event that is not there.
    Missing(Position),
    /// The line links to an event that comes later, or came earlier.
    Reordered(Position),
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub events: u64,
    pub bytes: u64,
    /// Set when the first event continues an earlier chain (its files were
    /// rotated away): its `prev`.
    pub continues_from: Option<String>,
    pub problem: Option<Problem>,
    pub last_hash: Option<String>,
}

impl VerifyReport {
    pub fn summary(&self) -> String {
        match &self.problem {
            None => format!(
                "OK: {} events, chain intact{}; last hash {}",
                self.events,
                self.continues_from
                    .as_ref()
                    .map(|p| format!(" (continues a chain ending in {p})"))
                    .unwrap_or_default(),
                self.last_hash.as_deref().unwrap_or("-")
            ),
            Some(Problem::Modified(p)) => {
                format!("FAILED: event modified at {p} (its hash does not match its content)")
            }
            Some(Problem::Missing(p)) => format!(
                "FAILED: event(s) missing before {p} (it links to an event that is not there)"
            ),
            Some(Problem::Reordered(p)) => {
                format!("FAILED: events reordered at {p} (it links to an event out of place)")
            }
        }
    }
}

/// Lines of several files in order, with positions.
struct Lines {
    files: std::collections::VecDeque<PathBuf>,
    current: Option<(PathBuf, BufReader<File>, u64)>,
}

impl Lines {
    fn new(files: &[PathBuf]) -> Lines {
        Lines {
            files: files.iter().cloned().collect(),
            current: None,
        }
    }

    fn next_line(&mut self, buf: &mut Vec<u8>) -> anyhow::Result<Option<Position>> {
        loop {
            if self.current.is_none() {
                let Some(path) = self.files.pop_front() else {
                    return Ok(None);
                };
                let f =
                    File::open(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                self.current = Some((path, BufReader::with_capacity(1 << 20, f), 0));
            }
            let (path, reader, line) = self.current.as_mut().expect("opened above");
            buf.clear();
            let n = reader.read_until(b'\n', buf)?;
            if n == 0 {
                self.current = None;
                continue;
            }
            *line += 1;
            if buf.last() == Some(&b'\n') {
                buf.pop();
            }
            if buf.is_empty() {
                continue;
            }
            return Ok(Some(Position {
                file: path.clone(),
                line: *line,
            }));
        }
    }
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

/// Verify the chain across `files`, writing progress to `progress` every 2 s.
pub fn verify(files: &[PathBuf], progress: &mut dyn Write) -> anyhow::Result<VerifyReport> {
    verify_every(files, progress, Duration::from_secs(2))
}

/// Verify the chain across `files`: a progress line every `every`, and
/// one with the overall throughput at the end.
pub fn verify_every(
    files: &[PathBuf],
    progress: &mut dyn Write,
    every: Duration,
) -> anyhow::Result<VerifyReport> {
    let started = Instant::now();
    let report = verify_chain(files, progress, every, started)?;
    let secs = started.elapsed().as_secs_f64();
    let _ = writeln!(
        progress,
        "verify: {} events, {:.1} MB in {:.2} s ({:.0} MB/s)",
        report.events,
        report.bytes as f64 / 1e6,
        secs,
        report.bytes as f64 / 1e6 / secs.max(1e-9)
    );
    Ok(report)
}

fn verify_chain(
    files: &[PathBuf],
    progress: &mut dyn Write,
    every: Duration,
    started: Instant,
) -> anyhow::Result<VerifyReport> {
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let mut report = VerifyReport::default();
    let mut lines = Lines::new(files);
    let mut buf = Vec::new();
    let mut next_buf = Vec::new();
    // Hashes seen so far, to tell "reordered" from "missing" once a link
    // breaks: their first 8 bytes are plenty for that (a false match is a
    // 2^-64 chance, and detection itself never depends on it) and keep
    // memory at ~10-20 bytes per event.
    let mut seen: HashSet<u64> = HashSet::new();
    // The previous event's hash; empty before the first.
    let mut last = String::with_capacity(64);
    let mut last_progress = Instant::now();
    let mut pending = lines.next_line(&mut buf)?;
    while let Some(pos) = pending {
        report.bytes += buf.len() as u64 + 1;
        let Some(link) = chain::check(&buf) else {
            report.problem = Some(Problem::Modified(pos));
            return Ok(report);
        };
        if !link.intact {
            report.problem = Some(Problem::Modified(pos));
            return Ok(report);
        }
        if last.is_empty() {
            if link.prev != GENESIS {
                report.continues_from = Some(link.prev.to_string());
            }
        } else if last != link.prev {
            // Out of place if the event it links to was seen already or
            // is the one that follows (a swapped pair); else missing.
            let next = lines.next_line(&mut next_buf)?;
            let next_hash = next
                .as_ref()
                .and_then(|_| chain::check(&next_buf))
                .map(|l| l.hash);
            report.problem = Some(
                if seen.contains(&hash_key(link.prev)) || next_hash == Some(link.prev) {
                    Problem::Reordered(pos)
                } else {
                    Problem::Missing(pos)
                },
            );
            return Ok(report);
        }
        report.events += 1;
        seen.insert(hash_key(link.hash));
        last.clear();
        last.push_str(link.hash);
        if last_progress.elapsed() >= every {
            last_progress = Instant::now();
            let mb = report.bytes as f64 / 1e6;
            let _ = writeln!(
                progress,
                "verify: {:.0} / {:.0} MB ({:.0}%), {} events, {:.0} MB/s",
                mb,
                total as f64 / 1e6,
                100.0 * report.bytes as f64 / total.max(1) as f64,
                report.events,
                mb / started.elapsed().as_secs_f64()
            );
        }
        pending = lines.next_line(&mut buf)?;
    }
    report.last_hash = (!last.is_empty()).then_some(last);
    Ok(report)
}

/// The first 8 bytes of a (checked, hex) hash.
fn hash_key(hash: &str) -> u64 {
    u64::from_str_radix(&hash[..16], 16).unwrap_or(0)
}

#[derive(Debug, Default)]
pub struct QueryFilter {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub user: Option<String>,
    pub table: Option<String>,
    pub verdict: Option<String>,
    pub class: Option<String>,
}

impl QueryFilter {
    fn matches(&self, e: &Event) -> bool {
        let t = time::parse(&e.time).unwrap_or(i64::MIN);
        let s = e.statement.as_ref();
        self.since.is_none_or(|since| t >= since)
            && self.until.is_none_or(|until| t < until)
            && self
                .user
                .as_ref()
                .is_none_or(|u| e.user.as_ref() == Some(u))
            && self
                .verdict
                .as_ref()
                .is_none_or(|v| s.is_some_and(|s| s.verdict.as_str() == v))
            && self
                .class
                .as_ref()
                .is_none_or(|c| s.is_some_and(|s| &s.class == c))
            && self
                .table
                .as_ref()
                .is_none_or(|want| s.is_some_and(|s| s.tables.iter().any(|t| table_is(t, want))))
    }
}

/// `users` matches `users` and `public.users`; `public.users` only itself.
fn table_is(table: &str, want: &str) -> bool {
    table == want || (!want.contains('.') && table.rsplit('.').next() == Some(want))
}

fn for_each_event(
    files: &[PathBuf],
    mut f: impl FnMut(&[u8], Event) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut lines = Lines::new(files);
    let mut buf = Vec::new();
    while let Some(pos) = lines.next_line(&mut buf)? {
        let event: Event = serde_json::from_slice(&buf)
            .map_err(|e| anyhow::anyhow!("{pos}: not an audit event: {e}"))?;
        f(&buf, event)?;
    }
    Ok(())
}

pub const CSV_HEADER: &str = "time,id,type,session_id,user,database,client_addr,verdict,rule_id,class,kind,tables,status,sqlstate,command_tag,rows,duration_us,sql";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_row(e: &Event) -> String {
    let s = e.statement.as_ref();
    let o = s.map(|s| &s.outcome);
    let opt = |v: Option<String>| v.unwrap_or_default();
    [
        e.time.clone(),
        e.id.clone(),
        e.kind_label().to_string(),
        opt(e.session_id.map(|v| v.to_string())),
        opt(e.user.clone()),
        opt(e.database.clone()),
        opt(e.client_addr.clone()),
        opt(s.map(|s| s.verdict.as_str().to_string())),
        opt(s.and_then(|s| s.rule_id.clone())),
        opt(s.map(|s| s.class.clone())),
        opt(s.map(|s| s.kind.clone())),
        opt(s.map(|s| s.tables.join(" "))),
        opt(o.map(|o| o.status.clone())),
        opt(o.and_then(|o| o.sqlstate.clone())),
        opt(o.and_then(|o| o.command_tag.clone())),
        opt(o.and_then(|o| o.rows).map(|r| r.to_string())),
        opt(o.map(|o| o.duration_us.to_string())),
        opt(s.map(|s| s.sql.clone())),
    ]
    .iter()
    .map(|f| csv_field(f))
    .collect::<Vec<_>>()
    .join(",")
}

/// Write matching events as JSON lines (as stored) or CSV.
pub fn query(
    files: &[PathBuf],
    filter: &QueryFilter,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    let mut n = 0;
    if matches!(format, Format::Csv) {
        writeln!(out, "{CSV_HEADER}")?;
    }
    for_each_event(files, |raw, e| {
        if filter.matches(&e) {
            n += 1;
            match format {
                Format::Json => {
                    out.write_all(raw)?;
                    out.write_all(b"\n")?;
                }
                Format::Csv => writeln!(out, "{}", csv_row(&e))?,
            }
        }
        Ok(())
    })?;
    Ok(n)
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Stats {
    pub events: u64,
    pub by_type: BTreeMap<String, u64>,
    pub by_verdict: BTreeMap<String, u64>,
    pub by_user: BTreeMap<String, u64>,
    pub by_table: BTreeMap<String, u64>,
    pub by_class: BTreeMap<String, u64>,
    pub first: Option<String>,
    pub last: Option<String>,
}

pub fn stats(files: &[PathBuf]) -> anyhow::Result<Stats> {
    let mut s = Stats::default();
    for_each_event(files, |_, e| {
        s.events += 1;
        *s.by_type.entry(e.kind_label().into()).or_default() += 1;
        if let Some(st) = &e.statement {
            *s.by_verdict.entry(st.verdict.as_str().into()).or_default() += 1;
            *s.by_class.entry(st.class.clone()).or_default() += 1;
            *s.by_user
                .entry(e.user.clone().unwrap_or_default())
                .or_default() += 1;
            for t in &st.tables {
                *s.by_table.entry(t.clone()).or_default() += 1;
            }
        }
        if s.first.is_none() {
            s.first = Some(e.time.clone());
        }
        s.last = Some(e.time);
        Ok(())
    })?;
    Ok(s)
}

/// Convenience for tests: verify one file quietly.
pub fn verify_file(path: &Path) -> anyhow::Result<VerifyReport> {
    verify(&[path.to_path_buf()], &mut std::io::sink())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::Chain;

    fn write_chain(dir: &Path, n: usize) -> (PathBuf, Vec<String>) {
        let mut c = Chain::new(None);
        let lines: Vec<String> = (0..n)
            .map(|i| c.link(&format!("{{\"v\":1,\"id\":\"{i:019}\",\"time\":\"2026-01-01T00:00:00.000000Z\",\"type\":\"policy\"}}")))
            .collect();
        let p = dir.join("a.jsonl");
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        (p, lines)
    }

    #[test]
    fn verify_finds_edits_deletions_and_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let (p, mut lines) = write_chain(dir.path(), 10);
        let r = verify_file(&p).unwrap();
        assert_eq!((r.events, r.problem), (10, None));

        let edited = lines[4].replacen("policy", "polica", 1);
        let mut l = lines.clone();
        l[4] = edited;
        std::fs::write(&p, l.join("\n") + "\n").unwrap();
        assert!(
            matches!(verify_file(&p).unwrap().problem, Some(Problem::Modified(pos)) if pos.line == 5)
        );

        let mut l = lines.clone();
        l.remove(6);
        std::fs::write(&p, l.join("\n") + "\n").unwrap();
        assert!(
            matches!(verify_file(&p).unwrap().problem, Some(Problem::Missing(pos)) if pos.line == 7)
        );

        lines.swap(2, 3);
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        assert!(
            matches!(verify_file(&p).unwrap().problem, Some(Problem::Reordered(pos)) if pos.line == 3)
        );
    }
}

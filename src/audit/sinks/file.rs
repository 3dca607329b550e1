//! The `file` sink: JSON lines appended to one active file, rotated by size
//! and by UTC day into `<stem>.<compact UTC time>.<ext>` next to it (those
//! names sort chronologically, before the active file), rotated files
//! deleted after `retention_days`, and `fsync` always / every interval (a
//! background task syncs when something was written) / never. With
//! `critical_retention_days`, critical events also go to a second stream
//! kept longer (see [`super::critical`]).

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::audit::chain;
use crate::audit::config::{FileSinkConfig, Fsync};
use crate::audit::sink::{Lines, Sink};
use crate::audit::time;

use super::critical::CriticalStream;

pub struct FileSink {
    name: String,
    state: Option<State>,
    critical: Option<CriticalStream>,
}

/// What the writer owns: used in place for appends, moved into
/// `spawn_blocking` (and back) for writes that wait for the disk.
pub(super) struct State {
    config: FileSinkConfig,
    file: File,
    size: u64,
    /// UTC day of the file's first event.
    day: i64,
    /// The file the interval syncer syncs, and whether it has unsynced data.
    synced: Arc<Mutex<File>>,
    dirty: Arc<AtomicBool>,
}

impl FileSink {
    pub async fn open(name: String, config: FileSinkConfig) -> anyhow::Result<FileSink> {
        let critical = match config.critical_retention_days {
            Some(days) => Some(CriticalStream::open(&config, days).await?),
            None => None,
        };
        let state = State::open_async(config).await?;
        Ok(FileSink {
            name,
            state: Some(state),
            critical,
        })
    }
}

impl State {
    /// Open (off the event loop) and start the interval syncer if configured.
    pub(super) async fn open_async(config: FileSinkConfig) -> anyhow::Result<State> {
        let state = tokio::task::spawn_blocking(move || State::open(config)).await??;
        if state.config.fsync == Fsync::Interval {
            spawn_syncer(
                Arc::downgrade(&state.synced_handle()),
                state.dirty.clone(),
                Duration::from_millis(state.config.fsync_interval_ms.max(1)),
            );
        }
        Ok(state)
    }

    fn open(config: FileSinkConfig) -> anyhow::Result<State> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
        }
        let file = open_append(&config.path)?;
        let meta = file.metadata()?;
        let today = time::day_of(config.clock.now());
        let day = if meta.len() > 0 {
            meta.modified()
                .ok()
                .map_or(today, |t| day_of_systime(t).unwrap_or(today))
        } else {
            today
        };
        let synced = Arc::new(Mutex::new(file.try_clone()?));
        let state = State {
            size: meta.len(),
            day,
            file,
            synced,
            dirty: Arc::new(AtomicBool::new(false)),
            config,
        };
        state.purge();
        Ok(state)
    }

    /// The handle the syncer holds weakly: it lives as long as the sink.
    fn synced_handle(&self) -> Arc<Mutex<File>> {
        self.synced.clone()
    }

    pub(super) fn write(&mut self, buf: &[u8]) -> anyhow::Result<()> {
        let now = self.config.clock.now();
        let new_day = self.config.rotate_daily && time::day_of(now) != self.day;
        let too_big =
            self.config.max_bytes > 0 && self.size + buf.len() as u64 > self.config.max_bytes;
        if self.size > 0 && (new_day || too_big) {
            self.rotate(now)?;
        }
        if self.size == 0 {
            self.day = time::day_of(now);
        }
        self.file
            .write_all(buf)
            .with_context(|| format!("writing {}", self.config.path.display()))?;
        self.size += buf.len() as u64;
        match self.config.fsync {
            Fsync::Always => self.file.sync_data()?,
            Fsync::Interval => self.dirty.store(true, Ordering::Release),
            Fsync::Never => {}
        }
        Ok(())
    }

    fn rotate(&mut self, now: i64) -> anyhow::Result<()> {
        if self.config.fsync != Fsync::Never {
            self.file.sync_data()?;
        }
        let target = rotated_name(&self.config.path, now);
        fs::rename(&self.config.path, &target).with_context(|| {
            format!(
                "rotating {} to {}",
                self.config.path.display(),
                target.display()
            )
        })?;
        self.file = open_append(&self.config.path)?;
        *self.synced.lock().unwrap_or_else(|p| p.into_inner()) = self.file.try_clone()?;
        self.size = 0;
        if let Some(dir) = self.config.path.parent() {
            // Make the rename itself durable.
            if let Ok(d) = File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }) {
                let _ = d.sync_all();
            }
        }
        self.purge();
        Ok(())
    }

    /// Delete rotated files older than `retention_days` (by modification
    /// time, i.e. their newest event).
    fn purge(&self) {
        if self.config.retention_days == 0 {
            return;
        }
        let keep = self.config.retention_days as i64 * 86_400_000_000;
        let now = self.config.clock.now();
        for old in rotated_files(&self.config.path) {
            let modified = fs::metadata(&old)
                .and_then(|m| m.modified())
                .ok()
                .and_then(micros_of_systime);
            if modified.is_some_and(|m| now - m > keep) {
                match fs::remove_file(&old) {
                    Ok(()) => {
                        tracing::info!(file = %old.display(), "audit file past retention deleted")
                    }
                    Err(e) => {
                        tracing::warn!(file = %old.display(), error = %e, "cannot delete audit file past retention")
                    }
                }
            }
        }
    }
}

fn open_append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open audit file {}", path.display()))
}

fn micros_of_systime(t: SystemTime) -> Option<i64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_micros() as i64)
}

fn day_of_systime(t: SystemTime) -> Option<i64> {
    micros_of_systime(t).map(time::day_of)
}

/// `dir/audit.jsonl` → (`audit`, `.jsonl`); no extension → (`audit`, ``).
fn stem_ext(path: &Path) -> (String, String) {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (stem, ext)
}

/// Where the active file goes when rotated at `micros`.
pub fn rotated_name(path: &Path, micros: i64) -> PathBuf {
    let (stem, ext) = stem_ext(path);
    path.with_file_name(format!("{stem}.{}{ext}", time::compact_micros(micros)))
}

/// Rotated files of `path`, oldest first (their names sort by time).
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let (stem, ext) = stem_ext(path);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefix = format!("{stem}.");
    let mut found: Vec<PathBuf> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let middle = name.strip_prefix(&prefix)?.strip_suffix(ext.as_str())?;
            // 20261123T134501.123456Z
            let stamp = middle.len() == 23
                && middle.ends_with('Z')
                && middle.as_bytes()[8] == b'T'
                && middle.as_bytes()[15] == b'.';
            stamp.then(|| entry.path())
        })
        .collect();
    found.sort();
    found
}

/// Where the chain of the stream whose active file is `path` ends: its last
/// complete line, or the newest rotated file's when it is empty.
pub(super) fn chain_end(path: &Path) -> Option<String> {
    last_hash_in(path).or_else(|| {
        rotated_files(path)
            .last()
            .and_then(|newest| last_hash_in(newest))
    })
}

/// The hash of the last complete chained line of `path`, if any.
fn last_hash_in(path: &Path) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        f.seek(SeekFrom::Start(start)).ok()?;
        let mut tail = Vec::new();
        Read::by_ref(&mut f)
            .take(window)
            .read_to_end(&mut tail)
            .ok()?;
        // A torn last line (crash mid-write) has no newline: skip it.
        let complete = match tail.iter().rposition(|&b| b == b'\n') {
            Some(i) => &tail[..i],
            None if start == 0 => return None,
            None => {
                window *= 4;
                continue;
            }
        };
        let line_start = complete
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if line_start == 0 && start > 0 {
            window *= 4;
            continue;
        }
        return chain::hash_of(&complete[line_start..]);
    }
}

fn spawn_syncer(file: Weak<Mutex<File>>, dirty: Arc<AtomicBool>, every: Duration) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(file) = file.upgrade() else { return };
            if dirty.swap(false, Ordering::AcqRel) {
                let result = tokio::task::spawn_blocking(move || {
                    file.lock().unwrap_or_else(|p| p.into_inner()).sync_data()
                })
                .await;
                if let Ok(Err(e)) = result {
                    tracing::warn!(error = %e, "audit file fsync failed");
                    dirty.store(true, Ordering::Release);
                }
            }
        }
    });
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(
        &'a mut self,
        batch: &'a Lines,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        Box::pin(async move {
            let mut state = self
                .state
                .take()
                .context("file sink lost its state in an earlier failure")?;
            if self.critical.is_none() && state.config.fsync != Fsync::Always {
                // An append that does not wait for the disk takes
                // microseconds: done in place on the audit thread, it
                // saves two thread wake-ups per batch.
                let result = state.write(batch.ndjson());
                self.state = Some(state);
                return result;
            }
            // One copy of the batch goes to the blocking thread.
            let batch = batch.clone();
            let mut critical = self.critical.take();
            let (state, critical, result) = tokio::task::spawn_blocking(move || {
                let result = match critical.as_mut() {
                    Some(c) => c.deliver_after(&batch, || state.write(batch.ndjson())),
                    None => state.write(batch.ndjson()),
                };
                (state, critical, result)
            })
            .await?;
            self.state = Some(state);
            self.critical = critical;
            result
        })
    }

    fn last_hash(&mut self) -> Option<String> {
        chain_end(&self.state.as_ref()?.config.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::Chain;

    fn config(dir: &Path) -> FileSinkConfig {
        FileSinkConfig {
            path: dir.join("audit.jsonl"),
            ..FileSinkConfig::default()
        }
    }

    fn lines(n: usize, chain: &mut Chain) -> Lines {
        let mut lines = Lines::default();
        for i in 0..n {
            lines.push_linked(chain, &format!("{{\"v\":1,\"n\":{i}}}"));
        }
        lines
    }

    #[tokio::test]
    async fn rotates_by_size_and_resumes_the_chain_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.max_bytes = 1000;
        cfg.fsync = Fsync::Always;
        let mut sink = FileSink::open("f".into(), cfg.clone()).await.unwrap();
        assert_eq!(sink.last_hash(), None);
        let mut chain = Chain::new(None);
        for _ in 0..5 {
            sink.deliver(&lines(4, &mut chain)).await.unwrap();
        }
        let rotated = rotated_files(&cfg.path);
        assert!(rotated.len() >= 2, "{rotated:?}");
        for f in rotated.iter().chain([&cfg.path]) {
            assert!(fs::metadata(f).unwrap().len() <= 1000);
        }
        drop(sink);
        let mut again = FileSink::open("f".into(), cfg.clone()).await.unwrap();
        assert_eq!(again.last_hash().as_deref(), Some(chain.last()));
        // The active file empty (just rotated): the newest rotated file answers.
        fs::rename(&cfg.path, rotated_name(&cfg.path, time::now_micros())).unwrap();
        let mut third = FileSink::open("f".into(), cfg).await.unwrap();
        assert_eq!(third.last_hash().as_deref(), Some(chain.last()));
    }

    #[tokio::test]
    async fn retention_deletes_only_old_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.retention_days = 30;
        let old = rotated_name(&cfg.path, 0);
        let recent = rotated_name(&cfg.path, time::now_micros());
        let unrelated = dir.path().join("audit.notes.jsonl");
        for f in [&old, &recent, &unrelated] {
            fs::write(f, b"x\n").unwrap();
        }
        let month_ago = SystemTime::now() - Duration::from_secs(31 * 86_400);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(month_ago)
            .unwrap();
        let _sink = FileSink::open("f".into(), cfg).await.unwrap();
        assert!(!old.exists());
        assert!(recent.exists() && unrelated.exists());
    }

    #[tokio::test]
    async fn each_stream_purges_by_its_own_retention_at_rotation_by_the_sinks_clock() {
        use crate::audit::config::Clock;
        use crate::audit::sinks::critical::critical_path;
        use std::sync::atomic::AtomicI64;
        const DAY: i64 = 86_400_000_000;
        let dir = tempfile::tempdir().unwrap();
        let start = time::now_micros();
        let clock = Arc::new(AtomicI64::new(start));
        let c = clock.clone();
        let mut cfg = config(dir.path());
        cfg.retention_days = 30;
        cfg.critical_retention_days = Some(90);
        cfg.clock = Clock(Arc::new(move || c.load(Ordering::SeqCst)));
        let critical = critical_path(&cfg.path);
        let mut sink = FileSink::open("f".into(), cfg.clone()).await.unwrap();
        let mut chain = Chain::new(None);
        let batch = |chain: &mut Chain| -> Lines {
            [
                r#"{"v":1,"type":"connection"}"#,
                r#"{"v":1,"type":"alert"}"#,
            ]
            .iter()
            .map(|b| chain.link(b))
            .collect()
        };
        sink.deliver(&batch(&mut chain)).await.unwrap();
        // Day 1: the first event rotates both streams (files written "now").
        clock.store(start + DAY, Ordering::SeqCst);
        sink.deliver(&batch(&mut chain)).await.unwrap();
        assert_eq!(rotated_files(&cfg.path).len(), 1);
        assert_eq!(rotated_files(&critical).len(), 1);
        // Day 40 by the sink's clock: every file (all written on real day 0)
        // is 40 days old. Rotating drops the main stream's, not the
        // critical stream's.
        clock.store(start + 40 * DAY, Ordering::SeqCst);
        sink.deliver(&batch(&mut chain)).await.unwrap();
        assert_eq!(rotated_files(&cfg.path).len(), 0, "past 30 days");
        assert_eq!(rotated_files(&critical).len(), 2, "kept for 90 days");
        // Day 100: past 90 days too.
        clock.store(start + 100 * DAY, Ordering::SeqCst);
        sink.deliver(&batch(&mut chain)).await.unwrap();
        assert_eq!(rotated_files(&critical).len(), 0);
        // The critical stream holds only the alerts, one chain.
        let text = fs::read_to_string(&critical).unwrap();
        let line = text.lines().next().unwrap();
        assert!(line.contains("alert") && text.lines().count() == 1);
        let main_last = chain.last().to_string();
        assert_ne!(chain::check(line.as_bytes()).unwrap().hash, main_last);
    }

    #[tokio::test]
    async fn a_batch_offered_again_after_the_critical_stream_failed_is_not_doubled_in_the_main_one()
    {
        use crate::audit::sinks::critical::critical_path;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.critical_retention_days = Some(0);
        // Every write to the critical stream fails (ENOSPC).
        std::os::unix::fs::symlink("/dev/full", critical_path(&cfg.path)).unwrap();
        let mut sink = FileSink::open("f".into(), cfg.clone()).await.unwrap();
        let mut chain = Chain::new(None);
        let batch: Lines = [r#"{"v":1,"type":"policy"}"#, r#"{"v":1,"type":"auth"}"#]
            .iter()
            .map(|b| chain.link(b))
            .collect();
        for _ in 0..3 {
            // The pipeline offers the same batch until it is accepted.
            assert!(sink.deliver(&batch).await.is_err());
        }
        let main = fs::read_to_string(&cfg.path).unwrap();
        assert_eq!(main.lines().count(), 2, "{main}");
        // A new batch is written to the main stream again.
        let next: Lines = [chain.link(r#"{"v":1,"type":"alert"}"#)]
            .into_iter()
            .collect();
        assert!(sink.deliver(&next).await.is_err());
        assert_eq!(fs::read_to_string(&cfg.path).unwrap().lines().count(), 3);
    }

    #[test]
    fn a_torn_last_line_is_not_taken_for_the_chain_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let mut chain = Chain::new(None);
        let good = chain.link("{\"v\":1}");
        fs::write(&path, format!("{good}\n{{\"v\":1,\"tor")).unwrap();
        assert_eq!(last_hash_in(&path).as_deref(), Some(chain.last()));
    }
}

//! A durable, ordered on-disk spool of batches for a network sink.
//!
//! One file per batch, named by a 20-digit sequence number so a directory
//! listing is the delivery order. A batch is written to `<seq>.tmp`,
//! fsynced, renamed to `<seq>.batch` and the directory fsynced: once
//! [`Spool::push`] returns, the batch survives `kill -9` and power loss.
//! Leftover `.tmp` files (a crash mid-write) were never acknowledged and are
//! removed on open. Batches a receiver rejected for good are moved to
//! `rejected/` (kept, counted, never silently dropped).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {dir}: {op}: {source}")]
    Io {
        dir: String,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("spool {dir} is full ({bytes} of {max} bytes)")]
    Full { dir: String, bytes: u64, max: u64 },
}

/// The spool of one sink. Not shared by itself: callers wrap it in a mutex.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// (sequence, size in bytes), oldest first.
    entries: VecDeque<(u64, u64)>,
    next_seq: u64,
    bytes: u64,
    max_bytes: u64,
}

const SUFFIX: &str = ".batch";

impl Spool {
    /// Open (creating if needed) the spool in `dir`, holding at most
    /// `max_bytes` of batches.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let err = |op, source| SpoolError::Io {
            dir: dir.display().to_string(),
            op,
            source,
        };
        fs::create_dir_all(dir).map_err(|e| err("create", e))?;
        let mut entries = Vec::new();
        for item in fs::read_dir(dir).map_err(|e| err("list", e))? {
            let item = item.map_err(|e| err("list", e))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                fs::remove_file(item.path()).map_err(|e| err("remove partial batch", e))?;
                continue;
            }
            let Some(seq) = name
                .strip_suffix(SUFFIX)
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let size = item.metadata().map_err(|e| err("stat", e))?.len();
            entries.push((seq, size));
        }
        entries.sort_unstable();
        let next_seq = entries.last().map_or(1, |(s, _)| s + 1);
        let bytes = entries.iter().map(|(_, n)| n).sum();
        Ok(Spool {
            dir: dir.to_path_buf(),
            entries: entries.into(),
            next_seq,
            bytes,
            max_bytes,
        })
    }

    fn err(&self, op: &'static str, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            dir: self.dir.display().to_string(),
            op,
            source,
        }
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}{SUFFIX}"))
    }

    /// Append a batch durably; returns its sequence number.
    pub fn push(&mut self, body: &[u8]) -> Result<u64, SpoolError> {
        let size = body.len() as u64;
        if self.bytes + size > self.max_bytes {
            return Err(SpoolError::Full {
                dir: self.dir.display().to_string(),
                bytes: self.bytes,
                max: self.max_bytes,
            });
        }
        let seq = self.next_seq;
        let tmp = self.dir.join(format!("{seq:020}.tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| self.err("create batch", e))?;
        f.write_all(body).map_err(|e| self.err("write batch", e))?;
        f.sync_all().map_err(|e| self.err("fsync batch", e))?;
        drop(f);
        fs::rename(&tmp, self.path(seq)).map_err(|e| self.err("rename batch", e))?;
        self.sync_dir()?;
        self.next_seq += 1;
        self.entries.push_back((seq, size));
        self.bytes += size;
        Ok(seq)
    }

    fn sync_dir(&self) -> Result<(), SpoolError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.err("fsync directory", e))
    }

    /// The oldest batch: its sequence number and contents.
    pub fn front(&self) -> Result<Option<(u64, Vec<u8>)>, SpoolError> {
        let Some(&(seq, _)) = self.entries.front() else {
            return Ok(None);
        };
        let body = fs::read(self.path(seq)).map_err(|e| self.err("read batch", e))?;
        Ok(Some((seq, body)))
    }

    /// Forget the oldest batch `seq` after it was delivered.
    pub fn pop(&mut self, seq: u64) -> Result<(), SpoolError> {
        self.take_front(seq)?;
        fs::remove_file(self.path(seq)).map_err(|e| self.err("remove batch", e))?;
        self.sync_dir()
    }

    /// Move the oldest batch `seq` to `rejected/`: the receiver refused it
    /// for good, and retrying it would block every later batch.
    pub fn reject(&mut self, seq: u64) -> Result<PathBuf, SpoolError> {
        self.take_front(seq)?;
        let rejected = self.dir.join("rejected");
        fs::create_dir_all(&rejected).map_err(|e| self.err("create rejected/", e))?;
        let to = rejected.join(format!("{seq:020}{SUFFIX}"));
        fs::rename(self.path(seq), &to).map_err(|e| self.err("move rejected batch", e))?;
        self.sync_dir()?;
        Ok(to)
    }

    fn take_front(&mut self, seq: u64) -> Result<(), SpoolError> {
        match self.entries.front() {
            Some(&(s, size)) if s == seq => {
                self.entries.pop_front();
                self.bytes -= size;
                Ok(())
            }
            _ => Err(self.err(
                "dequeue",
                std::io::Error::other(format!("batch {seq} is not the oldest")),
            )),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of batches waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The newest batch's contents (to recover the chain's last hash).
    pub fn back(&self) -> Result<Option<Vec<u8>>, SpoolError> {
        match self.entries.back() {
            Some(&(seq, _)) => fs::read(self.path(seq))
                .map(Some)
                .map_err(|e| self.err("read batch", e)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_come_back_in_order_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        let a = s.push(b"one\n").unwrap();
        s.push(b"two\n").unwrap();
        s.push(b"three\n").unwrap();
        s.pop(a).unwrap();
        drop(s);
        // A crash mid-write leaves a .tmp that was never acknowledged.
        std::fs::write(dir.path().join("00000000000000000009.tmp"), b"half").unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.bytes(), 10);
        let (seq, body) = s.front().unwrap().unwrap();
        assert_eq!(body, b"two\n");
        s.pop(seq).unwrap();
        let next = s.push(b"four\n").unwrap();
        assert!(next > seq + 1, "sequence numbers keep growing");
        assert_eq!(s.front().unwrap().unwrap().1, b"three\n");
        assert_eq!(s.back().unwrap().unwrap(), b"four\n");
        assert!(!dir.path().join("00000000000000000009.tmp").exists());
    }

    #[test]
    fn a_full_spool_refuses_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 8).unwrap();
        s.push(b"12345").unwrap();
        let e = s.push(b"6789").unwrap_err();
        assert!(
            matches!(
                e,
                SpoolError::Full {
                    bytes: 5,
                    max: 8,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn rejected_batches_are_kept_aside_and_only_the_oldest_can_leave() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        let a = s.push(b"bad\n").unwrap();
        let b = s.push(b"good\n").unwrap();
        assert!(s.pop(b).is_err());
        let to = s.reject(a).unwrap();
        assert_eq!(std::fs::read(to).unwrap(), b"bad\n");
        assert_eq!(s.front().unwrap().unwrap().0, b);
        // rejected/ is not read back as pending.
        assert_eq!(Spool::open(dir.path(), 1 << 20).unwrap().len(), 1);
    }
}

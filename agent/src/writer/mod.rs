//! JSONL output: a single mmap-backed file (`--output`) or sealed segments (`--output-dir`),
//! written on a thread of its own so a slow disk never delays collection.
//!
//! Failure policy: a line is written whole or not at all. When a write fails (disk full, EIO),
//! the line stays queued (bounded; oldest dropped and counted past the bound), the failure is
//! logged and counted, and writing resumes by itself when space returns.

mod mmap_log;
mod segments;

use std::{
    collections::VecDeque,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

pub use mmap_log::{MmapLog, Repair, repair};
pub use segments::{Recovered, SegmentConfig, SegmentWriter, recover};

use crate::error::{Error, Result};

/// Lines kept in memory while the disk refuses writes: ~1 day of 5 s snapshots.
const MAX_PENDING_LINES: usize = 16_384;
const MAX_PENDING_BYTES: usize = 64 << 20;

pub enum Sink {
    File {
        log: MmapLog,
    },
    /// Boxed: a segment writer is several times the size of a single file's state.
    Segments(Box<SegmentWriter>),
}

impl Sink {
    /// Single-file mode; repairs what a crash left. Fails early if the path is not writable.
    pub fn file(path: &Path) -> Result<Sink> {
        let (log, rep) = MmapLog::open(path, 64 * 1024)?;
        if rep.dropped > 0 {
            tracing::warn!(file = %path.display(), kept = rep.kept, dropped_bytes = rep.dropped, "repaired output left by a crash");
        }
        Ok(Sink::File { log })
    }

    pub fn segments(cfg: SegmentConfig) -> Result<Sink> {
        let (w, rec) = SegmentWriter::open(cfg)?;
        if !rec.sealed.is_empty() || !rec.deleted.is_empty() {
            tracing::info!(sealed = rec.sealed.len(), deleted = rec.deleted.len(), "recovered staging segments");
        }
        Ok(Sink::Segments(Box::new(w)))
    }

    fn append(&mut self, line: &[u8]) -> Result<()> {
        match self {
            Sink::File { log } => log.append(line),
            Sink::Segments(w) => w.append(line),
        }
    }

    /// A failure after a line was written (a segment seal), which must not make the caller
    /// write the line again.
    fn take_deferred_error(&mut self) -> Option<Error> {
        match self {
            Sink::File { .. } => None,
            Sink::Segments(w) => w.take_seal_error(),
        }
    }

    fn unflushed(&self) -> u32 {
        match self {
            Sink::File { log } => log.unflushed(),
            Sink::Segments(w) => w.unflushed(),
        }
    }

    fn flush(&mut self, fsync: bool) -> Result<()> {
        match self {
            Sink::File { log } => log.flush(fsync),
            Sink::Segments(w) => w.flush(fsync),
        }
    }

    fn tick(&mut self) -> Result<()> {
        match self {
            Sink::File { .. } => Ok(()),
            Sink::Segments(w) => w.seal_if_old(),
        }
    }

    /// Flush and truncate (file) or seal (segments).
    fn close(self) -> Result<()> {
        match self {
            Sink::File { log } => log.finish().map(|_| ()),
            Sink::Segments(mut w) => w.seal().map(|_| ()),
        }
    }
}

/// Counters shared with the run loop and the exporters.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub bytes_written: AtomicU64,
    pub lines_written: AtomicU64,
    pub write_failures: AtomicU64,
    pub lines_dropped: AtomicU64,
    /// False while writes are failing.
    pub writable: AtomicBool,
}

enum Msg {
    Line(Vec<u8>),
    Close,
}

pub struct Writer {
    tx: mpsc::Sender<Msg>,
    thread: Option<thread::JoinHandle<Result<()>>>,
    pub stats: Arc<WriterStats>,
}

impl Writer {
    /// Starts the writer thread. `flush_every` lines per msync; `fsync` adds fsync to each flush.
    pub fn start(sink: Sink, flush_every: u32, fsync: bool) -> Writer {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(WriterStats { writable: AtomicBool::new(true), ..Default::default() });
        let st = stats.clone();
        let thread = thread::Builder::new()
            .name("jsonl-writer".into())
            .spawn(move || writer_loop(sink, rx, flush_every.max(1), fsync, &st))
            .expect("spawn writer thread");
        Writer { tx, thread: Some(thread), stats }
    }

    /// Queues one snapshot line (without its newline).
    pub fn send(&self, mut line: Vec<u8>) {
        line.push(b'\n');
        // The thread only exits on Close, so a send error means it panicked: nothing to do.
        let _ = self.tx.send(Msg::Line(line));
    }

    /// The writer thread ended before [`Writer::close`] (it only does so by panicking): lines sent
    /// now are lost, so the run loop must report the output as not writable.
    pub fn stopped(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| t.is_finished())
    }

    /// Writes what is queued, then truncates/seals, and waits for the thread.
    pub fn close(mut self) -> Result<()> {
        let _ = self.tx.send(Msg::Close);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Other("the JSONL writer thread panicked".into())),
            None => Ok(()),
        }
    }
}

fn writer_loop(
    mut sink: Sink,
    rx: mpsc::Receiver<Msg>,
    flush_every: u32,
    fsync: bool,
    stats: &WriterStats,
) -> Result<()> {
    let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
    let mut pending_bytes = 0usize;
    let mut last_error: Option<String> = None;
    loop {
        let msg = rx.recv_timeout(Duration::from_secs(1));
        let closing = matches!(msg, Ok(Msg::Close) | Err(mpsc::RecvTimeoutError::Disconnected));
        if let Ok(Msg::Line(line)) = msg {
            pending_bytes += line.len();
            pending.push_back(line);
            while pending.len() > MAX_PENDING_LINES || pending_bytes > MAX_PENDING_BYTES {
                let dropped = pending.pop_front().expect("non-empty");
                pending_bytes -= dropped.len();
                stats.lines_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        while let Some(line) = pending.front() {
            match sink.append(line) {
                Ok(()) => {
                    stats.bytes_written.fetch_add(line.len() as u64, Ordering::Relaxed);
                    stats.lines_written.fetch_add(1, Ordering::Relaxed);
                    pending_bytes -= line.len();
                    pending.pop_front();
                    if last_error.take().is_some() {
                        tracing::info!("JSONL writes resumed");
                    }
                    stats.writable.store(true, Ordering::Relaxed);
                    if let Some(e) = sink.take_deferred_error() {
                        stats.write_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %crate::error::chain(&e), "cannot seal a JSONL segment; will retry before the next line");
                    }
                }
                Err(e) => {
                    stats.write_failures.fetch_add(1, Ordering::Relaxed);
                    stats.writable.store(false, Ordering::Relaxed);
                    let text = e.to_string();
                    if last_error.as_deref() != Some(&text) {
                        tracing::error!(error = %crate::error::chain(&e), queued = pending.len(), "JSONL write failed; will retry");
                    }
                    last_error = Some(text);
                    break;
                }
            }
        }
        let result =
            if sink.unflushed() >= flush_every { sink.flush(fsync) } else { Ok(()) }.and_then(|()| sink.tick());
        if let Err(e) = result {
            stats.write_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %crate::error::chain(&e), "JSONL flush failed");
        }
        if closing {
            if !pending.is_empty() {
                tracing::error!(lines = pending.len(), "JSONL lines could not be written before exit");
            }
            return sink.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_thread_writes_flushes_and_truncates_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let w = Writer::start(Sink::file(&path).unwrap(), 2, true);
        for i in 0..5 {
            w.send(format!("{{\"i\":{i}}}").into_bytes());
        }
        let stats = w.stats.clone();
        w.close().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 5);
        assert_eq!(stats.lines_written.load(Ordering::Relaxed), 5);
        assert_eq!(stats.bytes_written.load(Ordering::Relaxed), text.len() as u64);
    }

    #[test]
    fn appends_after_existing_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "{\"old\":1}\n").unwrap();
        let w = Writer::start(Sink::file(&path).unwrap(), 12, false);
        w.send(b"{\"new\":2}".to_vec());
        w.close().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"old\":1}\n{\"new\":2}\n");
    }

    #[test]
    fn unwritable_output_is_a_clear_error() {
        let err = Sink::file(Path::new("/nonexistent-dir/x.jsonl")).err().unwrap().to_string();
        assert!(err.contains("/nonexistent-dir/x.jsonl") && err.contains("writable"), "{err}");
    }
}

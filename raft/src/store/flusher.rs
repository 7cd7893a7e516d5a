//! One flusher thread per node: the only place that calls sled's `flush()`.
//!
//! sled's `flush()` persists every write made before it was called, in every
//! tree of the database. So one flush can answer every request that was
//! queued when it started: a request is queued only after its writes are
//! done, the thread drains the whole queue, then flushes once, then answers
//! each drained request in queue order (group commit). Requests that arrive
//! during a flush wait for the next one.
//!
//! A flush returns once the data is on stable storage: the patched sled
//! (`vendor/sled/PATCHES.md`) writes its IO buffers and `fdatasync`s its
//! data file, so each group-committed flush costs one `fdatasync` (more
//! only if the writes queued behind it fill or cross sled's 512 KiB IO
//! buffer; a blob-sized entry syncs its own file when written), shared by
//! every request it answers.
//!
//! The flush is blocking I/O; it runs here, never on the async executor. sled's
//! `flush_async` is not used: it can deadlock under concurrency (sled#1308).

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// Most flush requests waiting for the flusher. When the queue is full a
/// caller waits (asynchronously) for room: backpressure on the Raft cores
/// that append faster than the disk syncs, never unbounded growth.
pub const FLUSH_QUEUE_MAX: usize = 4096;

/// Name of the flusher thread, as shown by debuggers and `top -H`.
const FLUSHER_THREAD_NAME: &str = "reservoir-flusher";

/// What a requester is told once a flush covering its writes has finished,
/// or failed. Runs on the flusher thread, so it must be quick: send on a
/// channel, nothing more.
pub(crate) type FlushDone = Box<dyn FnOnce(io::Result<()>) + Send>;

/// A cheap, cloneable handle to the node's flusher thread. The thread stops
/// once the last handle is dropped (the drop waits for it to finish its
/// current flush and answer its requests).
#[derive(Clone)]
pub(crate) struct Flusher {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` only while dropping: dropping the sender is what stops the
    /// thread.
    request_tx: Option<mpsc::Sender<FlushDone>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts the flusher thread for `db`.
    pub(crate) fn start(db: sled::Db) -> Result<Flusher, StoreError> {
        let (request_tx, request_rx) = mpsc::channel(FLUSH_QUEUE_MAX);
        let thread = thread::Builder::new()
            .name(FLUSHER_THREAD_NAME.to_owned())
            .spawn(move || run(db, request_rx))
            .map_err(StoreError::Io)?;
        Ok(Flusher {
            inner: Arc::new(Inner {
                request_tx: Some(request_tx),
                thread: Some(thread),
            }),
        })
    }

    /// Queues `done` to be called after a flush that started after this call.
    /// Returns once the request is queued, not once it is flushed. The
    /// caller's writes must be complete before it calls this.
    pub(crate) async fn submit(&self, done: FlushDone) -> Result<(), StoreError> {
        let request_tx = self.inner.request_tx.as_ref().ok_or(StoreError::FlusherStopped)?;
        request_tx
            .send(done)
            .await
            .map_err(|_| StoreError::FlusherStopped)
    }

    /// Waits until every write made before this call is on disk.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let (done_tx, done_rx) = oneshot::channel();
        self.submit(Box::new(move |result| {
            // The waiter may have given up (its task was dropped); nobody is
            // left to tell, which is fine.
            let _ = done_tx.send(result);
        }))
        .await?;
        match done_rx.await {
            Ok(result) => result.map_err(StoreError::Io),
            Err(_) => Err(StoreError::FlusherStopped),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop after it has answered
        // what is queued.
        self.request_tx = None;
        if let Some(thread) = self.thread.take() {
            // A `FlushDone` that owned the last handle would drop it on the
            // flusher thread itself; joining there would never return.
            if thread.thread().id() != thread::current().id() {
                // A panic on the flusher thread has already failed its
                // requests (their senders were dropped); nothing to add.
                let _ = thread.join();
            }
        }
    }
}

/// The flusher thread's loop: wait for a request, take every request queued
/// behind it, flush once, answer them all.
fn run(db: sled::Db, mut request_rx: mpsc::Receiver<FlushDone>) {
    let mut batch: Vec<FlushDone> = Vec::new();
    while let Some(first) = request_rx.blocking_recv() {
        batch.push(first);
        // Bounded, so a steady stream of requests cannot postpone the flush
        // for ever.
        while batch.len() < FLUSH_QUEUE_MAX {
            match request_rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // Every queued request was queued after its writes, and the flush
        // starts after it was taken off the queue: the flush covers it.
        let started = std::time::Instant::now();
        let result = db.flush().map(|_bytes| ()).map_err(|e| e.to_string());
        metrics::histogram!("reservoir_raft_flush_seconds").record(started.elapsed().as_secs_f64());
        for done in batch.drain(..) {
            done(
                result
                    .clone()
                    .map_err(|e| io::Error::other(format!("sled flush failed: {e}"))),
            );
        }
    }
}

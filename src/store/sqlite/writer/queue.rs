//! The writer's queue depth and its bound: backpressure for streaming
//! replies.
//!
//! Every queued op counts until the transaction that applies it is over
//! (committed or failed). Queueing never waits and never drops: a reply's
//! events are appended to its log synchronously. Instead, a streaming reply
//! asks [`Queue::is_full`] (one atomic load) before it reads its next
//! upstream chunk, and while the queue is full awaits [`Queue::room`],
//! which the writer thread signals when a commit takes the depth back under
//! the bound. So a stalled database slows generation rather than growing
//! memory; the queue can pass the bound only by the events of one upstream
//! chunk per streaming reply, and ops someone waits for (a new turn, a
//! final reply, a flush) are never held.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The depth of the writer's queue against its bound.
#[derive(Debug)]
pub(super) struct Queue {
    /// Ops queued and not yet applied.
    depth: AtomicUsize,
    /// The depth at which streaming replies wait (`chat.writer_queue_events`).
    bound: usize,
    /// Signalled when a commit takes the depth from the bound or above to
    /// below it, and when the writer thread stops.
    room: Notify,
    /// Set when the writer thread has stopped: nothing waits any more.
    stopped: AtomicBool,
}

impl Queue {
    /// An empty queue that is full at `bound` ops (at least 1).
    pub(super) fn new(bound: usize) -> Self {
        Self {
            depth: AtomicUsize::new(0),
            bound: bound.max(1),
            room: Notify::new(),
            stopped: AtomicBool::new(false),
        }
    }

    /// Counts one queued op; `true` when it made the queue full (the writer
    /// thread should commit now rather than gather on).
    pub(super) fn added(&self) -> bool {
        self.depth.fetch_add(1, Ordering::Relaxed) + 1 == self.bound
    }

    /// Counts `n` ops applied (or dropped) and wakes the replies waiting for
    /// room when that took the depth under the bound.
    pub(super) fn removed(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.depth.fetch_sub(n, Ordering::AcqRel);
        if before >= self.bound && before - n < self.bound {
            self.room.notify_waiters();
        }
    }

    /// Ops queued and not yet applied.
    pub(super) fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Whether streaming replies should wait ([`Queue::room`]) before
    /// queueing more: the depth is at the bound and the writer runs.
    pub(super) fn is_full(&self) -> bool {
        self.depth.load(Ordering::Acquire) >= self.bound && !self.stopped.load(Ordering::Acquire)
    }

    /// Waits until the queue is not full (at once when it is not); counts
    /// each wait in `chatd_store_backpressure_waits_total`.
    pub(super) async fn room(&self) {
        if !self.is_full() {
            return;
        }
        metrics::counter!("chatd_store_backpressure_waits_total").increment(1);
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            // Registered before the check: a commit between the check and
            // the wait still wakes this one.
            notified.as_mut().enable();
            if !self.is_full() {
                return;
            }
            notified.await;
        }
    }

    /// Marks the writer thread stopped and wakes every waiting reply (their
    /// later writes fail as any write to a stopped writer does).
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.room.notify_waiters();
    }
}

/// Calls [`Queue::stop`] when dropped: held by the writer thread, so that
/// waiting replies are released however the thread ends (also by a panic).
pub(super) struct StopOnExit(pub(super) std::sync::Arc<Queue>);

impl Drop for StopOnExit {
    fn drop(&mut self) {
        self.0.stop();
    }
}

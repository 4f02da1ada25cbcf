//! Tool calls of a reply that wait for the user's decision
//! (`POST /api/chat/{message_id}/approve`).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

/// The user's answer to a `tool_approval` step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub approved: bool,
    /// Why, in the user's words (passed to the model on a denial).
    pub reason: Option<String>,
}

/// Why an approval could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalError {
    /// No call with that id is waiting (never asked, or already decided).
    NotPending,
}

/// The calls of one reply waiting for approval, by tool call id.
#[derive(Debug, Default)]
pub(super) struct Approvals {
    waiting: Mutex<HashMap<String, oneshot::Sender<Decision>>>,
}

impl Approvals {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Decision>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a call that waits; the receiver gets the decision.
    pub(super) fn wait_for(&self, tool_call_id: &str) -> oneshot::Receiver<Decision> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(tool_call_id.to_string(), tx);
        rx
    }

    /// Delivers a decision to the waiting call.
    ///
    /// Errors: [`ApprovalError::NotPending`] when no call with that id waits
    /// (never asked, already decided, or its wait ended).
    pub(super) fn decide(&self, tool_call_id: &str, decision: Decision) -> Result<(), ApprovalError> {
        match self.lock().remove(tool_call_id) {
            Some(tx) => tx.send(decision).map_err(|_| ApprovalError::NotPending),
            None => Err(ApprovalError::NotPending),
        }
    }

    /// Forgets a waiting call (its time ran out).
    pub(super) fn forget(&self, tool_call_id: &str) {
        self.lock().remove(tool_call_id);
    }
}

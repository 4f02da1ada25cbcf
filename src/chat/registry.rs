//! The replies in memory: by assistant message id (running ones, and
//! finished ones for the retention window), and which conversation has a
//! reply running.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use uuid::Uuid;

use super::log::Reply;

/// Replies by assistant message id: running ones, and finished ones for the
/// retention window; plus which conversation has a reply running.
#[derive(Debug, Default)]
pub struct ReplyRegistry {
    inner: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    replies: HashMap<Uuid, Arc<Reply>>,
    /// conversation id -> running reply
    running: HashMap<Uuid, Arc<Reply>>,
}

impl ReplyRegistry {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `reply` as running unless its conversation already has a
    /// running reply, which is returned instead.
    pub fn insert_if_idle(&self, reply: Arc<Reply>) -> Option<Arc<Reply>> {
        let mut inner = self.lock();
        if let Some(running) = inner.running.get(&reply.conversation_id) {
            return Some(running.clone());
        }
        inner.running.insert(reply.conversation_id, reply.clone());
        inner.replies.insert(reply.message_id, reply);
        None
    }

    /// Marks a reply as no longer running (it stays replayable).
    pub fn finished(&self, reply: &Reply) {
        let mut inner = self.lock();
        if inner
            .running
            .get(&reply.conversation_id)
            .is_some_and(|r| r.message_id == reply.message_id)
        {
            inner.running.remove(&reply.conversation_id);
        }
    }

    /// Forgets a reply now.
    pub fn remove(&self, reply: &Reply) {
        self.finished(reply);
        self.lock().replies.remove(&reply.message_id);
    }

    /// The reply with that message id, if still in memory.
    pub fn get(&self, message_id: Uuid) -> Option<Arc<Reply>> {
        self.lock().replies.get(&message_id).cloned()
    }

    /// The reply running in the conversation, if any.
    pub fn running_in(&self, conversation_id: Uuid) -> Option<Arc<Reply>> {
        self.lock().running.get(&conversation_id).cloned()
    }

    /// Every running reply.
    pub fn running(&self) -> Vec<Arc<Reply>> {
        self.lock().running.values().cloned().collect()
    }

    /// Forgets the reply after `retention`.
    pub fn expire(self: &Arc<Self>, message_id: Uuid, retention: Duration) {
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(retention).await;
            if let Some(registry) = registry.upgrade() {
                registry.lock().replies.remove(&message_id);
            }
        });
    }
}

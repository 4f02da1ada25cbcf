//! The start of a turn: the history up to the new message, and the commit
//! of the turn's rows while the first round's request opens.

use futures::stream::BoxStream;

use super::{Begin, Earlier, Generation, Stop};
use crate::chat::ChatError;
use crate::chat::history;
use crate::domain::{ChatEvent, StartEvent};
use crate::llm::{ChatRequest, LlmError, RequestMessage, StreamItem};

impl Generation {
    /// The conversation's messages up to this turn's user message (upstream
    /// shape, without the system prompt).
    pub(super) async fn history(&mut self) -> Result<Vec<RequestMessage>, Stop> {
        let user = RequestMessage::User {
            content: self.user_content.clone(),
        };
        Ok(match std::mem::replace(&mut self.earlier, Earlier::Load) {
            Earlier::None => vec![user],
            Earlier::Cached(mut earlier) => {
                earlier.push(user);
                earlier
            }
            Earlier::Load => {
                let rows = self
                    .deps
                    .store
                    .history(self.reply.conversation_id, self.reply.message_id)
                    .await
                    .map_err(|e| Stop::Internal(format!("could not load the conversation: {e}")))?;
                history::from_rows(&rows)
            }
        })
    }

    /// Commits the turn while the first round's request opens: the
    /// upstream's time to first chunk and the commit overlap, where one
    /// used to wait for the other. The commit is not cancelled (the handler
    /// waits for it); once it is stored, a cancel stops the wait for the
    /// upstream as in any round.
    ///
    /// Errors: [`Stop::NotBegun`] when the commit failed (the request is
    /// dropped); [`Stop::Cancelled`]; [`Stop::Llm`] when the request failed.
    pub(super) async fn open_first(
        &self,
        request: &ChatRequest,
        begin: Begin,
    ) -> Result<BoxStream<'static, Result<StreamItem, LlmError>>, Stop> {
        let opening = self.open(request);
        let commit = self.commit(begin);
        tokio::pin!(opening, commit);
        let mut opened = None;
        // The request first: it is sent on this first poll, and the
        // upstream works on it while the commit runs here.
        let stored = loop {
            tokio::select! {
                biased;
                result = &mut opening, if opened.is_none() => opened = Some(result),
                stored = &mut commit => break stored,
            }
        };
        if !stored {
            return Err(Stop::NotBegun);
        }
        let result = match opened {
            Some(result) => result,
            None => tokio::select! {
                biased;
                _ = self.reply.cancel.cancelled() => return Err(Stop::Cancelled),
                result = &mut opening => result,
            },
        };
        result.map_err(Stop::Llm)
    }

    /// Commits the turn (the user's message and this reply's row, and the
    /// conversation if new), publishes `start` when it is stored, and tells
    /// the waiting handler either way. Returns whether it was stored.
    pub(super) async fn commit(&self, begin: Begin) -> bool {
        let Begin { turn, committed } = begin;
        let outcome = match self.deps.store.begin_turn(&turn).await {
            Ok(true) => Ok(()),
            // The conversation was deleted since the handler read it.
            Ok(false) => Err(ChatError::ConversationNotFound(turn.conversation.id)),
            Err(e) => Err(ChatError::Store(e)),
        };
        let stored = outcome.is_ok();
        if stored {
            self.reply.push(ChatEvent::Start(StartEvent {
                conversation_id: self.reply.conversation_id,
                user_message_id: self.user_message_id,
                message_id: self.reply.message_id,
                model: self.settings.model.clone(),
            }));
        }
        // The handler may be gone (its client disconnected): the reply
        // runs on and can be resumed.
        let _ = committed.send(outcome);
        stored
    }
}

//! The store contract: one suite of tests that every backend must pass,
//! written against the traits only. A backend runs it with
//! `store_contract!(async_factory)`, where the factory returns a fresh,
//! empty, migrated `Arc<dyn Store>` and whatever keeps it alive (a temp
//! dir).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use uuid::Uuid;

use super::{FileStamp, FinalReply, IndexedFile, MessageQuery, NewTurn, Store, TerminalEvent};
use crate::domain::{ConversationPatch, NewConversation, Role, Status};

/// The write-queue bound a backend's factory opens the store with
/// (`chat.writer_queue_events`).
pub(crate) const QUEUE_EVENTS: usize = 1024;

/// Generates one `#[tokio::test]` per contract check for a backend.
macro_rules! store_contract {
    ($factory:path) => {
        $crate::store::contract::store_contract!(@tests $factory;
            conversations_create_read_list_patch_delete,
            a_turn_is_stored_with_its_events_and_final_state,
            a_turn_in_a_missing_conversation_writes_nothing,
            messages_come_a_page_at_a_time_newest_page_first,
            a_writer_that_waits_for_room_stays_within_the_bound_and_loses_nothing,
            a_deleted_replys_events_never_cost_another_reply_its_events,
            interrupted_replies_and_pruning,
            documents_index_search_and_forget,
        );
    };
    (@tests $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (_keep, store) = $factory().await;
                $crate::store::contract::$name(store).await;
            }
        )*
    };
}
pub(crate) use store_contract;

fn new_conversation(title: &str) -> NewConversation {
    NewConversation {
        title: Some(title.into()),
        model: Some("m".into()),
        ..Default::default()
    }
}

fn turn(conversation: crate::domain::Conversation, create: bool, text: &str) -> NewTurn {
    NewTurn {
        conversation,
        create,
        user_message_id: Uuid::now_v7(),
        user_content: text.into(),
        assistant_message_id: Uuid::now_v7(),
        model: "m".into(),
    }
}

fn final_reply(content: &str, status: Status) -> FinalReply {
    FinalReply {
        status,
        content: content.into(),
        reasoning: Some("thought".into()),
        steps: json!([]),
        tool_calls: None,
        sources: None,
        prompt_tokens: 3,
        completion_tokens: 4,
        finish_reason: Some("stop".into()),
        error: None,
    }
}

fn done(seq: u64) -> TerminalEvent {
    TerminalEvent {
        seq,
        name: "done",
        data: Bytes::from_static(b"{\"finish_reason\":\"stop\"}"),
    }
}

/// Queues event `seq` of `reply`: a `process_step` whose data is `{"n":seq}`.
fn numbered_event(store: &dyn Store, reply: Uuid, seq: u64) {
    let data = Bytes::from(format!("{{\"n\":{seq}}}"));
    store.event(reply, seq, "process_step", data, false);
}

pub(crate) async fn conversations_create_read_list_patch_delete(store: Arc<dyn Store>) {
    let a = store
        .create_conversation(new_conversation("a"))
        .await
        .expect("create a");
    let b = store
        .create_conversation(new_conversation("b"))
        .await
        .expect("create b");
    assert_eq!(store.conversation(a.id).await.expect("read"), Some(a.clone()));
    assert_eq!(store.conversation(Uuid::now_v7()).await.expect("read"), None);
    assert_eq!(
        store.conversation_for_turn(a.id).await.expect("read"),
        Some((a.clone(), 0))
    );

    // Newest first, a page at a time; an unknown cursor is `None`.
    let first = store.list_conversations(1, None).await.expect("list").expect("page");
    assert_eq!(first.iter().map(|c| c.id).collect::<Vec<_>>(), [b.id]);
    let second = store
        .list_conversations(5, Some(b.id))
        .await
        .expect("list")
        .expect("page");
    assert_eq!(second.iter().map(|c| c.id).collect::<Vec<_>>(), [a.id]);
    assert_eq!(
        store.list_conversations(5, Some(Uuid::now_v7())).await.expect("list"),
        None
    );

    let patched = store
        .update_conversation(
            a.id,
            ConversationPatch {
                title: Some(Some("renamed".into())),
                model: Some(None),
                temperature: Some(Some(0.5)),
                ..Default::default()
            },
        )
        .await
        .expect("patch")
        .expect("found");
    assert_eq!(
        (patched.title.as_deref(), patched.model.as_deref(), patched.temperature),
        (Some("renamed"), None, Some(0.5))
    );
    assert!(patched.updated_at >= a.updated_at);
    assert_eq!(store.conversation(a.id).await.expect("read"), Some(patched));
    assert!(
        store
            .update_conversation(Uuid::now_v7(), ConversationPatch::default())
            .await
            .expect("patch")
            .is_none()
    );

    assert!(store.delete_conversation(a.id).await.expect("delete"));
    assert!(!store.delete_conversation(a.id).await.expect("delete again"));
    assert_eq!(store.conversation(a.id).await.expect("read"), None);
}

pub(crate) async fn a_turn_is_stored_with_its_events_and_final_state(store: Arc<dyn Store>) {
    let conversation = new_conversation("t").into_conversation();
    let first = turn(conversation.clone(), true, "hello");
    assert!(store.begin_turn(&first).await.expect("begin"));
    let reply = first.assistant_message_id;
    let row = store.message(reply).await.expect("read").expect("reply row");
    assert_eq!(
        (row.role, row.status, row.content.as_str()),
        (Role::Assistant, Status::Streaming, "")
    );
    assert_eq!(
        store.user_message_before(&row).await.expect("read"),
        Some(first.user_message_id)
    );

    for seq in 1..=3u64 {
        numbered_event(store.as_ref(), reply, seq);
    }
    store.snapshot(reply, "partial".into(), None, "[]".into());
    store.flush().await;
    assert_eq!(
        store.message(reply).await.expect("read").expect("row").content,
        "partial"
    );
    store
        .finish(reply, "m", final_reply("all of it", Status::Complete), done(4))
        .await
        .expect("finish");

    let events = store.reply_events(reply).await.expect("events");
    let expected: Vec<(u64, String, String)> = (1..=3u64)
        .map(|seq| (seq, "process_step".to_string(), format!("{{\"n\":{seq}}}")))
        .chain([(4, "done".to_string(), "{\"finish_reason\":\"stop\"}".to_string())])
        .collect();
    assert_eq!(events, expected);
    let row = store.message(reply).await.expect("read").expect("row");
    assert_eq!((row.status, row.content.as_str()), (Status::Complete, "all of it"));
    assert_eq!(row.reasoning.as_deref(), Some("thought"));
    assert_eq!(
        row.usage,
        Some(json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}))
    );
    assert_eq!(row.finish_reason.as_deref(), Some("stop"));

    // The next turn sees the first in its history and in the count.
    let (stored, count) = store
        .conversation_for_turn(conversation.id)
        .await
        .expect("read")
        .expect("found");
    assert_eq!((stored.id, count), (conversation.id, 2));
    let next = turn(stored, false, "again");
    assert!(store.begin_turn(&next).await.expect("begin"));
    let history = store
        .history(conversation.id, next.assistant_message_id)
        .await
        .expect("history");
    let shape: Vec<(Role, &str)> = history.iter().map(|h| (h.role, h.content.as_str())).collect();
    assert_eq!(
        shape,
        [
            (Role::User, "hello"),
            (Role::Assistant, "all of it"),
            (Role::User, "again")
        ]
    );
    let all = MessageQuery {
        limit: 200,
        before: None,
        steps: true,
    };
    let messages = store.messages(conversation.id, all).await.expect("messages");
    let messages = messages.expect("no cursor, a page");
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[0].id, first.user_message_id);

    let usage = store.usage().await.expect("usage");
    assert_eq!(usage.len(), 1);
    assert_eq!(
        (
            usage[0].model.as_str(),
            usage[0].prompt_tokens,
            usage[0].completion_tokens
        ),
        ("m", 3, 4)
    );
}

pub(crate) async fn messages_come_a_page_at_a_time_newest_page_first(store: Arc<dyn Store>) {
    let conversation = new_conversation("paged").into_conversation();
    let mut ids = Vec::new();
    for i in 0..3 {
        let t = turn(conversation.clone(), i == 0, &format!("m{i}"));
        assert!(store.begin_turn(&t).await.expect("begin"));
        ids.extend([t.user_message_id, t.assistant_message_id]);
    }
    let other = turn(new_conversation("other").into_conversation(), true, "x");
    assert!(store.begin_turn(&other).await.expect("begin"));
    let page = |limit, before, steps| MessageQuery { limit, before, steps };
    let read = |query| {
        let store = store.clone();
        async move {
            let page = store.messages(conversation.id, query).await.expect("messages");
            page.map(|messages| {
                messages
                    .into_iter()
                    .map(|m| (m.id, m.steps.is_some()))
                    .collect::<Vec<_>>()
            })
        }
    };
    let newest = read(page(4, None, false)).await.expect("page");
    assert_eq!(newest, ids[2..].iter().map(|id| (*id, false)).collect::<Vec<_>>());
    let older = read(page(4, Some(ids[2]), true)).await.expect("page");
    assert_eq!(older, ids[..2].iter().map(|id| (*id, true)).collect::<Vec<_>>());
    assert_eq!(read(page(4, Some(ids[0]), false)).await, Some(Vec::new()));
    assert_eq!(read(page(4, Some(other.user_message_id), false)).await, None);
    assert_eq!(read(page(4, Some(Uuid::now_v7()), false)).await, None);
}

/// A reply that queues events the way a generation does (awaiting room
/// whenever the queue is full) never finds more than [`QUEUE_EVENTS`]
/// writes queued, and every event is stored once, in order, and the
/// depth is back to 0 once everything is applied.
pub(crate) async fn a_writer_that_waits_for_room_stays_within_the_bound_and_loses_nothing(store: Arc<dyn Store>) {
    let first = turn(new_conversation("q").into_conversation(), true, "hello");
    assert!(store.begin_turn(&first).await.expect("begin"));
    let reply = first.assistant_message_id;
    assert_eq!(store.queue_depth(), 0);
    const EVENTS: u64 = 3 * QUEUE_EVENTS as u64;
    for seq in 1..=EVENTS {
        if store.queue_full() {
            store.queue_room().await;
        }
        assert!(!store.queue_full(), "room was made before event {seq}");
        numbered_event(store.as_ref(), reply, seq);
        let depth = store.queue_depth();
        assert!(depth <= QUEUE_EVENTS as u64, "{depth} writes queued at event {seq}");
    }
    store
        .finish(reply, "m", final_reply("all", Status::Complete), done(EVENTS + 1))
        .await
        .expect("finish");
    store.flush().await;
    assert_eq!(store.queue_depth(), 0, "everything applied");
    let events = store.reply_events(reply).await.expect("events");
    let seqs: Vec<u64> = events.iter().map(|e| e.0).collect();
    assert_eq!(seqs, (1..=EVENTS + 1).collect::<Vec<_>>());
    assert!(
        events[..EVENTS as usize]
            .iter()
            .all(|(seq, name, data)| name == "process_step" && *data == format!("{{\"n\":{seq}}}"))
    );
}

pub(crate) async fn a_turn_in_a_missing_conversation_writes_nothing(store: Arc<dyn Store>) {
    let orphan = turn(new_conversation("gone").into_conversation(), false, "hi");
    assert!(!store.begin_turn(&orphan).await.expect("begin"));
    assert!(store.message(orphan.user_message_id).await.expect("read").is_none());
    assert!(
        store
            .message(orphan.assistant_message_id)
            .await
            .expect("read")
            .is_none()
    );
}

/// Issue 21, item 1: the events of a reply whose conversation was deleted
/// mid-stream are dropped, and the other replies' events of the same batch
/// are all stored.
pub(crate) async fn a_deleted_replys_events_never_cost_another_reply_its_events(store: Arc<dyn Store>) {
    let kept = turn(new_conversation("kept").into_conversation(), true, "hi");
    let doomed = turn(new_conversation("doomed").into_conversation(), true, "hi");
    assert!(store.begin_turn(&kept).await.expect("begin kept"));
    assert!(store.begin_turn(&doomed).await.expect("begin doomed"));
    let event = |seq: u64| Bytes::from(format!("{{\"n\":{seq}}}"));
    store.event(kept.assistant_message_id, 1, "start", event(1), false);
    store.event(doomed.assistant_message_id, 1, "start", event(1), false);
    store.flush().await;
    assert!(store.delete_conversation(doomed.conversation.id).await.expect("delete"));
    // One batch holding both replies' events, the doomed one's first.
    for seq in 2..=4u64 {
        store.event(doomed.assistant_message_id, seq, "process_step", event(seq), false);
        store.event(kept.assistant_message_id, seq, "process_step", event(seq), false);
    }
    store.snapshot(doomed.assistant_message_id, "lost".into(), None, "[]".into());
    store
        .finish(
            doomed.assistant_message_id,
            "m",
            final_reply("lost", Status::Cancelled),
            done(5),
        )
        .await
        .expect("finishing a deleted reply is not an error");
    store
        .finish(
            kept.assistant_message_id,
            "m",
            final_reply("kept", Status::Complete),
            done(5),
        )
        .await
        .expect("finish kept");

    let seqs: Vec<u64> = store
        .reply_events(kept.assistant_message_id)
        .await
        .expect("events")
        .iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let row = store
        .message(kept.assistant_message_id)
        .await
        .expect("read")
        .expect("kept row");
    assert_eq!((row.status, row.content.as_str()), (Status::Complete, "kept"));
    assert!(
        store
            .message(doomed.assistant_message_id)
            .await
            .expect("read")
            .is_none()
    );
    assert!(
        store
            .reply_events(doomed.assistant_message_id)
            .await
            .expect("events")
            .is_empty()
    );
}

pub(crate) async fn interrupted_replies_and_pruning(store: Arc<dyn Store>) {
    let running = turn(new_conversation("r").into_conversation(), true, "hi");
    assert!(store.begin_turn(&running).await.expect("begin"));
    store.event(
        running.assistant_message_id,
        1,
        "start",
        Bytes::from_static(b"{}"),
        false,
    );
    let ended = turn(new_conversation("e").into_conversation(), true, "hi");
    assert!(store.begin_turn(&ended).await.expect("begin"));
    store
        .finish(
            ended.assistant_message_id,
            "m",
            final_reply("x", Status::Complete),
            done(1),
        )
        .await
        .expect("finish");
    store.flush().await;

    assert_eq!(store.mark_interrupted().await.expect("mark"), 1);
    let row = store
        .message(running.assistant_message_id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(row.status, Status::Interrupted);
    // Pruning up to now drops the events of final replies only.
    let later = crate::domain::now_ms() + 60_000;
    assert!(store.prune_events(later).await.expect("prune") >= 1);
    assert!(
        store
            .reply_events(ended.assistant_message_id)
            .await
            .expect("events")
            .is_empty()
    );
    assert_eq!(store.prune_events(later).await.expect("prune"), 0);
}

pub(crate) async fn documents_index_search_and_forget(store: Arc<dyn Store>) {
    let stamp = |n| FileStamp { mtime_ns: n, size: 10 };
    store
        .upsert_document("p", "a.md", "Zebra guide", "the zebra crossing and more", stamp(1))
        .await
        .expect("upsert");
    store
        .upsert_document("p", "b.md", "Other", "a lion and a zebra", stamp(1))
        .await
        .expect("upsert");
    store
        .upsert_document("q", "c.md", "Zebra", "zebra in another project", stamp(1))
        .await
        .expect("upsert");
    let terms = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();

    let hits = store
        .search_documents("p", &terms(&["zebra"]), false, 10)
        .await
        .expect("search");
    let paths: Vec<&str> = hits.iter().map(|h| h.path.as_str()).collect();
    assert_eq!(
        paths,
        ["a.md", "b.md"],
        "title matches rank first; other projects never show"
    );
    let all = store
        .search_documents("p", &terms(&["lion", "crossing"]), false, 10)
        .await
        .expect("search");
    assert!(all.is_empty(), "no document has both words");
    let any = store
        .search_documents("p", &terms(&["lion", "crossing"]), true, 10)
        .await
        .expect("search");
    assert_eq!(any.len(), 2);
    // Words that are query syntax elsewhere are searched as words.
    let syntax = store
        .search_documents("p", &terms(&["NEAR", "OR"]), true, 10)
        .await
        .expect("search");
    assert!(syntax.is_empty());

    store.mark_unindexed("p", "b.md", stamp(2)).await.expect("mark");
    assert_eq!(
        store.indexed_files("p").await.expect("files"),
        vec![
            IndexedFile {
                path: "a.md".into(),
                stamp: stamp(1),
                indexed: true
            },
            IndexedFile {
                path: "b.md".into(),
                stamp: stamp(2),
                indexed: false
            },
        ]
    );
    assert!(store.remove_document("p", "a.md").await.expect("remove"));
    assert!(!store.remove_document("p", "a.md").await.expect("remove again"));
    assert!(
        store
            .search_documents("p", &terms(&["zebra"]), false, 10)
            .await
            .expect("search")
            .is_empty()
    );
}

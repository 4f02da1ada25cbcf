//! The writer's tests: gathering, group commit, urgency, lock waits.

use super::*;
use crate::domain::{NewConversation, Status};
use crate::store::sqlite::SqliteStore as Store;
use crate::store::{Conversations, Replays, Turns, Usage};

/// The queue bound of these tests' writers: more than any of them queues.
const QUEUE: usize = 65_536;

/// A turn in a new conversation (`create`) or in one never stored.
fn turn(create: bool) -> NewTurn {
    NewTurn {
        conversation: NewConversation::default().into_conversation(),
        create,
        user_message_id: Uuid::now_v7(),
        user_content: "hi".into(),
        assistant_message_id: Uuid::now_v7(),
        model: "m".into(),
    }
}

async fn begin(store: &Store) -> Uuid {
    let turn = turn(true);
    assert!(store.begin_turn(&turn).await.expect("begin"));
    turn.assistant_message_id
}

#[tokio::test]
async fn events_are_stored_one_row_per_reply_and_batch_with_the_updates_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let store = Store::open(&url, QUEUE).await.expect("open");
    // 200 replies, 50 events each,
    // queued interleaved, snapshots in between, one event queued twice.
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(begin(&store).await);
    }
    let writer = store.writer();
    for seq in 1..=50u64 {
        for id in &ids {
            writer.event(
                *id,
                seq,
                "process_step",
                Bytes::from(format!("{{\"n\":{seq},\"t\":\"a b\\nc\"}}")),
                false,
            );
        }
        if seq % 20 == 0 {
            writer.snapshot(ids[0], format!("text {seq}"), None, "[]".into());
        }
    }
    writer.event(ids[0], 5, "process_step", Bytes::from("duplicate"), false);
    writer.flush().await;
    // The same seq again in a later batch: the stored one stays.
    writer.event(ids[0], 7, "process_step", Bytes::from("late duplicate"), false);
    writer.event(ids[0], 51, "done", Bytes::from("{}"), true);
    writer.flush().await;

    for id in &ids {
        let events = store.reply_events(*id).await.expect("events");
        let expected = if *id == ids[0] { 51 } else { 50 };
        assert_eq!(events.len(), expected);
        for (i, (seq, name, data)) in events.iter().take(50).enumerate() {
            assert_eq!(*seq, i as u64 + 1);
            assert_eq!(name, "process_step");
            assert_eq!(data, &format!("{{\"n\":{seq},\"t\":\"a b\\nc\"}}"));
        }
    }
    let last = store.reply_events(ids[0]).await.expect("events").pop().expect("last");
    assert_eq!(last, (51, "done".to_string(), "{}".to_string()));
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM reply_event_batches")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(rows, 201, "one row per reply for the first batch, one for the second");
    let row = store.message(ids[0]).await.expect("load").expect("row");
    assert_eq!(row.content, "text 40", "the last snapshot wins");
}

#[tokio::test]
async fn a_new_turn_commits_ahead_of_gathered_events_and_nothing_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let store = Store::open(&url, QUEUE).await.expect("open");
    let a = begin(&store).await;
    let writer = store.writer();
    for seq in 1..=10u64 {
        writer.event(a, seq, "process_step", Bytes::from(format!("{{\"n\":{seq}}}")), false);
    }
    writer.snapshot(a, "partial".into(), None, "[]".into());
    // New chats arrive while those events gather: each is committed
    // when its begin returns, and a missing conversation is reported.
    let b = begin(&store).await;
    let row = store.message(b).await.expect("load").expect("committed");
    assert_eq!(row.content, "");
    assert!(!store.begin_turn(&turn(false)).await.expect("begin"));
    writer.event(a, 11, "done", Bytes::from("{}"), true);
    writer.flush().await;
    let events = store.reply_events(a).await.expect("events");
    let seqs: Vec<u64> = events.iter().map(|e| e.0).collect();
    assert_eq!(seqs, (1..=11).collect::<Vec<_>>());
    assert_eq!(events[0].2, "{\"n\":1}");
    let row = store.message(a).await.expect("load").expect("row");
    assert_eq!(row.content, "partial");
    assert!(store.reply_events(b).await.expect("events").is_empty());
}

fn final_reply(content: &str) -> FinalReply {
    FinalReply {
        status: Status::Complete,
        content: content.into(),
        reasoning: None,
        steps: serde_json::json!([]),
        tool_calls: None,
        sources: None,
        prompt_tokens: 3,
        completion_tokens: 4,
        finish_reason: Some("stop".into()),
        error: None,
    }
}

#[tokio::test]
async fn what_is_waited_on_commits_at_once_and_other_replies_keep_gathering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w.db");
    let store = Store::open(&format!("sqlite://{}", path.display()), QUEUE)
        .await
        .expect("open");
    // A writer that would gather for a minute: only what someone waits
    // for can be committed before the flush below.
    let writer = Writer::spawn(&path, std::time::Duration::from_secs(60), QUEUE).expect("writer");
    let (ta, tb) = (turn(true), turn(true));
    assert!(writer.begin(ta.clone()).await.expect("begin a"));
    assert!(writer.begin(tb.clone()).await.expect("begin b"));
    let (a, b) = (ta.assistant_message_id, tb.assistant_message_id);
    for seq in 1..=3u64 {
        writer.event(a, seq, "process_step", Bytes::from(format!("{{\"a\":{seq}}}")), false);
        writer.event(b, seq, "process_step", Bytes::from(format!("{{\"b\":{seq}}}")), false);
    }
    writer.snapshot(a, "partial a".into(), None, "[]".into());
    writer.snapshot(b, "partial b".into(), None, "[]".into());
    let done = TerminalEvent {
        seq: 4,
        name: "done",
        data: Bytes::from_static(b"{\"a\":4}"),
    };
    writer
        .finish(a, "m", final_reply("all of a"), done)
        .await
        .expect("finish a");

    // a: its events, its terminal event, its final state and its tokens,
    // in one commit.
    let events: Vec<(u64, String)> = store
        .reply_events(a)
        .await
        .expect("events")
        .into_iter()
        .map(|e| (e.0, e.1))
        .collect();
    let names = ["process_step", "process_step", "process_step", "done"];
    assert_eq!(events, (1..=4).zip(names.map(String::from)).collect::<Vec<_>>());
    let row = store.message(a).await.expect("load").expect("row");
    assert_eq!((row.content.as_str(), row.status), ("all of a", Status::Complete));
    let usage = store.usage().await.expect("usage");
    assert_eq!(usage.len(), 1);
    assert_eq!((usage[0].prompt_tokens, usage[0].completion_tokens), (3, 4));
    // b: still gathering.
    assert!(store.reply_events(b).await.expect("events").is_empty());
    assert_eq!(store.message(b).await.expect("load").expect("row").content, "");

    writer.flush().await;
    assert_eq!(store.reply_events(b).await.expect("events").len(), 3);
    assert_eq!(store.message(b).await.expect("load").expect("row").content, "partial b");
}

#[tokio::test]
async fn a_turn_waits_for_a_write_lock_held_elsewhere_without_blocking_the_caller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let store = Store::open(&url, QUEUE).await.expect("open");
    // Another connection holds SQLite's write lock: the turn cannot be
    // committed in place, so it is queued for the writer thread, which
    // waits in SQLite's busy handler until the lock is released.
    let mut other = store.pool().acquire().await.expect("connection");
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *other).await.expect("lock");
    let t = turn(true);
    let pending = tokio::spawn({
        let store = store.clone();
        let t = t.clone();
        async move { store.begin_turn(&t).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!pending.is_finished(), "the turn cannot commit while the lock is held");
    sqlx::query("COMMIT").execute(&mut *other).await.expect("unlock");
    assert!(pending.await.expect("task").expect("begin"));
    let row = store.message(t.assistant_message_id).await.expect("load").expect("row");
    assert_eq!(row.status, Status::Streaming);
    // With the lock free again, the next turn commits in place.
    let next = turn(true);
    assert!(store.begin_turn(&next).await.expect("begin"));
    assert!(store.message(next.user_message_id).await.expect("load").is_some());
}

#[tokio::test]
// The guard is held across the read on purpose: the writer's connection
// must look busy, and the read under test does not take it.
#[allow(clippy::await_holding_lock)]
async fn a_turn_reads_its_conversation_the_same_on_either_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let store = Store::open(&url, QUEUE).await.expect("open");
    let mut first = turn(true);
    first.conversation.system_prompt = Some("be brief".into());
    first.conversation.temperature = Some(0.5);
    first.conversation.max_tokens = Some(64);
    first.conversation.thinking = Some(true);
    assert!(store.begin_turn(&first).await.expect("begin"));
    let id = first.conversation.id;
    let next = NewTurn {
        create: false,
        user_message_id: Uuid::now_v7(),
        assistant_message_id: Uuid::now_v7(),
        ..first.clone()
    };
    assert!(store.begin_turn(&next).await.expect("begin"));

    // The writer's connection is free: read there.
    let (fast, count) = store.conversation_for_turn(id).await.expect("read").expect("found");
    assert_eq!(count, 4);
    let expected = crate::domain::Conversation {
        updated_at: fast.updated_at,
        ..first.conversation.clone()
    };
    assert_eq!(fast, expected, "every column, updated_at touched by the second turn");
    assert!(fast.updated_at >= first.conversation.updated_at);
    // The thread holds it: the read pool answers the same.
    let held = store.writer.conn.lock().expect("lock");
    let (pooled, pooled_count) = store.conversation_for_turn(id).await.expect("read").expect("found");
    drop(held);
    assert_eq!((pooled, pooled_count), (fast, count));
    assert!(
        store
            .conversation_for_turn(Uuid::now_v7())
            .await
            .expect("read")
            .is_none()
    );
}

#[tokio::test]
async fn an_in_memory_database_is_refused_with_a_clear_error() {
    let err = Store::open("sqlite::memory:", QUEUE).await.expect_err("in-memory");
    assert!(matches!(err, StoreError::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains("set database_url to a file"), "{err}");
}

#[test]
fn stored_event_lines_parse_back_and_bad_ones_are_corrupt() {
    let rows = vec![
        "1 start {\"a\":1}\n2 process_step {\"b\":\"x y\"}\n".to_string(),
        "2 x {}\n3 done {}\n".into(),
    ];
    let parsed = parse_event_rows(&rows).expect("parses");
    assert_eq!(
        parsed,
        vec![
            (1, "start".to_string(), "{\"a\":1}".to_string()),
            (2, "process_step".to_string(), "{\"b\":\"x y\"}".to_string()),
            (3, "done".to_string(), "{}".to_string()),
        ]
    );
    assert!(matches!(
        parse_event_rows(&["nonsense\n".to_string()]),
        Err(StoreError::Corrupt(_))
    ));
}

/// Issue 21, item 7: while another connection holds SQLite's write lock,
/// a reply that waits for room (as a generation does) stops at the queue's
/// bound; a new turn and a flush are queued past it, never held; once the
/// lock is released, every event lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_database_holds_replies_at_the_queue_bound_and_loses_no_event() {
    use std::sync::atomic::{AtomicU64, Ordering};
    const BOUND: usize = 8;
    const EVENTS: u64 = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let store = Store::open(&url, BOUND).await.expect("open");
    let id = begin(&store).await;

    let mut other = store.pool().acquire().await.expect("connection");
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *other).await.expect("lock");
    let queued = Arc::new(AtomicU64::new(0));
    let generation = tokio::spawn({
        let store = store.clone();
        let queued = queued.clone();
        async move {
            for seq in 1..=EVENTS {
                if store.queue_full() {
                    store.queue_room().await;
                }
                let data = Bytes::from(format!("{{\"n\":{seq}}}"));
                store.event(id, seq, "process_step", data, false);
                queued.store(seq, Ordering::SeqCst);
            }
        }
    });
    // The writer took the full queue and waits for the lock: the reply
    // waits at the bound.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        queued.load(Ordering::SeqCst),
        BOUND as u64,
        "the reply waits at the bound"
    );
    assert!(store.queue_full());
    assert_eq!(store.queue_depth(), BOUND as u64);
    // Ops someone waits for are queued past the bound, not held by it.
    let t = turn(true);
    let new_turn = tokio::spawn({
        let store = store.clone();
        let t = t.clone();
        async move { store.begin_turn(&t).await }
    });
    let flushed = tokio::spawn({
        let store = store.clone();
        async move { store.flush().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(store.queue_depth(), BOUND as u64 + 2, "both queued");
    assert!(
        !new_turn.is_finished() && !flushed.is_finished(),
        "the lock is still held"
    );
    assert_eq!(queued.load(Ordering::SeqCst), BOUND as u64);

    sqlx::query("COMMIT").execute(&mut *other).await.expect("unlock");
    generation.await.expect("generation");
    assert!(new_turn.await.expect("task").expect("begin"));
    flushed.await.expect("flush");
    store.flush().await;
    assert_eq!(store.queue_depth(), 0);
    let events = store.reply_events(id).await.expect("events");
    let expected: Vec<(u64, String, String)> = (1..=EVENTS)
        .map(|seq| (seq, "process_step".to_string(), format!("{{\"n\":{seq}}}")))
        .collect();
    assert_eq!(events, expected, "every event once, in order");
    assert!(store.message(t.assistant_message_id).await.expect("load").is_some());
}

//! Regression tests of issue 21 (hardening): what a hostile client or a
//! careless deletion could do to chatd, over real HTTP with the mock
//! upstream and a real SQLite file.

mod support;

use std::sync::Arc;

use serde_json::{Value, json};
use support::TestApp;
use support::mock::{self, MockResponse, MockUpstream, full_text};
use support::sse::{SseEvent, next, rest};

/// [`mock::slow_text`] with usage (5 prompt tokens, one a word).
fn slow_text(pieces: usize, delay_ms: u64) -> MockResponse {
    let mut chunks = mock::words(pieces);
    chunks.push(mock::usage(5, pieces as u64));
    mock::sse_with_delay(&chunks, delay_ms)
}

/// The events as stored, in the shape the live stream had: `(id, event,
/// data)` per event.
async fn stored_events(app: &TestApp, message_id: &str) -> Vec<(String, String, Value)> {
    app.chat
        .store()
        .reply_events(message_id.parse().expect("uuid"))
        .await
        .expect("stored events")
        .into_iter()
        .map(|(seq, name, data)| (seq.to_string(), name, serde_json::from_str(&data).expect("JSON")))
        .collect()
}

fn shape(events: &[SseEvent]) -> Vec<(String, String, Value)> {
    events
        .iter()
        .map(|e| (e.id.clone(), e.event.clone(), e.data.clone()))
        .collect()
}

/// Item 1: deleting a conversation while its reply streams cancels that
/// reply, and costs none of the 29 other streaming replies a stored event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_streaming_conversation_cancels_it_and_every_other_reply_is_stored_exactly() {
    const N: usize = 30;
    let upstream = MockUpstream::start().await;
    for _ in 0..N {
        upstream.push(slow_text(40, 25));
    }
    let app = Arc::new(TestApp::start(&upstream.base_url).await);
    let mut streams = Vec::new();
    for i in 0..N {
        let mut stream = app.stream_chat(json!({"message": format!("m{i}")})).await;
        let start = next(&mut stream).await;
        assert_eq!(start.event, "start");
        streams.push((start, stream));
    }
    let (doomed_start, mut doomed_stream) = streams.remove(0);
    // Mid-stream: the doomed reply has sent some text.
    let first = next(&mut doomed_stream).await;
    assert_eq!(first.event, "process_step");
    let conversation_id = doomed_start.data["conversation_id"].as_str().expect("id").to_string();
    let (status, _) = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/conversations/{conversation_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    // The delete waited for the reply to end: it was cancelled.
    let tail = rest(&mut doomed_stream).await;
    let end = tail.last().expect("a terminal event");
    assert_eq!(
        (end.event.as_str(), &end.data["finish_reason"]),
        ("done", &json!("cancelled"))
    );
    assert_eq!(app.chat.running(), N - 1);
    let (status, body) = app.get(&format!("/api/conversations/{conversation_id}")).await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));

    let mut lives = Vec::new();
    for (start, mut stream) in streams {
        let mut live = vec![start];
        live.extend(rest(&mut stream).await);
        assert_eq!(live.last().expect("end").event, "done");
        lives.push(live);
    }
    app.chat.store().flush().await;
    for live in lives {
        let id = live[0].message_id();
        assert_eq!(stored_events(&app, &id).await, shape(&live), "reply {id}");
        assert_eq!(app.message_row(&id).await["content"], full_text(40));
    }
    assert!(stored_events(&app, doomed_start.message_id().as_str()).await.is_empty());
}

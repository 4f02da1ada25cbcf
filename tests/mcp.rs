//! MCP servers as tool sources, against real servers started by the tests:
//!
//! - the reference filesystem server (`@modelcontextprotocol/server-filesystem`)
//!   and the reference "everything" server over streamable HTTP
//!   (`@modelcontextprotocol/server-everything`), both from npm, installed
//!   by `npm ci --prefix tests/mcp-servers`;
//! - `tests/mcp-servers/crashy.mjs`, a small stdio server (Node's standard
//!   library only) that can be told to crash;
//! - `tests/mcp-servers/probe.mjs`, another one that reports its working
//!   directory and fails with long texts.
//!
//! Every test that runs a server needs `node`; without it those tests print
//! a loud notice and pass without checking anything. With `node` present but
//! the packages not installed they fail and say how to install them.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chatd::config::McpServerConfig;
use chatd::llm::{FunctionCall, ToolCall};
use chatd::tools::executor::{Limits, ToolOutcome, run_calls};
use chatd::tools::mcp::{McpManager, McpOptions, RmcpConnector, start_mcp};
use chatd::tools::{Approval, SourceStatus, ToolContext, ToolRegistry};
use futures::StreamExt;
use serde_json::{Value, json};
use support::mock::{self, MockUpstream};
use support::sse::{next, rest};
use support::{TestApp, closed_port};

const SERVERS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp-servers");

/// Whether `node` runs; prints a loud notice when it does not.
fn node_available(test: &str) -> bool {
    let ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        // Straight to stderr: libtest captures eprintln! of passing tests.
        let bar = "!".repeat(78);
        let notice = format!(
            "\n{bar}\n!! SKIPPED {test}: `node` is not installed, so the MCP test servers cannot run.\n\
             !! Install Node.js >= 20 and run `npm ci --prefix tests/mcp-servers` to run this test.\n{bar}\n"
        );
        let _ = std::io::Write::write_all(&mut std::io::stderr(), notice.as_bytes());
    }
    ok
}

/// The entry script of an npm-installed server; panics with the install
/// command when the packages are missing.
fn npm_server(package: &str) -> String {
    let path = PathBuf::from(SERVERS_DIR)
        .join("node_modules/@modelcontextprotocol")
        .join(package)
        .join("dist/index.js");
    assert!(
        path.is_file(),
        "{} is missing: run `npm ci --prefix tests/mcp-servers` first",
        path.display()
    );
    path.display().to_string()
}

fn stdio_server(name: &str, args: Vec<String>) -> McpServerConfig {
    McpServerConfig {
        name: name.into(),
        command: Some("node".into()),
        args,
        env: Default::default(),
        url: None,
        headers: Default::default(),
        timeout_ms: None,
    }
}

fn http_server(name: &str, url: String) -> McpServerConfig {
    McpServerConfig {
        name: name.into(),
        command: None,
        args: Vec::new(),
        env: Default::default(),
        url: Some(url),
        headers: [("X-Test".to_string(), "chatd".to_string())].into(),
        timeout_ms: None,
    }
}

fn crashy() -> McpServerConfig {
    let mut server = stdio_server("crashy", vec![format!("{SERVERS_DIR}/crashy.mjs")]);
    server.timeout_ms = Some(5_000);
    server
}

fn status(registry: &ToolRegistry, name: &str) -> Option<SourceStatus> {
    registry.source_statuses().into_iter().find(|s| s.name == name)
}

/// Waits (up to 30 s) until the server's status is `wanted`.
async fn wait_status(registry: &ToolRegistry, name: &str, wanted: &str) -> SourceStatus {
    for _ in 0..600 {
        if let Some(s) = status(registry, name).filter(|s| s.status == wanted) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("MCP server {name} never became {wanted}: {:?}", status(registry, name));
}

/// Runs one call through chatd's executor (schema check, timeout, panic
/// catch), as the chat loop does after approval.
async fn run(registry: &Arc<ToolRegistry>, name: &str, arguments: Value) -> ToolOutcome {
    let call = ToolCall {
        id: "call_1".into(),
        kind: "function".into(),
        function: FunctionCall {
            name: name.into(),
            arguments: arguments.to_string(),
        },
    };
    let limits = Limits {
        timeout: Duration::from_secs(20),
        concurrency: 1,
        max_output_bytes: 100_000,
    };
    let enabled = Arc::new(registry.names());
    let mut outcomes = Box::pin(run_calls(
        registry.clone(),
        enabled,
        ToolContext::detached(),
        vec![call],
        limits,
    ));
    outcomes.next().await.map(|(_, o)| o).expect("one outcome")
}

/// A directory for the filesystem server, with one file.
fn files_root() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().canonicalize().expect("canonical root");
    std::fs::write(root.join("notes.txt"), "line one\nline two: ünïcödé\n").expect("write notes");
    (dir, root)
}

fn files_server(root: &std::path::Path) -> McpServerConfig {
    stdio_server(
        "files",
        vec![npm_server("server-filesystem"), root.display().to_string()],
    )
}

#[tokio::test]
async fn filesystem_server_tools_are_registered_with_their_schemas() {
    if !node_available("filesystem_server_tools_are_registered_with_their_schemas") {
        return;
    }
    let (_dir, root) = files_root();
    let upstream = MockUpstream::start().await;
    let app = TestApp::start(&upstream.base_url).await;
    let registry = app.chat.tool_registry().clone();
    let manager = start_mcp(&[files_server(&root)], registry.clone()).await;

    let connected = wait_status(&registry, "files", "connected").await;
    assert_eq!(connected.error, None);
    for tool in [
        "files__read_text_file",
        "files__read_file",
        "files__list_directory",
        "files__write_file",
    ] {
        assert!(
            connected.tools.iter().any(|t| t == tool),
            "{tool} in {:?}",
            connected.tools
        );
        assert!(registry.contains(tool), "{tool} registered");
    }
    assert!(connected.tools.iter().all(|t| t.starts_with("files__")));

    let (code, body) = app.get("/api/tools").await;
    assert_eq!(code, 200);
    let tools = body["tools"].as_array().expect("tools");
    let read = tools
        .iter()
        .find(|t| t["name"] == "files__read_text_file")
        .expect("listed");
    assert_eq!(read["origin"], "mcp:files");
    assert_eq!(read["approval"], "ask");
    assert!(read["description"].as_str().is_some_and(|d| !d.is_empty()), "{read}");
    assert_eq!(read["parameters"]["type"], "object");
    assert_eq!(read["parameters"]["properties"]["path"]["type"], "string");
    assert_eq!(read["parameters"]["required"], json!(["path"]));
    assert!(
        tools
            .iter()
            .any(|t| t["name"] == "calculator" && t["origin"] == "builtin"),
        "built-ins stay"
    );
    let sources = body["sources"].as_array().expect("sources");
    let files = sources.iter().find(|s| s["name"] == "files").expect("files source");
    assert_eq!(files["status"], "connected");
    assert_eq!(files["error"], Value::Null);
    assert_eq!(files["tools"].as_array().map(Vec::len), Some(connected.tools.len()));

    // A call that breaks the schema is stopped by chatd's executor.
    let bad = run(&registry, "files__read_text_file", json!({"path": 5})).await;
    assert!(
        !bad.success && bad.content.contains("do not match the schema"),
        "{bad:?}"
    );
    // A call the server refuses (outside its root) fails with its text.
    let outside = run(&registry, "files__read_text_file", json!({"path": "/etc/hostname"})).await;
    assert!(!outside.success, "{outside:?}");
    assert!(outside.content.starts_with("Error: "), "{outside:?}");

    manager.shutdown().await;
    assert!(!registry.contains("files__read_text_file"), "shutdown unregisters");
    assert_eq!(status(&registry, "files").map(|s| s.status), Some("unavailable".into()));
}

#[tokio::test]
async fn a_real_filesystem_call_runs_through_the_chat_loop_after_approval() {
    if !node_available("a_real_filesystem_call_runs_through_the_chat_loop_after_approval") {
        return;
    }
    let (_dir, root) = files_root();
    let path = root.join("notes.txt").display().to_string();
    let upstream = MockUpstream::start().await;
    let arguments = json!({ "path": path }).to_string();
    upstream.push(mock::tool_reply(&[("F1", "files__read_text_file", &arguments)], 3, 2));
    upstream.push(mock::text_reply(&["It has two lines."], 5, 4));
    let app = TestApp::start(&upstream.base_url).await;
    let registry = app.chat.tool_registry().clone();
    let manager = start_mcp(&[files_server(&root)], registry.clone()).await;
    wait_status(&registry, "files", "connected").await;

    let mut stream = app.stream_chat(json!({"message": "What is in notes.txt?"})).await;
    let start = next(&mut stream).await;
    assert_eq!(start.event, "start");
    let message_id = start.message_id();
    let call = next(&mut stream).await;
    assert_eq!(
        (call.data["type"].as_str(), call.data["name"].as_str()),
        (Some("tool_call"), Some("files__read_text_file"))
    );
    let ask = next(&mut stream).await;
    assert_eq!(ask.event, "process_step");
    assert_eq!(ask.data["type"], "tool_approval");
    assert_eq!(ask.data["id_ref"], "F1");
    assert_eq!(ask.data["name"], "files__read_text_file");

    let (code, body) = app
        .approve(&message_id, json!({"tool_call_id": "F1", "approved": true}))
        .await;
    assert_eq!(code, 200, "{body}");

    let result = next(&mut stream).await;
    assert_eq!(result.data["type"], "tool_result");
    assert_eq!(result.data["name"], "files__read_text_file");
    assert_eq!(result.data["success"], true, "{:?}", result.data);
    assert_eq!(result.data["content"], "line one\nline two: ünïcödé\n");

    let tail = rest(&mut stream).await;
    assert_eq!(tail.last().map(|e| e.event.as_str()), Some("done"), "{tail:#?}");

    // The model got the file's text as the tool message.
    let received = upstream.received();
    assert_eq!(received.len(), 2);
    let tool_message = received[1]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["role"] == "tool")
        .cloned()
        .expect("a tool message");
    assert_eq!(tool_message["tool_call_id"], "F1");
    assert_eq!(tool_message["content"], "line one\nline two: ünïcödé\n");
    // ...and was offered the MCP tools with the server's schema.
    let offered = received[0]["tools"].as_array().expect("tools offered");
    let read = offered
        .iter()
        .find(|t| t["function"]["name"] == "files__read_text_file")
        .expect("offered");
    assert_eq!(read["function"]["parameters"]["properties"]["path"]["type"], "string");

    manager.shutdown().await;
}

#[tokio::test]
async fn unreachable_servers_are_unavailable_and_chatd_keeps_working() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::text_reply(&["still here"], 1, 1));
    let app = TestApp::start(&upstream.base_url).await;
    let registry = app.chat.tool_registry().clone();
    let port = closed_port();
    let mut missing = stdio_server("missing", vec![]);
    missing.command = Some("chatd-test-no-such-mcp-server".into());
    let manager = start_mcp(
        &[missing, http_server("closed", format!("http://127.0.0.1:{port}/mcp"))],
        registry.clone(),
    )
    .await;

    let missing = wait_status(&registry, "missing", "unavailable").await;
    let error = missing.error.unwrap_or_default();
    assert!(
        error.contains("chatd-test-no-such-mcp-server") && error.contains("No such file"),
        "{error}"
    );
    assert!(missing.tools.is_empty());
    let closed = wait_status(&registry, "closed", "unavailable").await;
    assert!(
        closed.error.is_some_and(|e| e.starts_with("cannot connect")),
        "closed port"
    );

    let (code, body) = app.get("/api/tools").await;
    assert_eq!(code, 200);
    let names: Vec<&str> = body["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["calculator", "get_current_time"]);
    let statuses: Vec<(&str, &str)> = body["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|s| (s["name"].as_str().unwrap_or(""), s["status"].as_str().unwrap_or("")))
        .collect();
    assert!(statuses.contains(&("closed", "unavailable")), "{statuses:?}");

    let events = app.chat(json!({"message": "hello?"})).await;
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"));
    assert!(
        events
            .iter()
            .any(|e| e.data["type"] == "text" && e.data["delta"] == "still here")
    );

    let refresh = manager.refresh("closed").await;
    assert!(refresh.is_err(), "refresh reports the failure: {refresh:?}");
    manager.shutdown().await;
}

/// The pid in an `echo` answer of crashy.mjs.
fn pid_of(outcome: &ToolOutcome) -> String {
    assert!(outcome.success, "{outcome:?}");
    let rest = outcome.content.strip_prefix("pid ").expect("pid prefix");
    rest.split(':').next().expect("pid").to_string()
}

#[tokio::test]
async fn a_crashed_stdio_server_is_restarted_and_its_tools_work_again() {
    if !node_available("a_crashed_stdio_server_is_restarted_and_its_tools_work_again") {
        return;
    }
    let registry = Arc::new(ToolRegistry::with_builtins());
    let options = McpOptions {
        backoff_initial: Duration::from_secs(1),
        ..McpOptions::default()
    };
    let manager = McpManager::start(&[crashy()], registry.clone(), options, Arc::new(RmcpConnector));
    let connected = wait_status(&registry, "crashy", "connected").await;
    assert_eq!(
        connected.tools,
        [
            "crashy__crash",
            "crashy__echo",
            "crashy__env",
            "crashy__fail",
            "crashy__mixed"
        ]
    );

    let first = run(&registry, "crashy__echo", json!({"text": "one"})).await;
    let first_pid = pid_of(&first);
    assert_eq!(first.content, format!("pid {first_pid}: one"));

    let crash = run(&registry, "crashy__crash", json!({})).await;
    assert!(!crash.success, "{crash:?}");
    assert!(
        crash
            .content
            .contains("\"crashy\" closed the connection during the call"),
        "{crash:?}"
    );

    // Down: the tools stay registered and fail with a clear error.
    let down = wait_status(&registry, "crashy", "unavailable").await;
    assert!(down.error.as_deref().is_some_and(|e| e.contains("exited")), "{down:?}");
    assert_eq!(down.tools.len(), 5);
    let meanwhile = run(&registry, "crashy__echo", json!({"text": "two"})).await;
    assert!(!meanwhile.success, "{meanwhile:?}");
    assert!(
        meanwhile.content.contains("\"crashy\" is not connected") && meanwhile.content.contains("reconnecting"),
        "{meanwhile:?}"
    );

    // Restarted after the backoff: a new process answers.
    wait_status(&registry, "crashy", "connected").await;
    let again = run(&registry, "crashy__echo", json!({"text": "three"})).await;
    let second_pid = pid_of(&again);
    assert_ne!(first_pid, second_pid, "a new process");

    // refresh() restarts it on demand.
    manager.refresh("crashy").await.expect("refresh");
    let third = run(&registry, "crashy__echo", json!({"text": "four"})).await;
    assert_ne!(pid_of(&third), second_pid);

    manager.shutdown().await;
    assert!(registry.names().iter().all(|n| !n.starts_with("crashy__")));
}

#[tokio::test]
async fn results_are_rendered_and_is_error_fails_the_call() {
    if !node_available("results_are_rendered_and_is_error_fails_the_call") {
        return;
    }
    let registry = Arc::new(ToolRegistry::new());
    let mut server = crashy();
    server.env.insert("MCP_GREETING".into(), "hello from chatd".into());
    let manager = start_mcp(&[server], registry.clone()).await;
    wait_status(&registry, "crashy", "connected").await;
    let tool = registry
        .list()
        .into_iter()
        .find(|t| t.name == "crashy__echo")
        .expect("echo");
    assert_eq!(tool.description, "Echoes the text, prefixed with the server's pid.");
    assert_eq!(tool.parameters["required"], json!(["text"]));

    let mixed = run(&registry, "crashy__mixed", json!({})).await;
    assert_eq!(
        (mixed.content.as_str(), mixed.success),
        (
            "three parts\n[image: image/png, 5 bytes]\n[resource: file:///notes.txt, text/plain]\nembedded text",
            true
        )
    );
    // The configured env is passed; chatd's own environment is not (only PATH & co).
    let env = run(&registry, "crashy__env", json!({})).await;
    let env: Value = serde_json::from_str(&env.content).expect("env JSON");
    assert_eq!(
        env,
        json!({"has_path": true, "CARGO_PKG_NAME": null, "MCP_GREETING": "hello from chatd"}),
        "cargo sets CARGO_PKG_NAME for this test process: {:?}",
        std::env::var("CARGO_PKG_NAME")
    );

    let failed = run(&registry, "crashy__fail", json!({})).await;
    assert_eq!(
        (failed.content.as_str(), failed.success),
        ("Error: it failed on purpose", false)
    );
    let missing_argument = run(&registry, "crashy__echo", json!({})).await;
    assert!(
        !missing_argument.success && missing_argument.content.contains("\"text\" is a required property"),
        "{missing_argument:?}"
    );
    manager.shutdown().await;
}

/// Waits until something accepts connections on the port.
async fn wait_listening(port: u16, child: &mut tokio::process::Child) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the HTTP MCP server exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the HTTP MCP server did not listen on {port}");
}

/// Starts the reference "everything" server over streamable HTTP on `port`.
async fn everything_over_http(port: u16) -> tokio::process::Child {
    let mut child = tokio::process::Command::new("node")
        .arg(npm_server("server-everything"))
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start server-everything");
    wait_listening(port, &mut child).await;
    child
}

#[tokio::test]
async fn a_streamable_http_server_is_used_and_reconnected_after_it_comes_back() {
    if !node_available("a_streamable_http_server_is_used_and_reconnected_after_it_comes_back") {
        return;
    }
    let port = closed_port();
    let mut child = everything_over_http(port).await;
    let registry = Arc::new(ToolRegistry::new());
    let options = McpOptions {
        health_interval: Some(Duration::from_millis(500)),
        health_timeout: Duration::from_secs(2),
        ..McpOptions::default()
    };
    let manager = McpManager::start(
        &[http_server("everything", format!("http://127.0.0.1:{port}/mcp"))],
        registry.clone(),
        options,
        Arc::new(RmcpConnector),
    );
    let connected = wait_status(&registry, "everything", "connected").await;
    assert!(connected.tools.iter().any(|t| t == "everything__echo"), "{connected:?}");
    let echo = registry
        .list()
        .into_iter()
        .find(|t| t.name == "everything__echo")
        .expect("echo");
    assert_eq!((echo.origin.as_str(), echo.approval), ("mcp:everything", Approval::Ask));
    let outcome = run(&registry, "everything__echo", json!({"message": "over http"})).await;
    assert_eq!((outcome.content.as_str(), outcome.success), ("Echo: over http", true));

    // The server goes away: the health check notices, the tools stay and fail clearly.
    child.kill().await.expect("kill the server");
    let down = wait_status(&registry, "everything", "unavailable").await;
    assert!(down.tools.iter().any(|t| t == "everything__echo"), "{down:?}");
    let meanwhile = run(&registry, "everything__echo", json!({"message": "anyone?"})).await;
    assert!(
        !meanwhile.success && meanwhile.content.contains("\"everything\" is not connected"),
        "{meanwhile:?}"
    );

    // It comes back (a new process, so a new session): chatd reconnects.
    let _child = everything_over_http(port).await;
    wait_status(&registry, "everything", "connected").await;
    let outcome = run(&registry, "everything__echo", json!({"message": "again"})).await;
    assert_eq!((outcome.content.as_str(), outcome.success), ("Echo: again", true));
    manager.shutdown().await;
}

#[tokio::test]
async fn a_stdio_server_runs_in_an_empty_directory_of_its_own_and_its_errors_are_cut() {
    if !node_available("a_stdio_server_runs_in_an_empty_directory_of_its_own_and_its_errors_are_cut") {
        return;
    }
    let upstream = MockUpstream::start().await;
    upstream.push(mock::tool_reply(
        &[
            ("P1", "probe__cwd", "{}"),
            ("P2", "probe__fail_long", r#"{"bytes":5000}"#),
        ],
        1,
        1,
    ));
    upstream.push(mock::text_reply(&["ok"], 1, 1));
    let app = TestApp::start_tweaked(&upstream.base_url, |c| {
        c.tools.max_output_bytes = 200;
        for tool in ["probe__cwd", "probe__fail_long"] {
            c.tools.approval.insert(tool.into(), Approval::Auto);
        }
    })
    .await;
    let registry = app.chat.tool_registry().clone();
    let probe = stdio_server("probe", vec![format!("{SERVERS_DIR}/probe.mjs")]);
    let manager = start_mcp(&[probe], registry.clone()).await;
    wait_status(&registry, "probe", "connected").await;

    let events = app.chat(json!({"message": "where are you?"})).await;
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"), "{events:#?}");
    let result = |id: &str| {
        events
            .iter()
            .find(|e| e.data["type"] == "tool_result" && e.data["id_ref"] == id)
            .map(|e| {
                (
                    e.data["content"].as_str().unwrap_or("").to_string(),
                    e.data["success"] == true,
                )
            })
            .unwrap_or_else(|| panic!("no result for {id}: {events:#?}"))
    };

    // Not chatd's working directory (next to its database): an empty one of
    // its own below the temp dir.
    let (cwd, ok) = result("P1");
    assert!(ok, "{cwd}");
    let cwd: Value = serde_json::from_str(&cwd).expect("cwd JSON");
    let dir = PathBuf::from(cwd["cwd"].as_str().expect("cwd"));
    let ours = std::env::current_dir().expect("current dir");
    assert_ne!(dir, ours);
    let temp = std::env::temp_dir().canonicalize().expect("temp dir");
    assert!(
        dir.canonicalize().is_ok_and(|d| d.starts_with(&temp)),
        "{dir:?} below {temp:?}"
    );
    assert!(
        dir.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("chatd-mcp-probe-")),
        "{dir:?}"
    );
    assert_eq!(cwd["entries"], json!([]));
    assert!(dir.is_dir());

    // The error text is cut to tools.max_output_bytes like a success.
    let (failed, ok) = result("P2");
    assert!(!ok);
    assert_eq!(
        failed,
        format!(
            "Error: {}\n[output truncated: 200 of 5007 bytes shown]",
            "x".repeat(193)
        )
    );

    // The directory goes away with the server.
    manager.shutdown().await;
    assert!(!dir.exists(), "{dir:?} removed when the server stopped");
}

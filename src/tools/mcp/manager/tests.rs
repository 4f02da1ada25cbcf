//! The supervisor against a scripted in-memory connector.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use super::*;
use crate::tools::mcp::connection::CallOutcome;
use crate::tools::{Approval, ToolContext, ToolError};

/// A server whose tools, failures and crashes the test controls.
#[derive(Default)]
struct FakeServer {
    tools: Mutex<Vec<McpToolSpec>>,
    connects: AtomicUsize,
    refuse: AtomicBool,
    /// Pings fail (a server that stopped answering).
    silent: AtomicBool,
    current: Mutex<Option<Arc<FakeConnection>>>,
}

struct FakeConnection {
    id: usize,
    ended: CancellationToken,
    changed: Arc<Notify>,
    server: Arc<FakeServer>,
}

struct FakeConnector(Arc<FakeServer>);

impl Connector for FakeConnector {
    fn connect(&self, _server: &McpServerConfig) -> BoxFuture<'static, Result<Arc<dyn McpConnection>, McpError>> {
        let server = self.0.clone();
        Box::pin(async move {
            if server.refuse.load(Ordering::SeqCst) {
                return Err(McpError::Connect("connection refused".into()));
            }
            let id = server.connects.fetch_add(1, Ordering::SeqCst) + 1;
            let connection = Arc::new(FakeConnection {
                id,
                ended: CancellationToken::new(),
                changed: Arc::new(Notify::new()),
                server: server.clone(),
            });
            *server.current.lock().expect("lock") = Some(connection.clone());
            Ok(connection as Arc<dyn McpConnection>)
        })
    }
}

impl McpConnection for FakeConnection {
    fn list_tools(&self) -> BoxFuture<'static, Result<Vec<McpToolSpec>, McpError>> {
        let tools = self.server.tools.lock().expect("lock").clone();
        Box::pin(async move { Ok(tools) })
    }

    fn call_tool(
        &self,
        name: &str,
        arguments: Map<String, Value>,
    ) -> BoxFuture<'static, Result<CallOutcome, McpError>> {
        let (id, name) = (self.id, name.to_string());
        let ended = self.ended.clone();
        Box::pin(async move {
            if name == "slow" {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            if ended.is_cancelled() {
                return Err(McpError::Closed);
            }
            Ok(CallOutcome {
                content: vec![
                    json!({"type": "text", "text": format!("conn {id}: {name} {}", Value::Object(arguments))}),
                ],
                structured: None,
                is_error: name == "fails",
            })
        })
    }

    fn ping(&self, _limit: Duration) -> BoxFuture<'static, Result<(), McpError>> {
        let result = if self.server.silent.load(Ordering::SeqCst) {
            Err(McpError::Protocol("no answer to a ping".into()))
        } else {
            Ok(())
        };
        Box::pin(async move { result })
    }

    fn closed(&self) -> BoxFuture<'static, String> {
        let ended = self.ended.clone();
        Box::pin(async move {
            ended.cancelled().await;
            "the fake crashed".to_string()
        })
    }

    fn tools_changed(&self) -> BoxFuture<'static, ()> {
        let changed = self.changed.clone();
        Box::pin(async move { changed.notified().await })
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        self.ended.cancel();
        Box::pin(async {})
    }
}

fn spec(name: &str) -> McpToolSpec {
    McpToolSpec {
        name: name.into(),
        description: format!("does {name}"),
        input_schema: json!({"type": "object", "properties": {"x": {"type": "integer"}}}),
    }
}

fn config(name: &str) -> McpServerConfig {
    McpServerConfig {
        name: name.into(),
        command: Some("fake".into()),
        args: vec![],
        env: Default::default(),
        url: None,
        headers: Default::default(),
        timeout_ms: Some(1234),
    }
}

const FAST: McpOptions = McpOptions {
    connect_timeout: Duration::from_secs(5),
    backoff_initial: Duration::from_millis(100),
    backoff_max: Duration::from_millis(400),
    health_interval: Some(Duration::from_millis(50)),
    health_timeout: Duration::from_millis(50),
};

fn status(registry: &ToolRegistry, name: &str) -> Option<SourceStatus> {
    registry.source_statuses().into_iter().find(|s| s.name == name)
}

async fn wait_for(registry: &ToolRegistry, name: &str, wanted: &str) -> SourceStatus {
    for _ in 0..200 {
        if let Some(s) = status(registry, name).filter(|s| s.status == wanted) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} never became {wanted}: {:?}", status(registry, name));
}

async fn call(registry: &ToolRegistry, name: &str) -> Result<String, ToolError> {
    let tool = registry
        .get(name)
        .map(|r| r.tool.clone())
        .ok_or(ToolError::Failed("no tool".into()))?;
    tool.call(ToolContext::detached(), json!({"x": 1}))
        .await
        .map(|o| o.content)
}

fn start(server: &Arc<FakeServer>, registry: &Arc<ToolRegistry>) -> McpManager {
    McpManager::start(
        &[config("fake")],
        registry.clone(),
        FAST,
        Arc::new(FakeConnector(server.clone())),
    )
}

#[tokio::test]
async fn tools_register_with_prefix_origin_approval_and_timeout() {
    let server = Arc::new(FakeServer::default());
    *server.tools.lock().expect("lock") = vec![spec("echo"), spec("fails")];
    let registry = Arc::new(ToolRegistry::new());
    let manager = start(&server, &registry);
    let connected = wait_for(&registry, "fake", "connected").await;
    assert_eq!(connected.tools, ["fake__echo", "fake__fails"]);
    assert_eq!(connected.error, None);

    let info = registry.list();
    assert_eq!(info.len(), 2);
    assert_eq!(info[0].name, "fake__echo");
    assert_eq!(info[0].origin, "mcp:fake");
    assert_eq!(info[0].approval, Approval::Ask);
    assert_eq!(info[0].description, "does echo");
    assert_eq!(info[0].parameters["properties"]["x"]["type"], "integer");
    let tool = registry.get("fake__echo").map(|r| r.tool.clone()).expect("registered");
    assert_eq!(tool.timeout(), Some(Duration::from_millis(1234)));

    assert_eq!(
        call(&registry, "fake__echo").await,
        Ok(r#"conn 1: echo {"x":1}"#.to_string())
    );
    assert_eq!(
        call(&registry, "fake__fails").await,
        Err(ToolError::Failed(r#"conn 1: fails {"x":1}"#.into())),
        "isError becomes a failure with the text"
    );

    manager.shutdown().await;
    assert!(registry.names().is_empty(), "shutdown unregisters");
    let stopped = status(&registry, "fake").expect("status");
    assert_eq!((stopped.status.as_str(), stopped.tools.len()), ("unavailable", 0));
}

#[tokio::test]
async fn a_crash_keeps_the_tools_failing_clearly_until_the_restart() {
    let server = Arc::new(FakeServer::default());
    *server.tools.lock().expect("lock") = vec![spec("echo")];
    let registry = Arc::new(ToolRegistry::new());
    let _manager = start(&server, &registry);
    wait_for(&registry, "fake", "connected").await;

    server.refuse.store(true, Ordering::SeqCst);
    let crashed = server.current.lock().expect("lock").clone().expect("connected");
    crashed.ended.cancel();
    let down = wait_for(&registry, "fake", "unavailable").await;
    assert_eq!(down.tools, ["fake__echo"], "the tools stay registered while down");
    assert!(registry.contains("fake__echo"));
    let err = call(&registry, "fake__echo").await.expect_err("down");
    assert!(
        err.to_string().contains("\"fake\" is not connected") && err.to_string().contains("reconnecting"),
        "{err}"
    );

    // Refused attempts keep it down (with the error); then it comes back.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let still = status(&registry, "fake").expect("status");
    assert_eq!(still.error.as_deref(), Some("cannot connect: connection refused"));
    server.refuse.store(false, Ordering::SeqCst);
    wait_for(&registry, "fake", "connected").await;
    assert_eq!(
        call(&registry, "fake__echo").await,
        Ok(r#"conn 2: echo {"x":1}"#.to_string())
    );
}

#[tokio::test]
async fn tool_list_changes_and_refresh_resync_the_registry() {
    let server = Arc::new(FakeServer::default());
    *server.tools.lock().expect("lock") = vec![spec("echo"), spec("old")];
    let registry = Arc::new(ToolRegistry::with_builtins());
    let manager = start(&server, &registry);
    wait_for(&registry, "fake", "connected").await;
    assert!(registry.contains("fake__old"));

    *server.tools.lock().expect("lock") = vec![spec("echo"), spec("new")];
    let connection = server.current.lock().expect("lock").clone().expect("connected");
    connection.changed.notify_one();
    for _ in 0..200 {
        if registry.contains("fake__new") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        registry.names(),
        ["calculator", "fake__echo", "fake__new", "get_current_time"]
    );

    manager.refresh("fake").await.expect("refresh connects");
    assert_eq!(server.connects.load(Ordering::SeqCst), 2);
    assert!(connection.ended.is_cancelled(), "the old connection was closed");
    assert_eq!(
        call(&registry, "fake__echo").await,
        Ok(r#"conn 2: echo {"x":1}"#.to_string())
    );

    assert!(matches!(
        manager.refresh("nope").await,
        Err(McpError::UnknownServer(name)) if name == "nope"
    ));
    server.refuse.store(true, Ordering::SeqCst);
    let err = manager.refresh("fake").await.expect_err("refused");
    assert_eq!(err.to_string(), "cannot connect: connection refused");
}

#[tokio::test]
async fn bad_entries_are_reported_and_skipped() {
    let server = Arc::new(FakeServer::default());
    let registry = Arc::new(ToolRegistry::new());
    let mut no_transport = config("none");
    no_transport.command = None;
    let manager = McpManager::start(
        &[config("bad name"), no_transport, config("ok"), config("ok")],
        registry.clone(),
        FAST,
        Arc::new(FakeConnector(server.clone())),
    );
    assert_eq!(manager.servers(), ["bad name", "none", "ok"]);
    let bad = status(&registry, "bad name").expect("reported");
    assert_eq!(bad.status, "unavailable");
    assert!(
        bad.error.as_deref().unwrap_or("").contains("1 to 32 characters"),
        "{bad:?}"
    );
    assert!(matches!(manager.refresh("none").await, Err(McpError::RefreshFailed(_))));
    wait_for(&registry, "ok", "connected").await;
    assert_eq!(
        server.connects.load(Ordering::SeqCst),
        1,
        "the repeated name is not started"
    );
}

#[tokio::test]
async fn dropping_the_manager_stops_the_servers() {
    let server = Arc::new(FakeServer::default());
    *server.tools.lock().expect("lock") = vec![spec("echo")];
    let registry = Arc::new(ToolRegistry::new());
    let manager = start(&server, &registry);
    wait_for(&registry, "fake", "connected").await;
    drop(manager);
    wait_for(&registry, "fake", "unavailable").await;
    assert!(registry.names().is_empty());
    let connection = server.current.lock().expect("lock").clone().expect("connected");
    assert!(connection.ended.is_cancelled());
}

#[tokio::test]
async fn a_server_that_stops_answering_pings_is_reconnected() {
    let server = Arc::new(FakeServer::default());
    *server.tools.lock().expect("lock") = vec![spec("echo")];
    let registry = Arc::new(ToolRegistry::new());
    let _manager = start(&server, &registry);
    wait_for(&registry, "fake", "connected").await;
    server.refuse.store(true, Ordering::SeqCst);
    server.silent.store(true, Ordering::SeqCst);
    let down = wait_for(&registry, "fake", "unavailable").await;
    let first = server.current.lock().expect("lock").clone().expect("connected");
    assert!(first.ended.is_cancelled(), "the silent connection was closed");
    assert!(
        down.error.as_deref().unwrap_or("").contains("health check failed")
            || down.error.as_deref() == Some("cannot connect: connection refused"),
        "{down:?}"
    );
    server.silent.store(false, Ordering::SeqCst);
    server.refuse.store(false, Ordering::SeqCst);
    wait_for(&registry, "fake", "connected").await;
    assert_eq!(
        call(&registry, "fake__echo").await,
        Ok(r#"conn 2: echo {"x":1}"#.to_string())
    );
}

#[tokio::test]
async fn no_health_check_while_a_call_runs() {
    let server = Arc::new(FakeServer::default());
    *server.tools.lock().expect("lock") = vec![spec("slow")];
    let registry = Arc::new(ToolRegistry::new());
    let _manager = start(&server, &registry);
    wait_for(&registry, "fake", "connected").await;
    server.silent.store(true, Ordering::SeqCst);
    // Pings are due every 50 ms and would fail; the 300 ms call is left alone.
    assert_eq!(
        call(&registry, "fake__slow").await,
        Ok(r#"conn 1: slow {"x":1}"#.to_string())
    );
    wait_for(&registry, "fake", "unavailable").await;
}

//! Tools that exist only for the tests, and a registry with them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chatd::tools::{Approval, Source, Tool, ToolContext, ToolError, ToolOutput, ToolRegistry};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

/// The built-in tools plus `extra`.
pub fn registry_with(extra: Vec<Arc<dyn Tool>>) -> ToolRegistry {
    let registry = ToolRegistry::with_builtins();
    for tool in extra {
        registry.register(tool).expect("register test tool");
    }
    registry
}

/// `launch`: a tool with a side effect; counts its runs; asks for approval.
pub struct Launch(pub Arc<AtomicUsize>);

impl Tool for Launch {
    fn name(&self) -> &str {
        "launch"
    }
    fn description(&self) -> &str {
        "Launches the thing."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"target": {"type": "string"}}})
    }
    fn default_approval(&self) -> Approval {
        Approval::Ask
    }
    fn call(&self, _ctx: ToolContext, args: Value) -> BoxFuture<'static, Result<ToolOutput, ToolError>> {
        let runs = self.0.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(format!("launched {}", args["target"].as_str().unwrap_or("?")).into())
        }
        .boxed()
    }
}

/// `cite`: returns two sources, `a.md` and `b.md`.
pub struct Cite;

impl Tool for Cite {
    fn name(&self) -> &str {
        "cite"
    }
    fn description(&self) -> &str {
        "Finds documents."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object"})
    }
    fn call(&self, _ctx: ToolContext, _: Value) -> BoxFuture<'static, Result<ToolOutput, ToolError>> {
        async move {
            let source = |path: &str| Source {
                id: "x".into(),
                title: format!("Title of {path}"),
                path: path.into(),
                snippet: format!("from {path}"),
            };
            Ok(ToolOutput {
                content: "two documents".into(),
                sources: vec![source("a.md"), source("b.md")],
            })
        }
        .boxed()
    }
}

/// `wait_pair`: completes only when two calls of it run at the same time.
pub struct WaitPair(pub Arc<tokio::sync::Barrier>);

impl Tool for WaitPair {
    fn name(&self) -> &str {
        "wait_pair"
    }
    fn description(&self) -> &str {
        "Returns once a second call is running too."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"tag": {"type": "string"}}, "required": ["tag"]})
    }
    fn call(&self, _ctx: ToolContext, arguments: Value) -> BoxFuture<'static, Result<ToolOutput, ToolError>> {
        let barrier = self.0.clone();
        async move {
            barrier.wait().await;
            Ok(format!("paired {}", arguments["tag"].as_str().unwrap_or("?")).into())
        }
        .boxed()
    }
}

/// `panics`: panics when called.
pub struct Panics;

impl Tool for Panics {
    fn name(&self) -> &str {
        "panics"
    }
    fn description(&self) -> &str {
        "Always panics."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object"})
    }
    fn call(&self, _ctx: ToolContext, _: Value) -> BoxFuture<'static, Result<ToolOutput, ToolError>> {
        async move { panic!("tool bug") }.boxed()
    }
}

/// `sleeps`: never finishes (sleeps for an hour); sets its flag when its
/// future is dropped (the call timed out or the reply was cancelled).
#[derive(Default)]
pub struct Sleeps(pub Arc<AtomicBool>);

/// Sets the flag when dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Tool for Sleeps {
    fn name(&self) -> &str {
        "sleeps"
    }
    fn description(&self) -> &str {
        "Sleeps for an hour."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object"})
    }
    fn call(&self, _ctx: ToolContext, _: Value) -> BoxFuture<'static, Result<ToolOutput, ToolError>> {
        let guard = SetOnDrop(self.0.clone());
        async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok("late".into())
        }
        .boxed()
    }
}

//! Runs one round's tool calls: in parallel up to a bound, each with a
//! timeout, its arguments checked against the tool's JSON Schema first.
//!
//! Nothing here fails the reply: an unknown tool, arguments that are not JSON
//! or do not match the schema, a tool error, a timeout or a panic all become
//! an unsuccessful [`ToolOutcome`] whose text tells the model what went wrong.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use serde_json::Value;

use super::{ToolContext, ToolOutput, ToolRegistry};
use crate::domain::ToolCall;

/// Limits for one round of calls.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest run of one call.
    pub timeout: Duration,
    /// Most calls running at once.
    pub concurrency: usize,
    /// Longest result text in bytes, for successes and error texts alike
    /// (longer is cut on a character boundary and marked).
    pub max_output_bytes: usize,
}

/// The result of one tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutcome {
    /// The text given back to the model (the output, or an error text).
    pub content: String,
    /// Whether the tool ran and returned normally.
    pub success: bool,
    /// Wall time in ms, including the schema check.
    pub duration_ms: u64,
    /// Documents the tool cites (empty for most tools).
    pub sources: Vec<super::Source>,
}

/// Runs `calls` and yields `(index in calls, outcome)` in call order, each as
/// soon as it and every earlier call are done. `enabled` are the tool names
/// offered to the model in this request; a call to any other name fails.
/// Dropping the stream aborts the calls still running.
pub fn run_calls(
    registry: Arc<ToolRegistry>,
    enabled: Arc<Vec<String>>,
    ctx: ToolContext,
    calls: Vec<ToolCall>,
    limits: Limits,
) -> impl Stream<Item = (usize, ToolOutcome)> + Send + 'static {
    futures::stream::iter(calls.into_iter().enumerate())
        .map(move |(i, call)| {
            let registry = registry.clone();
            let enabled = enabled.clone();
            let ctx = ctx.clone();
            async move {
                let started = Instant::now();
                let result = run_one(&registry, &enabled, ctx, call, limits).await;
                let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                let (content, success, sources) = match result {
                    Ok(out) => (cut(out.content, limits.max_output_bytes), true, out.sources),
                    Err(text) => (cut(text, limits.max_output_bytes), false, Vec::new()),
                };
                (
                    i,
                    ToolOutcome {
                        content,
                        success,
                        duration_ms,
                        sources,
                    },
                )
            }
        })
        .buffered(limits.concurrency.max(1))
}

/// Aborts a spawned task when dropped (a cancelled reply drops its calls).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run_one(
    registry: &ToolRegistry,
    enabled: &[String],
    ctx: ToolContext,
    call: ToolCall,
    limits: Limits,
) -> Result<ToolOutput, String> {
    let name = call.function.name.as_str();
    let tool = match registry.get(name) {
        Some(tool) if enabled.iter().any(|n| n == name) => tool,
        _ => {
            return Err(format!(
                "Error: unknown tool {name:?}. Available tools: {}.",
                if enabled.is_empty() {
                    "none".to_string()
                } else {
                    enabled.join(", ")
                }
            ));
        }
    };
    let raw = call.function.arguments.trim();
    let arguments: Value = if raw.is_empty() {
        Value::Object(Default::default())
    } else {
        serde_json::from_str(raw).map_err(|e| {
            format!(
                "Error: the arguments are not valid JSON ({e}). Call {name} again with a JSON object matching: {}",
                tool.parameters
            )
        })?
    };
    let problems: Vec<String> = tool
        .validator
        .iter_errors(&arguments)
        .map(|e| {
            let path = e.instance_path().to_string();
            format!("{}: {e}", if path.is_empty() { "arguments" } else { path.as_str() })
        })
        .collect();
    if !problems.is_empty() {
        return Err(format!(
            "Error: the arguments do not match the schema: {}. Expected: {}",
            problems.join("; "),
            tool.parameters
        ));
    }

    let timeout = tool.tool.timeout().unwrap_or(limits.timeout);
    let handle = tokio::spawn(tool.tool.call(ctx, arguments));
    let _abort = AbortOnDrop(handle.abort_handle());
    match tokio::time::timeout(timeout, handle).await {
        Err(_) => Err(format!(
            "Error: {name} did not finish within {} ms and was stopped.",
            timeout.as_millis()
        )),
        Ok(Err(join)) if join.is_panic() => Err(format!("Error: {name} crashed while running.")),
        Ok(Err(_)) => Err(format!("Error: {name} was cancelled.")),
        Ok(Ok(Err(e))) => Err(format!("Error: {e}")),
        Ok(Ok(Ok(out))) => Ok(out),
    }
}

/// At most `max` bytes of `text`, cut on a character boundary and marked.
fn cut(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n[output truncated: {} of {} bytes shown]",
        &text[..end],
        end,
        text.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FunctionCall;

    fn call(name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: format!("call_{name}"),
            kind: "function".into(),
            function: FunctionCall {
                name: name.into(),
                arguments: arguments.into(),
            },
        }
    }

    async fn run(calls: Vec<ToolCall>) -> Vec<ToolOutcome> {
        let registry = Arc::new(ToolRegistry::with_builtins());
        let enabled = Arc::new(registry.names());
        let limits = Limits {
            timeout: Duration::from_secs(5),
            concurrency: 4,
            max_output_bytes: 1000,
        };
        run_calls(registry, enabled, ToolContext::detached(), calls, limits)
            .map(|(_, o)| o)
            .collect()
            .await
    }

    #[tokio::test]
    async fn failures_become_text_for_the_model() {
        let out = run(vec![
            call("calculator", r#"{"expression":"2+2"}"#),
            call("nope", "{}"),
            call("calculator", "{not json"),
            call("calculator", r#"{"expression": 5}"#),
            call("get_current_time", ""),
        ])
        .await;
        assert_eq!((out[0].content.as_str(), out[0].success), ("4", true));
        assert!(
            !out[1].success && out[1].content.contains("unknown tool \"nope\""),
            "{}",
            out[1].content
        );
        assert!(out[1].content.contains("calculator, get_current_time"));
        assert!(
            !out[2].success && out[2].content.contains("not valid JSON"),
            "{}",
            out[2].content
        );
        assert!(
            !out[3].success && out[3].content.contains("/expression"),
            "{}",
            out[3].content
        );
        assert!(
            out[4].success && out[4].content.contains("\"timezone\":\"UTC\""),
            "{}",
            out[4].content
        );
    }

    /// `shouts`: fails with a 5,000-byte error text.
    struct Shouts;

    impl crate::tools::Tool for Shouts {
        fn name(&self) -> &str {
            "shouts"
        }
        fn description(&self) -> &str {
            "Fails loudly."
        }
        fn parameters(&self) -> Value {
            serde_json::json!({"type": "object"})
        }
        fn call(
            &self,
            _: ToolContext,
            _: Value,
        ) -> futures::future::BoxFuture<'static, Result<ToolOutput, crate::tools::ToolError>> {
            Box::pin(async { Err(crate::tools::ToolError::Failed("é".repeat(2_500))) })
        }
    }

    #[tokio::test]
    async fn error_texts_are_cut_like_results() {
        let registry = ToolRegistry::new();
        registry.register(Arc::new(Shouts)).expect("register");
        let registry = Arc::new(registry);
        let enabled = Arc::new(registry.names());
        let limits = Limits {
            timeout: Duration::from_secs(5),
            concurrency: 1,
            max_output_bytes: 100,
        };
        let out: Vec<ToolOutcome> = run_calls(
            registry,
            enabled,
            ToolContext::detached(),
            vec![call("shouts", "{}")],
            limits,
        )
        .map(|(_, o)| o)
        .collect()
        .await;
        assert!(!out[0].success);
        let shown = format!("Error: {}", "é".repeat(46));
        assert_eq!(
            out[0].content,
            format!("{shown}\n[output truncated: 99 of 5007 bytes shown]")
        );
    }

    #[test]
    fn cut_respects_char_boundaries() {
        assert_eq!(cut("héllo".into(), 100), "héllo");
        assert!(cut("héllo".into(), 2).starts_with("h\n[output truncated: 1 of 6 bytes"));
    }
}

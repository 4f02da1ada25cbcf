//! [`McpManager`]: one supervisor task per configured server, which
//! connects, registers the server's tools, watches the connection and
//! restarts it with backoff.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::connection::{Connector, McpConnection, McpToolSpec};
use super::proxy::{McpProxyTool, ServerSlot};
use super::{McpError, McpOptions, tool_name, validate_server};
use crate::config::McpServerConfig;
use crate::tools::{SourceStatus, ToolRegistry};

/// Runs the configured MCP servers and keeps their tools in the registry.
///
/// Cheap to clone. The servers run until [`McpManager::shutdown`] or until
/// the last clone is dropped (which stops them without waiting).
#[derive(Clone)]
#[must_use = "dropping the manager stops the MCP servers"]
pub struct McpManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for McpManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpManager")
            .field("servers", &self.inner.servers.keys().collect::<Vec<_>>())
            .finish()
    }
}

struct Inner {
    servers: BTreeMap<String, Entry>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

enum Entry {
    /// The config entry was rejected; the text says why.
    Invalid(String),
    /// A supervisor runs; it takes commands here.
    Running(mpsc::Sender<Command>),
}

enum Command {
    /// Reconnect now; answer once the new connection is up (or failed).
    Refresh(oneshot::Sender<Result<(), String>>),
}

impl McpManager {
    /// Starts one supervisor per server and returns at once (must be called
    /// inside a Tokio runtime). Every server is reported as `connecting`
    /// right away; an entry that fails [`validate_server`], or repeats an
    /// earlier name, is reported `unavailable` (or only logged, for a
    /// repeated name) and not started.
    pub fn start(
        servers: &[McpServerConfig],
        registry: Arc<ToolRegistry>,
        options: McpOptions,
        connector: Arc<dyn Connector>,
    ) -> Self {
        let stop = CancellationToken::new();
        let mut entries = BTreeMap::new();
        let mut tasks = Vec::new();
        for server in servers {
            if entries.contains_key(&server.name) {
                tracing::error!(server = %server.name, "two MCP servers have this name; the second one is ignored");
                continue;
            }
            if let Err(e) = validate_server(server) {
                tracing::error!(server = %server.name, error = %e, "MCP server not started");
                registry.set_source_status(SourceStatus {
                    name: server.name.clone(),
                    status: "unavailable".into(),
                    error: Some(e.to_string()),
                    tools: Vec::new(),
                });
                entries.insert(server.name.clone(), Entry::Invalid(e.to_string()));
                continue;
            }
            let (commands, receiver) = mpsc::channel(8);
            let supervisor = Supervisor {
                slot: Arc::new(ServerSlot::new(&server.name)),
                config: server.clone(),
                registry: registry.clone(),
                connector: connector.clone(),
                options,
                registered: BTreeMap::new(),
                commands: receiver,
                stop: stop.clone(),
                waiting: Vec::new(),
                last_error: None,
                last_logged: None,
            };
            supervisor.report("connecting", None);
            tasks.push(tokio::spawn(supervisor.run()));
            entries.insert(server.name.clone(), Entry::Running(commands));
        }
        Self {
            inner: Arc::new(Inner {
                servers: entries,
                tasks: Mutex::new(tasks),
                stop,
            }),
        }
    }

    /// The configured server names.
    pub fn servers(&self) -> Vec<String> {
        self.inner.servers.keys().cloned().collect()
    }

    /// Drops the server's connection (if any) and connects again now,
    /// without waiting for the backoff; re-lists and re-registers its tools.
    /// Resolves once the new connection is up, or with why it failed (the
    /// supervisor then keeps retrying with backoff).
    pub async fn refresh(&self, name: &str) -> Result<(), McpError> {
        let commands = match self.inner.servers.get(name) {
            None => return Err(McpError::UnknownServer(name.to_string())),
            Some(Entry::Invalid(reason)) => return Err(McpError::RefreshFailed(reason.clone())),
            Some(Entry::Running(commands)) => commands,
        };
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command::Refresh(reply))
            .await
            .map_err(|_| McpError::ShutDown)?;
        answer
            .await
            .map_err(|_| McpError::ShutDown)?
            .map_err(McpError::RefreshFailed)
    }

    /// Stops every server: closes the connections (a child process gets its
    /// stdin closed, then SIGTERM, then SIGKILL), unregisters the tools and
    /// reports the servers `unavailable`. Resolves when all of that is done.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "MCP supervisor task failed");
            }
        }
    }
}

/// How a live connection ended.
enum Ended {
    Closed(String),
    Refresh,
    Stop,
}

/// Keeps one server connected and its tools registered.
struct Supervisor {
    config: McpServerConfig,
    registry: Arc<ToolRegistry>,
    connector: Arc<dyn Connector>,
    options: McpOptions,
    slot: Arc<ServerSlot>,
    /// The tools this server has in the registry, by registered name.
    registered: BTreeMap<String, Arc<McpProxyTool>>,
    commands: mpsc::Receiver<Command>,
    stop: CancellationToken,
    /// Refresh requests waiting for the next connection attempt.
    waiting: Vec<oneshot::Sender<Result<(), String>>>,
    last_error: Option<String>,
    /// The last failure logged at warn level (repeats go to debug).
    last_logged: Option<String>,
}

impl Supervisor {
    async fn run(mut self) {
        let mut backoff = self.options.backoff_initial;
        loop {
            self.report("connecting", self.last_error.clone());
            let attempt = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                attempt = connect_and_list(self.connector.as_ref(), &self.config, self.options.connect_timeout) => attempt,
            };
            match attempt {
                Ok((connection, specs)) => {
                    let problems = self.sync(specs);
                    self.slot.set_up(connection.clone());
                    self.last_error = None;
                    self.last_logged = None;
                    self.report("connected", problems);
                    tracing::info!(server = %self.config.name, tools = self.registered.len(), "MCP server connected");
                    self.answer(Ok(()));
                    let since = Instant::now();
                    match self.serve(&connection).await {
                        Ended::Stop => break,
                        Ended::Refresh => {
                            self.slot.set_down("reconnecting on request".into());
                            backoff = self.options.backoff_initial;
                            continue;
                        }
                        Ended::Closed(reason) => {
                            if since.elapsed() >= self.options.backoff_max {
                                backoff = self.options.backoff_initial;
                            }
                            tracing::warn!(
                                server = %self.config.name,
                                retry_in_ms = backoff.as_millis(),
                                "MCP server connection lost: {reason}"
                            );
                            self.down(reason);
                        }
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    if self.last_logged.as_deref() == Some(text.as_str()) {
                        tracing::debug!(server = %self.config.name, retry_in_ms = backoff.as_millis(), "MCP server still unavailable: {text}");
                    } else {
                        tracing::warn!(server = %self.config.name, retry_in_ms = backoff.as_millis(), "MCP server unavailable: {text}");
                        self.last_logged = Some(text.clone());
                    }
                    self.answer(Err(text.clone()));
                    self.down(text);
                }
            }
            let wait = backoff;
            backoff = (backoff * 2).min(self.options.backoff_max);
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(Command::Refresh(reply)) => {
                        self.waiting.push(reply);
                        backoff = self.options.backoff_initial;
                    }
                    None => break,
                },
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.finish();
    }

    /// Watches a live connection until it ends, re-listing the tools when
    /// the server says they changed.
    async fn serve(&mut self, connection: &Arc<dyn McpConnection>) -> Ended {
        // Far enough to never fire when checks are off.
        let every = self
            .options
            .health_interval
            .unwrap_or(Duration::from_secs(86_400 * 365));
        let mut next_check = tokio::time::Instant::now() + every;
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => {
                    connection.close().await;
                    return Ended::Stop;
                }
                command = self.commands.recv() => {
                    connection.close().await;
                    return match command {
                        Some(Command::Refresh(reply)) => {
                            self.waiting.push(reply);
                            Ended::Refresh
                        }
                        None => Ended::Stop,
                    };
                }
                reason = connection.closed() => return Ended::Closed(reason),
                _ = tokio::time::sleep_until(next_check) => {
                    next_check = tokio::time::Instant::now() + every;
                    if self.slot.busy() {
                        continue;
                    }
                    let check = tokio::select! {
                        _ = self.stop.cancelled() => continue,
                        check = connection.ping(self.options.health_timeout) => check,
                    };
                    if let Err(e) = check {
                        connection.close().await;
                        return Ended::Closed(format!("the health check failed: {e}"));
                    }
                }
                () = connection.tools_changed() => {
                    match tokio::time::timeout(self.options.connect_timeout, connection.list_tools()).await {
                        Ok(Ok(specs)) => {
                            let problems = self.sync(specs);
                            self.report("connected", problems);
                            tracing::info!(server = %self.config.name, tools = self.registered.len(), "MCP server's tools changed");
                        }
                        Ok(Err(e)) => tracing::warn!(server = %self.config.name, error = %e, "could not list the MCP server's tools again"),
                        Err(_) => tracing::warn!(server = %self.config.name, "the MCP server did not list its tools in time"),
                    }
                }
            }
        }
    }

    /// Marks the server down: its tools stay registered and fail with `reason`.
    fn down(&mut self, reason: String) {
        self.slot.set_down(reason.clone());
        self.last_error = Some(reason.clone());
        self.report("unavailable", Some(reason));
    }

    /// Unregisters the tools and reports the server stopped.
    fn finish(&mut self) {
        self.slot.set_down("the MCP manager is shut down".into());
        for name in std::mem::take(&mut self.registered).into_keys() {
            self.registry.unregister(&name);
        }
        self.report("unavailable", Some("stopped".into()));
        for reply in self.waiting.drain(..) {
            let _ = reply.send(Err(McpError::ShutDown.to_string()));
        }
        tracing::debug!(server = %self.config.name, "MCP server stopped");
    }

    /// Answers the refresh requests waiting for this attempt.
    fn answer(&mut self, result: Result<(), String>) {
        for reply in self.waiting.drain(..) {
            let _ = reply.send(result.clone());
        }
    }

    fn report(&self, status: &str, error: Option<String>) {
        self.registry.set_source_status(SourceStatus {
            name: self.config.name.clone(),
            status: status.to_string(),
            error,
            tools: self.registered.keys().cloned().collect(),
        });
    }

    /// Brings the registry in line with the server's tool list; returns the
    /// problems (skipped tools), if any.
    fn sync(&mut self, specs: Vec<McpToolSpec>) -> Option<String> {
        let server = self.config.name.as_str();
        let timeout = self.config.timeout_ms.map(Duration::from_millis);
        let mut problems = Vec::new();
        let mut wanted: BTreeMap<String, McpProxyTool> = BTreeMap::new();
        for spec in specs {
            if spec.name.is_empty() {
                problems.push("a tool without a name was skipped".to_string());
                continue;
            }
            let name = tool_name(server, &spec.name);
            if let Some(first) = wanted.get(&name) {
                problems.push(format!(
                    "tools {:?} and {:?} both become {name:?}; the second was skipped",
                    first.remote, spec.name
                ));
                continue;
            }
            wanted.insert(
                name.clone(),
                McpProxyTool::new(name, spec, server, timeout, self.slot.clone()),
            );
        }
        let stale: Vec<String> = self
            .registered
            .iter()
            .filter(|(name, old)| wanted.get(*name).is_none_or(|new| !old.same_as(new)))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            self.registry.unregister(&name);
            self.registered.remove(&name);
        }
        for (name, tool) in wanted {
            if self.registered.contains_key(&name) {
                continue;
            }
            let tool = Arc::new(tool);
            match self.registry.register(tool.clone()) {
                Ok(()) => {
                    self.registered.insert(name, tool);
                }
                Err(e) => problems.push(format!("tool {:?} skipped: {e}", tool.remote)),
            }
        }
        for problem in &problems {
            tracing::warn!(server = %server, "MCP tool problem: {problem}");
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

/// Connects and lists the tools, within `limit`.
async fn connect_and_list(
    connector: &dyn Connector,
    server: &McpServerConfig,
    limit: Duration,
) -> Result<(Arc<dyn McpConnection>, Vec<McpToolSpec>), McpError> {
    let attempt = async {
        let connection = connector.connect(server).await?;
        match connection.list_tools().await {
            Ok(specs) => Ok((connection, specs)),
            Err(e) => {
                connection.close().await;
                Err(e)
            }
        }
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(result) => result,
        Err(_) => Err(McpError::ConnectTimeout(limit.as_millis())),
    }
}

#[cfg(test)]
mod tests;

//! The processes under test: the mock upstream (this binary as `chatd-bench
//! mock`) and chatd (the release binary, with a generated config and a fresh
//! SQLite file in a temp dir). Both are killed when dropped.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::procfs;

/// A child process, stopped and reaped on drop.
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time in ms so far.
    pub fn cpu_ms(&self) -> f64 {
        procfs::cpu_ms(self.pid()).unwrap_or(f64::NAN)
    }

    /// Peak RSS in MiB so far.
    pub fn peak_rss_mb(&self) -> f64 {
        procfs::peak_rss_mb(self.pid()).unwrap_or(f64::NAN)
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    /// SIGTERM (std has no signal API; `kill` does it), up to 5 s to exit,
    /// then SIGKILL.
    fn drop(&mut self) {
        if self.alive() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed on drop (tempfile is only a dev-dependency).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> anyhow::Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "chatd-bench-{}-{label}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The mock upstream process.
pub struct Mock {
    pub proc: Proc,
    pub addr: SocketAddr,
}

/// Starts `chatd-bench mock` on a free port and waits for its address.
pub fn spawn_mock() -> anyhow::Result<Mock> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut child = Command::new(exe)
        .args(["mock", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn the mock upstream")?;
    let stdout = child.stdout.take().context("mock stdout")?;
    let proc = Proc { child };
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .context("read the mock's address")?;
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("the mock printed {line:?}, not `listening ADDR`"))?;
    Ok(Mock { proc, addr })
}

/// A running chatd.
pub struct Chatd {
    pub proc: Proc,
    pub addr: SocketAddr,
    log: PathBuf,
    // Last: the database goes after the process.
    _dir: TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `chatd` with a fresh database in a temp dir, its upstream the mock
/// at `upstream`, and waits until `/healthz` answers.
/// With `upstream_h2c`, chatd speaks HTTP/2 to the mock without TLS
/// (`llm.http2_prior_knowledge`).
pub async fn spawn_chatd(
    chatd: &Path,
    upstream: SocketAddr,
    log_level: &str,
    upstream_h2c: bool,
) -> anyhow::Result<Chatd> {
    let dir = TempDir::new("chatd")?;
    let port = free_port()?;
    let config = dir.path().join("chatd.toml");
    // Only long-standing keys: an unknown key is an error.
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\n\
             database_url = \"sqlite://{db}\"\n\
             [llm]\n\
             base_url = \"http://{upstream}/v1\"\n\
             model = \"bench-t10-d0-text\"\n\
             idle_timeout_ms = 120000\n\
             {h2c}",
            db = dir.path().join("chatd.db").display(),
            // Only when asked: older binaries do not know the key.
            h2c = if upstream_h2c {
                "http2_prior_knowledge = true\n"
            } else {
                ""
            },
        ),
    )
    .context("write the chatd config")?;
    let log = dir.path().join("chatd.log");
    // chatd logs to stdout (tracing_subscriber's default) or stderr: keep both.
    let log_file = std::fs::File::create(&log).context("chatd log file")?;
    let child = Command::new(chatd)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("RUST_LOG", log_level)
        // Loopback traffic to the mock must not go through a proxy.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file.try_clone().context("chatd log file")?))
        .stderr(Stdio::from(log_file))
        .spawn()
        .with_context(|| format!("spawn {}", chatd.display()))?;
    let mut proc = Proc { child };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let http = reqwest::Client::builder().no_proxy().build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("http://{addr}/healthz")).send().await
            && r.status().is_success()
        {
            break;
        }
        if !proc.alive() || Instant::now() > deadline {
            bail!(
                "chatd did not start; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Chatd {
        proc,
        addr,
        log,
        _dir: dir,
    })
}

/// With `CHATD_BENCH_KEEP_LOGS=DIR`, each chatd's log is copied into DIR
/// when it is stopped (its temp dir is removed).
impl Drop for Chatd {
    fn drop(&mut self) {
        if let Some(dir) = std::env::var_os("CHATD_BENCH_KEEP_LOGS") {
            let dir = PathBuf::from(dir);
            let name = format!("chatd-{}.log", self.proc.pid());
            if std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::copy(&self.log, dir.join(name)))
                .is_err()
            {
                eprintln!("chatd-bench: could not keep {}", self.log.display());
            }
        }
    }
}

impl Chatd {
    /// Lines of chatd's log that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

/// The chatd binary: `explicit`, else `chatd` next to this executable.
pub fn chatd_path(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("current_exe")?
            .parent()
            .context("no parent dir")?
            .join("chatd"),
    };
    if !path.is_file() {
        bail!(
            "no chatd binary at {} (build it with `cargo build --release -p chatd`, or pass --chatd PATH)",
            path.display()
        );
    }
    Ok(path)
}

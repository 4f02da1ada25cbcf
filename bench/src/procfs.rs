//! Reads a process's CPU time, memory and limits from /proc.

use std::sync::OnceLock;

/// Clock ticks per second of /proc/<pid>/stat times (`getconf CLK_TCK`,
/// 100 when that fails).
fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(100)
    })
}

/// User plus system CPU time of `pid` (all its threads, also exited ones) in
/// ms, from /proc/<pid>/stat fields 14 and 15. `None` if the process is gone.
pub fn cpu_ms(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it don't.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 * 1000.0 / clk_tck() as f64)
}

/// CPU time of this process in ms.
pub fn self_cpu_ms() -> Option<f64> {
    cpu_ms(std::process::id())
}

/// A `kB` field of /proc/<pid>/status (`VmHWM`: peak RSS, `VmRSS`: RSS now).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Peak RSS of `pid` in MiB.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    status_kb(pid, "VmHWM").map(|kb| kb as f64 / 1024.0)
}

/// (soft, hard) RLIMIT_NOFILE of this process; `unlimited` reads as u64::MAX.
pub fn nofile_limits() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut values = line["Max open files".len()..].split_whitespace().map(|v| {
        if v == "unlimited" {
            Some(u64::MAX)
        } else {
            v.parse().ok()
        }
    });
    Some((values.next()??, values.next()??))
}

/// The kernel's counters of connects a listener could not take, for this
/// network namespace (every listener in it: chatd's, the mock's), as
/// `nstat` shows them: `TcpExtListenOverflows` (a full accept queue),
/// `TcpExtListenDrops` (every dropped connect, overflows included) and
/// `TcpExtTCPSynRetrans` (SYNs sent again, each a client waiting about a
/// second). Read from the `TcpExt:` lines of `/proc/net/netstat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TcpCounters {
    pub listen_overflows: u64,
    pub listen_drops: u64,
    pub syn_retrans: u64,
}

impl TcpCounters {
    /// The counters now; `None` where `/proc/net/netstat` is missing or
    /// lacks them.
    pub fn read() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/net/netstat").ok()?)
    }

    /// From the text of `/proc/net/netstat`: a `TcpExt:` line of names
    /// followed by a `TcpExt:` line of values.
    fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines().filter_map(|l| l.strip_prefix("TcpExt:"));
        let (names, values) = (lines.next()?, lines.next()?);
        let table: std::collections::HashMap<&str, u64> = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .filter_map(|(n, v)| Some((n, v.parse().ok()?)))
            .collect();
        Some(Self {
            listen_overflows: *table.get("ListenOverflows")?,
            listen_drops: *table.get("ListenDrops")?,
            syn_retrans: *table.get("TCPSynRetrans")?,
        })
    }

    /// What happened between `before` and `self` (counters only grow).
    pub fn since(self, before: Self) -> Self {
        Self {
            listen_overflows: self.listen_overflows.saturating_sub(before.listen_overflows),
            listen_drops: self.listen_drops.saturating_sub(before.listen_drops),
            syn_retrans: self.syn_retrans.saturating_sub(before.syn_retrans),
        }
    }
}

/// Facts about the machine for the report: CPUs, memory, CPU model, kernel.
pub fn machine() -> serde_json::Value {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_kb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    });
    let model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
    });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string());
    let (soft, hard) = nofile_limits().unwrap_or((0, 0));
    serde_json::json!({
        "cpus": cpus,
        "mem_total_mb": mem_kb.map(|kb| kb / 1024),
        "cpu_model": model,
        "kernel": kernel,
        "nofile_soft": soft,
        "nofile_hard": hard,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        assert!(super::self_cpu_ms().is_some());
        assert!(super::peak_rss_mb(std::process::id()).is_some_and(|m| m > 0.0));
        let (soft, hard) = super::nofile_limits().expect("limits");
        assert!(soft <= hard);
    }

    #[test]
    fn reads_the_tcp_counters() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPSynRetrans\n\
                    TcpExt: 0 12 15 40\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        let c = super::TcpCounters::parse(text).expect("parsed");
        assert_eq!(
            c,
            super::TcpCounters {
                listen_overflows: 12,
                listen_drops: 15,
                syn_retrans: 40
            }
        );
        let later = super::TcpCounters {
            listen_overflows: 20,
            ..c
        };
        assert_eq!(later.since(c).listen_overflows, 8);
        assert_eq!(later.since(c).syn_retrans, 0);
        assert_eq!(super::TcpCounters::parse("IpExt: a\nIpExt: 1\n"), None);
    }
}

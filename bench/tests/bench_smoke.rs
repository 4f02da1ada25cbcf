//! The benchmark binary end to end at its smallest: `chatd-bench run --quick
//! --scenario smoke` against the debug `chatd` next to it in the workspace's
//! target dir. Checks that it runs, that no chat failed and that the JSON has
//! sane fields; never timings (those belong to the benchmark itself, see
//! BENCHMARKS.md).
//!
//! Cargo builds only this package's binaries for this test, so `chatd` must
//! have been built first: `cargo test` at the workspace root builds it (and
//! `.ci/run` runs that before `cargo test -p chatd-bench`), as does
//! `cargo test --workspace` or `cargo build -p chatd`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn number(v: &Value, path: &str) -> f64 {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {path} in {v}"))
}

/// The debug `chatd` binary: next to `chatd-bench` in the same target dir.
fn chatd() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_chatd-bench")).with_file_name("chatd");
    assert!(
        path.is_file(),
        "no chatd binary at {}: build it first (`cargo build -p chatd`, or `cargo test` at the workspace root)",
        path.display()
    );
    path
}

#[test]
fn smoke_scenario_reports_every_chat_delivered_and_stored() {
    let output = Command::new(env!("CARGO_BIN_EXE_chatd-bench"))
        .args(["run", "--quick", "--scenario", "smoke", "--repeat", "1", "--chatd"])
        .arg(chatd())
        .output()
        .expect("run chatd-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "chatd-bench exited with {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.len(), 2, "one scenario line and the summary: {stdout}");

    let scenario = &lines[0];
    assert_eq!(scenario["scenario"], "smoke", "{scenario}");
    assert!(scenario.get("error").is_none(), "{scenario}");
    let run = &scenario["runs"][0];
    for kind in ["direct", "chatd"] {
        let m = &run[kind];
        assert_eq!(m["target"], kind);
        assert_eq!(number(m, "requests_failed"), 0.0, "{kind}: {m}");
        assert_eq!(number(m, "requests_ok"), 8.0, "{kind}: {m}");
        assert!(number(m, "tokens") > 0.0, "{kind}: {m}");
        assert!(number(m, "tokens_per_s") > 0.0, "{kind}: {m}");
        for p in ["ttft_ms.p50", "ttft_ms.p90", "ttft_ms.p99", "gap_ms.p50", "gap_ms.p99"] {
            assert!(number(m, p) >= 0.0, "{kind} {p}: {m}");
        }
        assert!(number(m, "mock_cpu_ms") >= 0.0, "{kind}: {m}");
    }
    assert_eq!(number(run, "direct.tokens"), number(run, "chatd.tokens"));
    assert!(number(run, "chatd.chatd_cpu_ms") >= 0.0, "{run}");
    assert!(number(run, "chatd.chatd_peak_rss_mb") > 1.0, "{run}");
    assert!(run["direct"]["chatd_cpu_ms"].is_null(), "{run}");
    assert_eq!(number(run, "stored.ok"), 8.0, "every reply stored: {run}");
    assert_eq!(number(run, "chatd_log.database_is_locked"), 0.0);
    assert!(number(run, "ratios.tokens_per_s") > 0.0, "{run}");

    let summary = &lines[1]["summary"];
    assert_eq!(summary["all_pass"], true, "{summary}");
    assert_eq!(summary["failed"], serde_json::json!([]), "{summary}");
    let targets = summary["targets"].as_array().expect("targets");
    assert!(
        targets.iter().any(|t| t["name"] == "failures" && t["pass"] == true),
        "{summary}"
    );
    assert!(number(summary, "machine.cpus") >= 1.0, "{summary}");
}

//! The scenarios, how each is run (chatd and direct back to back, repeated),
//! and the targets checked on their medians.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::RunArgs;
use crate::client::{self, Job, Kind, LoadResult, Plan, Target};
use crate::mock::ReplySpec;
use crate::procfs::{self, TcpCounters};
use crate::report::{self, Check, RunMetrics, Usage, at, median, median_json};
use crate::servers::{self, Chatd, Mock};

/// Every scenario; `all` runs all but `smoke`.
pub const NAMES: [&str; 14] = [
    "smoke",
    "requests",
    "c1",
    "c64",
    "c512",
    "c2000",
    "c10000",
    "c10000_h1",
    "burst",
    "burst2000",
    "tool",
    "long_reply",
    "long_conversation",
    "sqlite500",
];

struct Ctx {
    chatd: PathBuf,
    repeats: usize,
    quick: bool,
    log: String,
}

/// Runs the scenarios `args` names, printing one JSON line per scenario and a
/// summary line. Returns whether every target passed.
pub async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let chatd = servers::chatd_path(args.chatd.as_deref())?;
    let names: Vec<&str> = if args.scenario == "all" {
        NAMES.iter().copied().filter(|n| *n != "smoke").collect()
    } else {
        args.scenario.split(',').map(str::trim).collect()
    };
    if let Some(unknown) = names.iter().find(|n| !NAMES.contains(n)) {
        bail!("unknown scenario {unknown:?}; known: all, {}", NAMES.join(", "));
    }
    let ctx = Ctx {
        chatd,
        repeats: args.repeat.unwrap_or(if args.quick { 1 } else { 3 }).max(1),
        quick: args.quick,
        log: args.chatd_log.clone(),
    };
    let started = Instant::now();
    let mut checks = Vec::new();
    for name in &names {
        eprintln!("chatd-bench: {name} ({} repeat(s))", ctx.repeats);
        let t = Instant::now();
        let mut out = match run_scenario(&ctx, name).await {
            Ok((json, scenario_checks)) => {
                checks.extend(scenario_checks);
                json
            }
            Err(e) => {
                checks.push(Check::at_most(name, "ran", 1.0, 0.0, "the scenario failed to run"));
                json!({"scenario": name, "error": format!("{e:#}")})
            }
        };
        out["elapsed_s"] = report::round(json!(t.elapsed().as_secs_f64()));
        println!("{out}");
    }
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.pass).collect();
    let summary = json!({"summary": {
        "scenarios": names,
        "repeats": ctx.repeats,
        "quick": ctx.quick,
        "machine": procfs::machine(),
        "chatd": ctx.chatd.display().to_string(),
        "elapsed_s": report::round(json!(started.elapsed().as_secs_f64())),
        "targets": checks.iter().map(Check::to_json).collect::<Vec<_>>(),
        "passed": checks.len() - failed.len(),
        "failed": failed.iter().map(|c| format!("{}.{}", c.scenario, c.name)).collect::<Vec<_>>(),
        "all_pass": failed.is_empty(),
    }});
    println!("{summary}");
    Ok(failed.is_empty())
}

async fn run_scenario(ctx: &Ctx, name: &str) -> anyhow::Result<(Value, Vec<Check>)> {
    let q = ctx.quick;
    let pick = |full: usize, quick: usize| if q { quick } else { full };
    // A mix of reply lengths and inter-token delays (0.5 to 0.8 s each).
    let mix_a = vec![
        ReplySpec::text(30, 20),
        ReplySpec::text(60, 10),
        ReplySpec::text(20, 40),
        ReplySpec::text(100, 5),
    ];
    // Slower replies for many streams (2 to 4.5 s each, 3 to 10 tokens/s):
    // 2,000 of them offer about 13,000 tokens/s.
    let mix_b = vec![
        ReplySpec::text(20, 100),
        ReplySpec::text(15, 200),
        ReplySpec::text(30, 150),
        ReplySpec::text(10, 300),
    ];
    let tool = ReplySpec {
        tokens: pick(50, 10),
        delay_ms: pick(10, 5) as u64,
        tool: true,
    };
    match name {
        "smoke" => {
            let load = Load {
                concurrency: 4,
                jobs_per_worker: 2,
                ramp_ms: 0,
                mix: vec![
                    ReplySpec::text(10, 2),
                    ReplySpec::text(5, 5),
                    ReplySpec {
                        tool: true,
                        ..ReplySpec::text(5, 2)
                    },
                ],
                verify: true,
                upstream_h2c: false,
            };
            standard(ctx, name, load, |_, _| Vec::new()).await
        }
        "requests" => {
            // Two-token replies as fast as the mock can: what a chat costs
            // besides its tokens (HTTP, storing the turn, the upstream
            // request, storing the reply).
            let load = Load::new(pick(64, 8), pick(20, 4), 0, vec![ReplySpec::text(2, 0)]);
            standard(ctx, name, load, |name, m| {
                vec![Check::at_most(
                    name,
                    "chatd_cpu_ms_per_request",
                    at(m, "median.chatd.chatd_cpu_ms_per_request"),
                    0.2,
                    "chatd CPU per chat of two tokens, ms (median of repeats)",
                )]
            })
            .await
        }
        "c1" => {
            let load = Load::new(1, pick(12, 4), 0, mix_a);
            standard(ctx, name, load, |_, _| Vec::new()).await
        }
        "c64" => {
            let load = Load::new(pick(64, 16), pick(10, 3), 500, mix_a);
            standard(ctx, name, load, |name, m| {
                vec![
                    Check::at_most(
                        name,
                        "ttft_p50_added_ms",
                        at(m, "median.ratios.ttft_p50_added_ms"),
                        1.0,
                        "time to first text delta, p50, chatd minus direct (median of repeats)",
                    ),
                    Check::at_most(
                        name,
                        "ttft_p99_added_ms",
                        at(m, "median.ratios.ttft_p99_added_ms"),
                        5.0,
                        "time to first text delta, p99, chatd minus direct (median of repeats)",
                    ),
                ]
            })
            .await
        }
        "c512" => {
            let load = Load::new(pick(512, 64), pick(2, 1), 500, vec![ReplySpec::text(pick(150, 20), 20)]);
            standard(ctx, name, load, |name, m| {
                vec![
                    Check::at_least(
                        name,
                        "tokens_per_s_ratio",
                        at(m, "median.ratios.tokens_per_s"),
                        0.97,
                        "delivered tokens/s, chatd over direct (median of repeats)",
                    ),
                    Check::at_most(
                        name,
                        "cpu_per_token_vs_mock",
                        at(m, "median.ratios.cpu_per_token_vs_mock"),
                        3.0,
                        "chatd CPU per relayed token over the mock's CPU per token (median of repeats)",
                    ),
                ]
            })
            .await
        }
        "c2000" => {
            let load = Load::new(pick(2000, 200), pick(3, 1), 1500, mix_b);
            standard(ctx, name, load, |_, _| Vec::new()).await
        }
        "c10000" | "c10000_h1" => {
            let concurrency = pick(10_000, 500);
            // All 10,000 open at once from the end of the 5 s ramp for 6 s;
            // one token a second each (10,000 tokens/s): the scenario is
            // about holding streams, not about token rate.
            let spec = if q {
                ReplySpec::text(5, 100)
            } else {
                ReplySpec::text(12, 1000)
            };
            let mut load = Load::new(concurrency, 1, pick(5000, 500) as u64, vec![spec]);
            // c10000 reaches the upstream as a hosted API is reached (HTTP/2,
            // streams sharing connections); c10000_h1 as a local server
            // that speaks only HTTP/1.1 (a connection per stream), whose
            // RSS is reported against the same limit.
            load.upstream_h2c = name == "c10000";
            standard(ctx, name, load, move |name, m| {
                vec![
                    Check::at_most(
                        name,
                        "chatd_peak_rss_mb",
                        at(m, "max.chatd_peak_rss_mb"),
                        RSS_LIMIT_MIB,
                        "chatd peak RSS (VmHWM), MiB, largest of the repeats (limit: 300 MB = 286.1 MiB)",
                    ),
                    Check::at_least(
                        name,
                        "streams_at_once",
                        at(m, "median.chatd.peak_in_flight"),
                        concurrency as f64,
                        "chats in flight at once through chatd",
                    ),
                ]
            })
            .await
        }
        "burst" | "burst2000" => {
            // Every client at the same instant (no ramp), each a new
            // conversation over its own HTTP/1.1 connection: a class at the
            // bell, or every frontend reconnecting after a deploy.
            let (load, p99_added, p50_added, ratio) = if name == "burst" {
                let load = Load::new(pick(512, 64), 2, 0, vec![ReplySpec::text(pick(100, 20), 20)]);
                (load, 100.0, Some(30.0), Some(0.95))
            } else {
                (
                    Load::new(pick(2000, 200), 1, 0, vec![ReplySpec::text(pick(50, 10), 50)]),
                    300.0,
                    None,
                    None,
                )
            };
            standard(ctx, name, load, move |name, m| {
                let mut checks = vec![
                    Check::at_most(
                        name,
                        "listen_overflows",
                        at(m, "max.listen_overflows_chatd"),
                        0.0,
                        "listen-queue overflows (TcpExtListenOverflows) during a chatd run, most of the repeats",
                    ),
                    Check::at_most(
                        name,
                        "ttft_p99_added_ms",
                        at(m, "median.ratios.ttft_p99_added_ms"),
                        p99_added,
                        "time to first text delta, p99, chatd minus direct (median of repeats)",
                    ),
                ];
                if let Some(limit) = p50_added {
                    checks.push(Check::at_most(
                        name,
                        "ttft_p50_added_ms",
                        at(m, "median.ratios.ttft_p50_added_ms"),
                        limit,
                        "time to first text delta, p50, chatd minus direct (median of repeats)",
                    ));
                }
                if let Some(limit) = ratio {
                    checks.push(Check::at_least(
                        name,
                        "tokens_per_s_ratio",
                        at(m, "median.ratios.tokens_per_s"),
                        limit,
                        "delivered tokens/s, chatd over direct (median of repeats)",
                    ));
                }
                checks
            })
            .await
        }
        "tool" => {
            let load = Load::new(pick(64, 8), pick(6, 2), 500, vec![tool]);
            standard(ctx, name, load, |_, _| Vec::new()).await
        }
        "sqlite500" => {
            let load = Load {
                concurrency: pick(500, 100),
                jobs_per_worker: 1,
                ramp_ms: 0,
                mix: vec![ReplySpec::text(100, 10)],
                verify: true,
                upstream_h2c: false,
            };
            standard(ctx, name, load, |_, _| Vec::new()).await
        }
        "long_reply" => long_reply(ctx).await,
        "long_conversation" => long_conversation(ctx).await,
        other => bail!("unknown scenario {other}"),
    }
}

/// C workers, each running `jobs_per_worker` chats in turn, picking replies
/// from `mix` round-robin (starting at its own offset).
/// The memory limit at 10,000 streams, 300 MB, in MiB (RSS is
/// read from /proc in KiB and reported in MiB).
const RSS_LIMIT_MIB: f64 = 300e6 / 1_048_576.0;

struct Load {
    concurrency: usize,
    jobs_per_worker: usize,
    ramp_ms: u64,
    mix: Vec<ReplySpec>,
    /// Check through the API that every reply is stored.
    verify: bool,
    /// chatd talks to the mock over HTTP/2 without TLS (h2c, the
    /// `llm.http2_prior_knowledge` setting) instead of one HTTP/1.1
    /// connection per stream.
    upstream_h2c: bool,
}

impl Load {
    fn new(concurrency: usize, jobs_per_worker: usize, ramp_ms: u64, mix: Vec<ReplySpec>) -> Self {
        Self {
            concurrency,
            jobs_per_worker,
            ramp_ms,
            mix,
            verify: false,
            upstream_h2c: false,
        }
    }

    fn plan(&self) -> Plan {
        let mix = self.mix.clone();
        let per = self.jobs_per_worker;
        Plan {
            concurrency: self.concurrency,
            jobs_per_worker: per,
            ramp: Duration::from_millis(self.ramp_ms),
            job: Arc::new(move |w, k| Job::new(mix[(w + k) % mix.len()], w * per + k)),
        }
    }
}

/// Whether the client must use HTTP/2 (h2c) to stay within the open-file
/// limit: over HTTP/1.1 chatd holds two descriptors per stream (client and
/// upstream connection).
/// `CHATD_BENCH_CLIENT_PROTOCOL=h2c|http1` overrides the choice.
fn needs_h2c(concurrency: usize) -> bool {
    match std::env::var("CHATD_BENCH_CLIENT_PROTOCOL").as_deref() {
        Ok("h2c") => return true,
        Ok("http1") => return false,
        _ => {}
    }
    let (soft, _) = procfs::nofile_limits().unwrap_or((1024, 1024));
    (2 * concurrency + 512) as u64 > soft
}

/// Lets sockets close and the servers go idle between runs.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Runs `plan` against chatd or the mock and reads the processes' CPU and
/// memory around it.
async fn measure(
    kind: Kind,
    mock: &Mock,
    chatd: &Chatd,
    plan: &Plan,
    h2c: bool,
) -> anyhow::Result<(RunMetrics, LoadResult)> {
    let addr: SocketAddr = match kind {
        Kind::Chatd => chatd.addr,
        Kind::Direct => mock.addr,
    };
    let target = Arc::new(Target::new(kind, addr, plan.concurrency, h2c)?);
    let (chatd0, mock0) = (chatd.proc.cpu_ms(), mock.proc.cpu_ms());
    let self0 = procfs::self_cpu_ms().unwrap_or(f64::NAN);
    let tcp0 = TcpCounters::read();
    let result = client::run_load(target, plan).await;
    // Connection teardown and trailing writes belong to the run.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let usage = Usage {
        tcp: tcp0.and_then(|before| Some(TcpCounters::read()?.since(before))),
        client_cpu_ms: procfs::self_cpu_ms().unwrap_or(f64::NAN) - self0,
        mock_cpu_ms: mock.proc.cpu_ms() - mock0,
        chatd_cpu_ms: (kind == Kind::Chatd).then(|| chatd.proc.cpu_ms() - chatd0),
        chatd_peak_rss_mb: (kind == Kind::Chatd).then(|| chatd.proc.peak_rss_mb()),
    };
    Ok((RunMetrics::new(kind, &result, usage), result))
}

/// One repeat: the load against the mock and through chatd, back to back
/// (alternating which goes first), then chatd's log and, if asked, the
/// stored replies.
async fn repeat_pair(
    ctx: &Ctx,
    mock: &Mock,
    chatd: &Chatd,
    plan: &Plan,
    h2c: bool,
    repeat: usize,
    verify: bool,
) -> anyhow::Result<(RunMetrics, RunMetrics, Value)> {
    let order = if repeat.is_multiple_of(2) {
        [Kind::Direct, Kind::Chatd]
    } else {
        [Kind::Chatd, Kind::Direct]
    };
    let (mut direct, mut via, mut chatd_result) = (None, None, None);
    for kind in order {
        settle().await;
        let (metrics, result) = measure(kind, mock, chatd, plan, h2c).await?;
        eprintln!(
            "  {:<6} ok {:>6} failed {:>4} {:>9.0} tokens/s start p50 {:>7.3} ms ttft p50 {:>7.3} ms p99 {:>7.3} ms tail p50 {:>7.3} ms",
            kind.name(),
            metrics.requests_ok,
            metrics.requests_failed,
            metrics.tokens_per_s,
            metrics.start_ms.p50,
            metrics.ttft_ms.p50,
            metrics.ttft_ms.p99,
            metrics.tail_ms.p50
        );
        match kind {
            Kind::Direct => direct = Some(metrics),
            Kind::Chatd => {
                via = Some(metrics);
                chatd_result = Some(result);
            }
        }
    }
    let (direct, via) = (direct.context("no direct run")?, via.context("no chatd run")?);
    let mut extra = json!({
        "chatd_log": {
            "database_is_locked": chatd.log_lines("database is locked").len(),
            "errors": chatd.log_lines(" ERROR ").len(),
            "warnings": chatd.log_lines(" WARN ").len(),
            "first_warnings": chatd.log_lines(" WARN ").into_iter().take(3).map(|l| l.chars().take(300).collect::<String>()).collect::<Vec<_>>(),
        }
    });
    if verify && let Some(result) = chatd_result {
        let target = Target::new(Kind::Chatd, chatd.addr, 1, false)?;
        let (ok, problems) = client::verify_stored(&target, &result.outcomes).await;
        extra["stored"] = json!({"ok": ok, "of": result.outcomes.len(), "problems": problems});
    }
    let _ = ctx;
    Ok((direct, via, extra))
}

/// A scenario of one load: per repeat a fresh chatd (fresh database, so its
/// peak RSS is this run's), one mock for all repeats. `checks` gets the
/// scenario name and `{median, max, runs}`.
async fn standard(
    ctx: &Ctx,
    name: &str,
    load: Load,
    checks: impl Fn(&str, &Value) -> Vec<Check>,
) -> anyhow::Result<(Value, Vec<Check>)> {
    let mock = servers::spawn_mock()?;
    let h2c = needs_h2c(load.concurrency);
    let plan = load.plan();
    let mut runs = Vec::new();
    for r in 0..ctx.repeats {
        let chatd = servers::spawn_chatd(&ctx.chatd, mock.addr, &ctx.log, load.upstream_h2c).await?;
        let (direct, via, extra) = repeat_pair(ctx, &mock, &chatd, &plan, h2c, r, load.verify).await?;
        let mut run = json!({
            "direct": direct.to_json(),
            "chatd": via.to_json(),
            "ratios": report::ratios(&direct, &via),
        });
        merge(&mut run, extra);
        runs.push(run);
    }
    let params = json!({
        "concurrency": load.concurrency,
        "jobs_per_worker": load.jobs_per_worker,
        "ramp_ms": load.ramp_ms,
        "mix": load.mix.iter().map(ReplySpec::model).collect::<Vec<_>>(),
        "client_protocol": if h2c { "h2c" } else { "http1" },
        "upstream_protocol": if load.upstream_h2c { "h2c" } else { "http1" },
    });
    let summary = summarize(name, params, &runs);
    let mut all = common_checks(name, &runs);
    all.extend(checks(name, &summary));
    Ok((summary, all))
}

/// The scenario's JSON: parameters, every run, the medians and the worst.
fn summarize(name: &str, params: Value, runs: &[Value]) -> Value {
    let mut median = median_json(runs);
    for kind in ["direct", "chatd"] {
        // Errors add up over the repeats rather than taking a median.
        let mut errors = serde_json::Map::new();
        for run in runs {
            for (message, n) in run[kind]["errors"].as_object().into_iter().flatten() {
                let sum = errors.get(message).and_then(Value::as_u64).unwrap_or(0) + n.as_u64().unwrap_or(0);
                errors.insert(message.clone(), json!(sum));
            }
        }
        if let Some(m) = median.get_mut(kind) {
            m["errors"] = Value::Object(errors);
        }
    }
    let max_of = |path: &str| {
        runs.iter()
            .map(|r| at(r, path))
            .filter(|x| !x.is_nan())
            .fold(f64::NAN, f64::max)
    };
    let sum_of = |path: &str| runs.iter().map(|r| at(r, path)).filter(|x| !x.is_nan()).sum::<f64>();
    json!({
        "scenario": name,
        "params": params,
        "repeats": runs.len(),
        "median": median,
        "max": report::round(json!({
            "chatd_peak_rss_mb": max_of("chatd.chatd_peak_rss_mb"),
            "ttft_p99_added_ms": max_of("ratios.ttft_p99_added_ms"),
            "listen_overflows_chatd": max_of("chatd.tcp.listen_overflows"),
            "listen_overflows_direct": max_of("direct.tcp.listen_overflows"),
        })),
        "total": {
            "requests_failed_chatd": sum_of("chatd.requests_failed"),
            "requests_failed_direct": sum_of("direct.requests_failed"),
            "database_is_locked": sum_of("chatd_log.database_is_locked"),
            "listen_overflows_chatd": sum_of("chatd.tcp.listen_overflows"),
            "listen_overflows_direct": sum_of("direct.tcp.listen_overflows"),
            "syn_retrans_chatd": sum_of("chatd.tcp.syn_retrans"),
            "syn_retrans_direct": sum_of("direct.tcp.syn_retrans"),
        },
        "runs": runs,
    })
}

/// Checks every scenario gets: no failed chat (through chatd or direct), no
/// "database is locked", and every reply stored when that was checked.
fn common_checks(name: &str, runs: &[Value]) -> Vec<Check> {
    let sum = |path: &str| runs.iter().map(|r| at(r, path)).filter(|x| !x.is_nan()).sum::<f64>();
    let mut checks = vec![
        Check::at_most(
            name,
            "failures",
            sum("chatd.requests_failed") + sum("direct.requests_failed"),
            0.0,
            "failed chats over every repeat, through chatd and direct",
        ),
        Check::at_most(
            name,
            "database_is_locked",
            sum("chatd_log.database_is_locked"),
            0.0,
            "'database is locked' lines in chatd's log",
        ),
    ];
    if runs.iter().all(|r| r.get("stored").is_some()) && !runs.is_empty() {
        checks.push(Check::at_most(
            name,
            "not_stored",
            sum("stored.of") - sum("stored.ok"),
            0.0,
            "replies not stored complete with the exact text",
        ));
    }
    checks
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

/// Cost does not grow with length: chatd's CPU per token for 20,000-token
/// replies against 1,000-token replies, both streamed as fast as the mock
/// can (no delay), two at a time.
async fn long_reply(ctx: &Ctx) -> anyhow::Result<(Value, Vec<Check>)> {
    let name = "long_reply";
    let mock = servers::spawn_mock()?;
    let (short_jobs, concurrency) = if ctx.quick { (5, 1) } else { (20, 2) };
    let short = Load::new(concurrency, short_jobs, 0, vec![ReplySpec::text(1000, 0)]).plan();
    let long = Load::new(concurrency, 1, 0, vec![ReplySpec::text(20_000, 0)]).plan();
    let mut runs = Vec::new();
    for r in 0..ctx.repeats {
        let chatd = servers::spawn_chatd(&ctx.chatd, mock.addr, &ctx.log, false).await?;
        let mut run = json!({});
        for (label, plan) in [("reply_1k", &short), ("reply_20k", &long)] {
            let (direct, via, extra) = repeat_pair(ctx, &mock, &chatd, plan, false, r, false).await?;
            run[label] =
                json!({"direct": direct.to_json(), "chatd": via.to_json(), "ratios": report::ratios(&direct, &via)});
            merge(&mut run[label], extra);
        }
        let ratio = at(&run, "reply_20k.chatd.chatd_cpu_ms_per_1k_tokens")
            / at(&run, "reply_1k.chatd.chatd_cpu_ms_per_1k_tokens");
        run["cpu_per_token_20k_over_1k"] = report::round(json!(ratio));
        runs.push(run);
    }
    let median = median_json(&runs);
    let mut checks = Vec::new();
    for label in ["reply_1k", "reply_20k"] {
        let sub: Vec<Value> = runs.iter().map(|r| r[label].clone()).collect();
        for mut c in common_checks(name, &sub) {
            c.name = format!("{label}_{}", c.name);
            checks.push(c);
        }
    }
    checks.push(Check::at_most(
        name,
        "cpu_per_token_20k_over_1k",
        at(&median, "cpu_per_token_20k_over_1k"),
        1.2,
        "chatd CPU per token, 20,000-token replies over 1,000-token replies (median of repeats)",
    ));
    let json = json!({
        "scenario": name,
        "params": {"concurrency": concurrency, "reply_1k": {"jobs_per_worker": short_jobs, "model": ReplySpec::text(1000, 0).model()},
                   "reply_20k": {"jobs_per_worker": 1, "model": ReplySpec::text(20_000, 0).model()}, "client_protocol": "http1"},
        "repeats": runs.len(),
        "median": median,
        "runs": runs,
    });
    Ok((json, checks))
}

/// Added time to first delta in a conversation with 1,000 earlier messages
/// against a fresh one. The long conversation is built through the API (500
/// turns with 20-token replies); the direct floor sends the same history to
/// the mock in the request, as chatd does.
async fn long_conversation(ctx: &Ctx) -> anyhow::Result<(Value, Vec<Check>)> {
    let name = "long_conversation";
    let turns = if ctx.quick { 50 } else { 500 };
    let measured = if ctx.quick { 5 } else { 20 };
    let mock = servers::spawn_mock()?;
    let chatd = servers::spawn_chatd(&ctx.chatd, mock.addr, &ctx.log, false).await?;
    let setup = Target::new(Kind::Chatd, chatd.addr, 1, false)?;
    let built = Instant::now();
    let filler = ReplySpec::text(20, 0);
    let first = client::run_job(&setup, 0, &Job::new(filler, 0)).await;
    let conversation = first
        .conversation_id
        .filter(|_| first.ok)
        .with_context(|| format!("first turn failed: {:?}", first.error))?;
    for n in 1..turns {
        let job = Job {
            conversation_id: Some(conversation),
            ..Job::new(filler, n)
        };
        let out = client::run_job(&setup, 0, &job).await;
        if !out.ok {
            bail!("setup turn {n} failed: {:?}", out.error);
        }
    }
    let history = Arc::new(client::history(&setup, conversation).await?);
    let earlier = history.len();
    let setup_s = built.elapsed().as_secs_f64();
    eprintln!("  built a conversation with {earlier} messages in {setup_s:.1} s");

    let spec = ReplySpec::text(5, 0);
    let fresh = Plan {
        concurrency: 1,
        jobs_per_worker: measured,
        ramp: Duration::ZERO,
        job: Arc::new(move |_, k| Job::new(spec, 10_000 + k)),
    };
    let long = Plan {
        concurrency: 1,
        jobs_per_worker: measured,
        ramp: Duration::ZERO,
        job: Arc::new(move |_, k| Job {
            conversation_id: Some(conversation),
            history: Some(history.clone()),
            ..Job::new(spec, 20_000 + k)
        }),
    };
    let mut runs = Vec::new();
    for r in 0..ctx.repeats {
        let mut run = json!({});
        for (label, plan) in [("fresh", &fresh), ("long", &long)] {
            let (direct, via, extra) = repeat_pair(ctx, &mock, &chatd, plan, false, r, false).await?;
            run[label] =
                json!({"direct": direct.to_json(), "chatd": via.to_json(), "ratios": report::ratios(&direct, &via)});
            merge(&mut run[label], extra);
        }
        let ratio = at(&run, "long.ratios.ttft_p50_added_ms") / at(&run, "fresh.ratios.ttft_p50_added_ms");
        run["added_ttft_long_over_fresh"] = report::round(json!(ratio));
        runs.push(run);
    }
    let medians = median_json(&runs);
    let mut checks = Vec::new();
    for label in ["fresh", "long"] {
        let sub: Vec<Value> = runs.iter().map(|r| r[label].clone()).collect();
        for mut c in common_checks(name, &sub) {
            c.name = format!("{label}_{}", c.name);
            checks.push(c);
        }
    }
    let ratios: Vec<f64> = runs.iter().map(|r| at(r, "added_ttft_long_over_fresh")).collect();
    checks.push(Check::at_most(
        name,
        "added_ttft_long_over_fresh",
        median(&ratios),
        2.0,
        "added time to first delta (p50) with 1,000 earlier messages over that with none (median of repeats)",
    ));
    let json = json!({
        "scenario": name,
        "params": {"earlier_messages": earlier, "setup_turns": turns, "setup_s": report::round(json!(setup_s)),
                   "measured_per_kind": measured, "model": spec.model(), "client_protocol": "http1",
                   "note": "each measured chat in the long conversation adds 2 messages"},
        "repeats": runs.len(),
        "median": medians,
        "runs": runs,
    });
    Ok((json, checks))
}

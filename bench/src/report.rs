//! Numbers out of a load run, medians over repeats, and target checks.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use crate::client::{Kind, LoadResult};
use crate::procfs::TcpCounters;

/// Percentiles in ms.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Pcts {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Pcts {
    /// Nearest-rank percentiles of `us` (microseconds), in ms; NaN when empty.
    fn of(mut us: Vec<u64>) -> Self {
        us.sort_unstable();
        let at = |p: f64| {
            if us.is_empty() {
                return f64::NAN;
            }
            let rank = ((p / 100.0) * us.len() as f64).ceil() as usize;
            us[rank.clamp(1, us.len()) - 1] as f64 / 1000.0
        };
        Self {
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
        }
    }
}

/// CPU and memory read from /proc around one load run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub client_cpu_ms: f64,
    pub mock_cpu_ms: f64,
    /// `None` for a direct run.
    pub chatd_cpu_ms: Option<f64>,
    pub chatd_peak_rss_mb: Option<f64>,
    /// The kernel's dropped connects during the run, if it tells.
    pub tcp: Option<TcpCounters>,
}

/// The numbers of one load run against one target.
#[derive(Debug, Clone, Serialize)]
pub struct RunMetrics {
    pub target: &'static str,
    pub requests_ok: usize,
    pub requests_failed: usize,
    /// Failure messages (first 120 characters) and how often each occurred.
    pub errors: BTreeMap<String, usize>,
    /// Text deltas received.
    pub tokens: usize,
    pub wall_s: f64,
    pub tokens_per_s: f64,
    /// Request sent to chatd's `start` event (user message and assistant
    /// row committed) or, direct, to the response headers.
    pub start_ms: Pcts,
    /// Request sent to first text delta.
    pub ttft_ms: Pcts,
    /// Between consecutive text deltas of one chat.
    pub gap_ms: Pcts,
    /// From the last text delta to the end of the reply (`done`, `[DONE]`).
    pub tail_ms: Pcts,
    pub peak_in_flight: usize,
    /// The load client's own CPU (it shares the machine).
    pub client_cpu_ms: f64,
    pub mock_cpu_ms: f64,
    pub mock_cpu_ms_per_1k_tokens: f64,
    pub chatd_cpu_ms: Option<f64>,
    pub chatd_cpu_ms_per_1k_tokens: Option<f64>,
    /// chatd's CPU per chat (request), ms: what a chat costs besides its
    /// tokens shows in scenarios of short replies.
    pub chatd_cpu_ms_per_request: Option<f64>,
    pub chatd_peak_rss_mb: Option<f64>,
    /// Listen-queue overflows, dropped connects and SYN retransmissions in
    /// this network namespace during the run (`nstat`'s TcpExt counters).
    pub tcp: Option<TcpCounters>,
}

impl RunMetrics {
    pub fn new(kind: Kind, result: &LoadResult, usage: Usage) -> Self {
        let mut errors = BTreeMap::new();
        for e in result.outcomes.iter().filter_map(|o| o.error.as_ref()) {
            *errors.entry(e.chars().take(120).collect()).or_insert(0) += 1;
        }
        let tokens: usize = result.outcomes.iter().map(|o| o.tokens).sum();
        let ttft = result.outcomes.iter().filter_map(|o| o.ttft_us).collect();
        let start = result.outcomes.iter().filter_map(|o| o.start_us).collect();
        let tail = result.outcomes.iter().filter_map(|o| o.tail_us).collect();
        let gaps = result
            .outcomes
            .iter()
            .flat_map(|o| o.gaps_us.iter().map(|g| u64::from(*g)))
            .collect();
        let per_1k = |ms: f64| {
            if tokens == 0 {
                f64::NAN
            } else {
                ms * 1000.0 / tokens as f64
            }
        };
        let wall_s = result.wall.as_secs_f64();
        let ok = result.outcomes.iter().filter(|o| o.ok).count();
        Self {
            target: kind.name(),
            requests_ok: ok,
            requests_failed: result.outcomes.len() - ok,
            errors,
            tokens,
            wall_s,
            tokens_per_s: tokens as f64 / wall_s,
            start_ms: Pcts::of(start),
            ttft_ms: Pcts::of(ttft),
            gap_ms: Pcts::of(gaps),
            tail_ms: Pcts::of(tail),
            peak_in_flight: result.peak_in_flight,
            client_cpu_ms: usage.client_cpu_ms,
            mock_cpu_ms: usage.mock_cpu_ms,
            mock_cpu_ms_per_1k_tokens: per_1k(usage.mock_cpu_ms),
            chatd_cpu_ms: usage.chatd_cpu_ms,
            chatd_cpu_ms_per_1k_tokens: usage.chatd_cpu_ms.map(per_1k),
            chatd_cpu_ms_per_request: usage.chatd_cpu_ms.map(|ms| ms / result.outcomes.len().max(1) as f64),
            chatd_peak_rss_mb: usage.chatd_peak_rss_mb,
            tcp: usage.tcp,
        }
    }

    pub fn to_json(&self) -> Value {
        round(serde_json::to_value(self).unwrap_or(Value::Null))
    }
}

/// chatd against direct, for one repeat.
pub fn ratios(direct: &RunMetrics, chatd: &RunMetrics) -> Value {
    let cpu = chatd.chatd_cpu_ms_per_1k_tokens.unwrap_or(f64::NAN);
    round(json!({
        "tokens_per_s": chatd.tokens_per_s / direct.tokens_per_s,
        "ttft_p50_added_ms": chatd.ttft_ms.p50 - direct.ttft_ms.p50,
        "ttft_p99_added_ms": chatd.ttft_ms.p99 - direct.ttft_ms.p99,
        "start_p50_added_ms": chatd.start_ms.p50 - direct.start_ms.p50,
        "gap_p50_added_ms": chatd.gap_ms.p50 - direct.gap_ms.p50,
        "gap_p99_added_ms": chatd.gap_ms.p99 - direct.gap_ms.p99,
        // chatd's CPU per relayed token over the mock's CPU per token while
        // it served the same chunks to chatd (and to the client, direct).
        "cpu_per_token_vs_mock": cpu / chatd.mock_cpu_ms_per_1k_tokens,
        "cpu_per_token_vs_mock_direct": cpu / direct.mock_cpu_ms_per_1k_tokens,
    }))
}

/// Rounds every float in `v` to 3 decimals (NaN and infinities become null).
pub fn round(v: Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            serde_json::Number::from_f64((x * 1000.0).round() / 1000.0).map_or(Value::Null, Value::Number)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(round).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, round(v))).collect()),
        other => other,
    }
}

/// The median of `values` (NaN ignored; NaN if none).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Field-by-field median of JSON objects of the same shape: numbers become
/// their median, objects recurse, anything else is taken from the first.
pub fn median_json(items: &[Value]) -> Value {
    let Some(first) = items.first() else { return Value::Null };
    match first {
        Value::Object(map) => Value::Object(
            map.keys()
                .map(|k| {
                    let column: Vec<Value> = items.iter().map(|i| i.get(k).cloned().unwrap_or(Value::Null)).collect();
                    (k.clone(), median_json(&column))
                })
                .collect(),
        ),
        Value::Number(_) | Value::Null if items.iter().any(Value::is_number) => {
            let numbers: Vec<f64> = items.iter().filter_map(Value::as_f64).collect();
            // Counts stay whole numbers when every run gave a whole number.
            if items.iter().all(|i| i.is_u64() || i.is_null()) {
                let m = median(&numbers);
                if m.fract() == 0.0 {
                    return json!(m as u64);
                }
            }
            round(json!(median(&numbers)))
        }
        other => other.clone(),
    }
}

/// A number at `path` (`a.b.c`) in `v`, NaN when missing.
pub fn at(v: &Value, path: &str) -> f64 {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN)
}

/// One target, checked.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub scenario: String,
    pub value: f64,
    /// `<=` or `>=`.
    pub op: &'static str,
    pub limit: f64,
    pub pass: bool,
    pub what: String,
}

impl Check {
    pub fn at_most(scenario: &str, name: &str, value: f64, limit: f64, what: &str) -> Self {
        Self::new(scenario, name, value, "<=", limit, value <= limit, what)
    }

    pub fn at_least(scenario: &str, name: &str, value: f64, limit: f64, what: &str) -> Self {
        Self::new(scenario, name, value, ">=", limit, value >= limit, what)
    }

    fn new(scenario: &str, name: &str, value: f64, op: &'static str, limit: f64, pass: bool, what: &str) -> Self {
        Self {
            name: name.to_string(),
            scenario: scenario.to_string(),
            value,
            op,
            limit,
            pass,
            what: what.to_string(),
        }
    }

    pub fn to_json(&self) -> Value {
        round(serde_json::to_value(self).unwrap_or(Value::Null))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians() {
        let p = Pcts::of((1..=100).map(|ms| ms * 1000).collect());
        assert_eq!((p.p50, p.p90, p.p99), (50.0, 90.0, 99.0));
        assert!(Pcts::of(vec![]).p50.is_nan());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let m = median_json(&[
            json!({"a": 1, "b": {"c": 1.5}}),
            json!({"a": 3, "b": {"c": 2.5}}),
            json!({"a": 2, "b": {"c": 0.5}}),
        ]);
        assert_eq!(m, json!({"a": 2, "b": {"c": 1.5}}));
        assert_eq!(at(&m, "b.c"), 1.5);
    }
}

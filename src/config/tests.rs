//! Tests of loading and validating the configuration.

use super::*;
use std::collections::BTreeMap;
use std::collections::HashMap;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

#[test]
fn defaults_match_the_documented_values() {
    let c = Config::load_with_env(None, env(&[])).expect("defaults load");
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.llm.base_url, "http://127.0.0.1:11434/v1");
    assert_eq!(c.llm.idle_timeout_ms, 60_000);
    assert_eq!(c.chat.max_iterations, 20);
    assert_eq!(c.chat.on_disconnect, OnDisconnect::Continue);
    assert_eq!(c.http.max_body_bytes, 1024 * 1024);
}

#[test]
fn file_then_env_override() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:9000\"\n[llm]\nmodel = \"from-file\"\napi_key = \"file-key\"\n[chat]\nmax_iterations = 3\non_disconnect = \"cancel\"\n",
    )
    .expect("write");
    let c = Config::load_with_env(
        Some(&path),
        env(&[
            ("CHATD_LLM_MODEL", "from-env"),
            ("CHATD_LLM_IDLE_TIMEOUT_MS", "1500"),
            ("OPENAI_API_KEY", "ignored-because-file-sets-one"),
        ]),
    )
    .expect("load");
    assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
    assert_eq!(c.llm.model, "from-env");
    assert_eq!(c.llm.idle_timeout_ms, 1500);
    assert_eq!(c.llm.api_key, "file-key");
    assert_eq!(c.chat.max_iterations, 3);
    assert_eq!(c.chat.on_disconnect, OnDisconnect::Cancel);
}

#[test]
fn openai_api_key_is_the_fallback() {
    let c = Config::load_with_env(None, env(&[("OPENAI_API_KEY", "sk-x")])).expect("load");
    assert_eq!(c.llm.api_key, "sk-x");
    let c =
        Config::load_with_env(None, env(&[("OPENAI_API_KEY", "sk-x"), ("CHATD_LLM_API_KEY", "sk-y")])).expect("load");
    assert_eq!(c.llm.api_key, "sk-y");
}

#[test]
fn the_example_file_loads_and_matches_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let c = Config::load_with_env(Some(&path), env(&[])).expect("example loads");
    let d = Config::default();
    assert_eq!(
        format!("{c:?}"),
        format!("{d:?}"),
        "config.example.toml documents the defaults"
    );
}

#[test]
fn unknown_keys_and_bad_values_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[llm]\nmodle = \"typo\"\n").expect("write");
    let err = Config::load_with_env(Some(&path), env(&[])).expect_err("typo rejected");
    assert!(err.to_string().contains("modle"), "{err}");

    let err = Config::load_with_env(None, env(&[("CHATD_MAX_ITERATIONS", "0")])).expect_err("zero rejected");
    assert!(err.to_string().contains("max_iterations"), "{err}");

    let err = Config::load_with_env(None, env(&[("CHATD_LISTEN", "nope")])).expect_err("bad address rejected");
    assert!(err.to_string().contains("listen"), "{err}");
}

#[test]
fn the_listen_backlog_is_8192_and_checked() {
    let c = Config::load_with_env(None, env(&[])).expect("defaults load");
    assert_eq!(c.http.listen_backlog, 8_192);
    let c = Config::load_with_env(None, env(&[("CHATD_HTTP_LISTEN_BACKLOG", "65535")])).expect("65535 loads");
    assert_eq!(c.http.listen_backlog, 65_535);
    for bad in ["0", "65536"] {
        let err = Config::load_with_env(None, env(&[("CHATD_HTTP_LISTEN_BACKLOG", bad)])).expect_err("out of range");
        assert_eq!(
            err.to_string(),
            "configuration: http.listen_backlog must be between 1 and 65535",
            "{bad}"
        );
    }
}

fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn resilience_defaults() {
    let c = Config::load_with_env(None, env(&[])).expect("defaults load");
    assert_eq!(c.llm.first_chunk_timeout_ms, 60_000);
    assert_eq!(c.llm.idle_timeout_ms, 60_000);
    assert_eq!(c.llm.connect_timeout_ms, 10_000);
    assert_eq!(c.llm.max_attempts, 3);
    assert_eq!(c.llm.retry_base_ms, 250);
    assert_eq!(c.llm.retry_max_ms, 8_000);
    assert!(c.llm.fallback);
    assert!(c.providers.is_empty());
}

#[test]
fn without_providers_llm_is_the_default_provider() {
    let c = Config::load_with_env(
        None,
        env(&[
            ("CHATD_LLM_BASE_URL", "https://api.example.com/v1"),
            ("CHATD_LLM_API_KEY", "sk-env"),
            ("CHATD_LLM_MODEL", "gpt-x"),
        ]),
    )
    .expect("load");
    assert_eq!(
        c.effective_providers(),
        vec![ProviderConfig {
            name: DEFAULT_PROVIDER.to_string(),
            base_url: "https://api.example.com/v1".to_string(),
            api_key: Some("sk-env".to_string()),
            api_key_env: None,
            models: vec![],
            default_model: Some("gpt-x".to_string()),
            headers: BTreeMap::new(),
        }]
    );
    let c = Config::load_with_env(None, env(&[])).expect("load");
    let p = &c.effective_providers()[0];
    assert_eq!((p.api_key.as_deref(), p.default_model.as_deref()), (None, None));
}

#[test]
fn providers_load_in_order_with_keys_from_the_env_function() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        r#"
[llm]
model = "global"
max_attempts = 5
retry_base_ms = 10
retry_max_ms = 20
fallback = false
first_chunk_timeout_ms = 1234

[[providers]]
name = "local"
base_url = "http://127.0.0.1:11434/v1"
models = ["llama3", "qwen3"]

[[providers]]
name = "router"
base_url = "https://openrouter.example/api/v1"
api_key_env = "ROUTER_KEY"
default_model = "qwen3"
headers = { "X-Title" = "chatd", "HTTP-Referer" = "https://example.com" }
"#,
    );
    let c = Config::load_with_env(Some(&path), env(&[("ROUTER_KEY", "sk-router")])).expect("load");
    assert_eq!(
        (c.llm.max_attempts, c.llm.retry_base_ms, c.llm.retry_max_ms),
        (5, 10, 20)
    );
    assert!(!c.llm.fallback);
    assert_eq!(c.llm.first_chunk_timeout_ms, 1234);
    let names: Vec<_> = c.effective_providers().into_iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        ["local", "router"],
        "[llm] is not a provider once [[providers]] exist"
    );
    let local = &c.providers[0];
    assert_eq!(local.models, ["llama3", "qwen3"]);
    assert_eq!((local.api_key.as_deref(), local.default_model.as_deref()), (None, None));
    let router = &c.providers[1];
    assert_eq!(router.api_key.as_deref(), Some("sk-router"));
    assert_eq!(router.api_key_env.as_deref(), Some("ROUTER_KEY"));
    assert_eq!(router.default_model.as_deref(), Some("qwen3"));
    let headers: Vec<(String, String)> = router
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    assert_eq!(
        headers,
        [
            ("http-referer".to_string(), "https://example.com".to_string()),
            ("x-title".to_string(), "chatd".to_string())
        ]
    );
}

#[test]
fn bad_providers_are_rejected_with_the_field_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = "[[providers]]\nname = \"a\"\nbase_url = \"http://a\"\n";
    let cases: Vec<(String, &str)> = vec![
        ("[[providers]]\nbase_url = \"http://a\"\n".into(), "name"),
        ("[[providers]]\nname = \"a\"\n".into(), "base_url"),
        (format!("{p}modle = \"x\"\n"), "modle"),
        (
            "[[providers]]\nname = \"a\"\nbase_url = \"ftp://a\"\n".into(),
            "base_url",
        ),
        ("[[providers]]\nname = \" \"\nbase_url = \"http://a\"\n".into(), "name"),
        (format!("{p}{p}"), "used twice"),
        (format!("{p}api_key = \"k\"\napi_key_env = \"K\"\n"), "not both"),
        (format!("{p}api_key_env = \"UNSET\"\n"), "UNSET"),
        (format!("{p}models = [\"\"]\n"), "models"),
        (format!("{p}default_model = \"\"\n"), "default_model"),
        (format!("{p}headers = {{ \"bad header\" = \"x\" }}\n"), "header name"),
        (
            format!("{p}headers = {{ \"x-ok\" = \"line\\nbreak\" }}\n"),
            "header value",
        ),
        (
            format!("{p}headers = {{ \"Content-Type\" = \"text/plain\" }}\n"),
            "set by chatd",
        ),
        (
            format!("{p}api_key = \"k\"\nheaders = {{ \"Authorization\" = \"x\" }}\n"),
            "Authorization",
        ),
        ("[llm]\nmax_attempts = 0\n".into(), "max_attempts"),
        ("[llm]\nretry_base_ms = 9000\n".into(), "retry_base_ms"),
        ("[llm]\nfirst_chunk_timeout_ms = 0\n".into(), "timeouts"),
        ("[llm]\nfallbak = true\n".into(), "fallbak"),
    ];
    for (text, needle) in &cases {
        let path = write(&dir, text);
        let err = Config::load_with_env(Some(&path), env(&[])).expect_err(text);
        assert!(err.to_string().contains(needle), "{text:?}: {err}");
    }
}

#[test]
fn an_authorization_header_alone_is_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        "[[providers]]\nname = \"a\"\nbase_url = \"http://a\"\nheaders = { \"Authorization\" = \"Token t\" }\n",
    );
    let c = Config::load_with_env(Some(&path), env(&[])).expect("load");
    assert_eq!(c.providers[0].headers.len(), 1);
}

#[test]
fn llm_transport_is_auto_or_reqwest_from_the_file_or_the_env() {
    let c = Config::load_with_env(None, env(&[])).expect("defaults load");
    assert_eq!(c.llm.transport, LlmTransport::Auto);
    let c = Config::load_with_env(None, env(&[("CHATD_LLM_TRANSPORT", "reqwest")])).expect("load");
    assert_eq!(c.llm.transport, LlmTransport::Reqwest);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, "[llm]\ntransport = \"reqwest\"\n");
    let c = Config::load_with_env(Some(&path), env(&[])).expect("load");
    assert_eq!(c.llm.transport, LlmTransport::Reqwest);
    let path = write(&dir, "[llm]\ntransport = \"h2\"\n");
    let err = Config::load_with_env(Some(&path), env(&[])).expect_err("unknown transport");
    let text = err.to_string();
    assert!(
        text.contains("unknown variant `h2`, expected `auto` or `reqwest`") && text.contains("llm.transport"),
        "{text}"
    );
    let err = Config::load_with_env(None, env(&[("CHATD_LLM_TRANSPORT", "inline")])).expect_err("unknown transport");
    assert!(err.to_string().contains("`reqwest`"), "{err}");
}

#[test]
fn concurrent_streams_defaults_to_32_and_must_be_at_least_1() {
    let c = Config::load_with_env(None, env(&[])).expect("defaults load");
    assert_eq!(c.limits.concurrent_streams, 32);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, "[limits]\nconcurrent_streams = 4\n");
    let c = Config::load_with_env(Some(&path), env(&[])).expect("load");
    assert_eq!(c.limits.concurrent_streams, 4);
    let path = write(&dir, "[limits]\nconcurrent_streams = 0\n");
    let err = Config::load_with_env(Some(&path), env(&[])).expect_err("zero streams");
    assert!(err.to_string().contains("limits.concurrent_streams"), "{err}");
}

#[test]
fn fetch_approval_after_private_reads_is_on_by_default_and_can_be_turned_off() {
    let c = Config::load_with_env(None, env(&[])).expect("defaults load");
    assert!(c.tools.fetch.approve_after_private_read);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, "[tools.fetch]\napprove_after_private_read = false\n");
    let c = Config::load_with_env(Some(&path), env(&[])).expect("load");
    assert!(!c.tools.fetch.approve_after_private_read);
    let path = write(&dir, "[tools.fetch]\napprove_after_private_read = \"sometimes\"\n");
    let err = Config::load_with_env(Some(&path), env(&[])).expect_err("not a boolean");
    assert!(err.to_string().contains("approve_after_private_read"), "{err}");
}

#[test]
fn reply_bounds_have_defaults_and_refuse_zero() {
    let c = Config::load_with_env(None, env(&[])).expect("defaults load");
    assert_eq!(c.chat.max_tokens_ceiling, 32_768);
    assert_eq!(c.chat.default_max_tokens, None);
    assert_eq!(c.chat.max_reply_ms, 600_000);
    assert_eq!(c.chat.writer_queue_events, 65_536);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        "[chat]\nmax_tokens_ceiling = 100\ndefault_max_tokens = 100\nmax_reply_ms = 1\nwriter_queue_events = 1\n",
    );
    let c = Config::load_with_env(Some(&path), env(&[])).expect("load");
    assert_eq!(
        (
            c.chat.max_tokens_ceiling,
            c.chat.default_max_tokens,
            c.chat.max_reply_ms
        ),
        (100, Some(100), 1)
    );
    let cases = [
        (
            "[chat]\nmax_tokens_ceiling = 0\n",
            "chat.max_tokens_ceiling must be at least 1",
        ),
        ("[chat]\nmax_reply_ms = 0\n", "chat.max_reply_ms must be at least 1"),
        (
            "[chat]\nwriter_queue_events = 0\n",
            "chat.writer_queue_events must be at least 1",
        ),
        (
            "[chat]\ndefault_max_tokens = 0\n",
            "chat.default_max_tokens must be at least 1",
        ),
        (
            "[chat]\nmax_tokens_ceiling = 10\ndefault_max_tokens = 11\n",
            "chat.default_max_tokens (11) must be at most chat.max_tokens_ceiling (10)",
        ),
    ];
    for (text, needle) in cases {
        let path = write(&dir, text);
        let err = Config::load_with_env(Some(&path), env(&[])).expect_err(text);
        assert!(err.to_string().contains(needle), "{text:?}: {err}");
    }
}

mod support;

// The OpenAPI document at GET /api/openapi.json: served without a key, OpenAPI
// 3.1, every route with its methods, the bearer scheme, the SSE event schemas,
// every $ref resolving, every schema a valid JSON Schema, and real responses
// (JSON bodies, error bodies and SSE event payloads) valid against the schemas
// the document gives them.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use support::TestApp;
use support::mock::{self, MockUpstream};
use support::sse::{SseEvent, read_events};

const KEY: &str = "openapi-test-key-0123456789";

/// Every route of the router and its methods (besides OPTIONS, which CORS
/// answers). A new route must be added here and to the document.
const ROUTES: &[(&str, &[&str])] = &[
    ("/api/chat", &["post"]),
    ("/api/chat/{message_id}/events", &["get"]),
    ("/api/chat/{message_id}/cancel", &["post"]),
    ("/api/chat/{message_id}/approve", &["post"]),
    ("/api/conversations", &["get", "post"]),
    ("/api/conversations/{id}", &["get", "patch", "delete"]),
    ("/api/conversations/{id}/messages", &["get"]),
    ("/api/conversations/{id}/messages/{message_id}", &["get"]),
    ("/api/tools", &["get"]),
    ("/api/models", &["get"]),
    ("/healthz", &["get"]),
    ("/readyz", &["get"]),
    ("/metrics", &["get"]),
    ("/api/openapi.json", &["get"]),
];

/// Routes open without a key.
const OPEN: &[&str] = &["/healthz", "/readyz", "/metrics", "/api/openapi.json"];

/// SSE event names and the schemas of their `data:`.
const SSE_EVENTS: &[(&str, &str)] = &[
    ("start", "StartEvent"),
    ("process_step", "StepEvent"),
    ("sources", "SourcesEvent"),
    ("done", "DoneEvent"),
    ("error", "ErrorEvent"),
];

const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

async fn fetch_document(app: &TestApp) -> Value {
    let response = app
        .http
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .expect("GET /api/openapi.json");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ascii").to_string();
    assert!(content_type.starts_with("application/json"), "{content_type}");
    response.json().await.expect("the document is JSON")
}

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if METHODS.contains(&method.as_str()) {
                out.push((path.clone(), method.clone(), op));
            }
        }
    }
    out
}

/// SseEvent's variants: event name -> payload schema name.
fn sse_payloads(doc: &Value) -> BTreeMap<String, String> {
    doc["components"]["schemas"]["SseEvent"]["oneOf"]
        .as_array()
        .expect("SseEvent is a oneOf")
        .iter()
        .map(|variant| {
            let properties = &variant["properties"];
            let event = properties["event"]["enum"][0].as_str().expect("event name").to_string();
            let payload = properties["data"]["contentSchema"]["$ref"]
                .as_str()
                .expect("contentSchema ref");
            (event, payload.rsplit('/').next().expect("name").to_string())
        })
        .collect()
}

/// Resolves a local `$ref` (`#/a/b/c`) in `doc`.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.push(v.as_str().expect("$ref is a string").to_string());
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn document_is_open_openapi_3_1_and_lists_every_route() {
    let app = TestApp::start_tweaked("http://127.0.0.1:9/v1", |c| c.api_keys = vec![KEY.to_string()]).await;
    // Open without a key, while the API itself needs one.
    let doc = fetch_document(&app).await;
    let (status, _) = app.get("/api/tools").await;
    assert_eq!(status, 401, "the API needs a key");

    let version = doc["openapi"].as_str().expect("openapi field");
    assert!(version.starts_with("3.1"), "OpenAPI 3.1, got {version}");
    assert_eq!(doc["info"]["title"], "chatd");
    assert!(doc["info"]["version"].is_string());

    // Exactly the router's routes and methods.
    let want: BTreeSet<(String, String)> = ROUTES
        .iter()
        .flat_map(|(p, ms)| ms.iter().map(move |m| (p.to_string(), m.to_string())))
        .collect();
    let got: BTreeSet<(String, String)> = operations(&doc).into_iter().map(|(p, m, _)| (p, m)).collect();
    assert_eq!(got, want);

    let mut ids = BTreeSet::new();
    for (path, method, op) in operations(&doc) {
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: operationId"));
        assert!(
            ids.insert(id.to_string()),
            "{method} {path}: duplicate operationId {id}"
        );
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path}: a success response"
        );
        // Path parameters are declared, as UUIDs.
        for segment in path.split('/').filter(|s| s.starts_with('{')) {
            let name = segment.trim_matches(['{', '}']);
            let param = op["parameters"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name && p["in"] == "path"))
                .unwrap_or_else(|| panic!("{method} {path}: path parameter {name}"));
            assert_eq!(param["required"], true);
            assert_eq!(param["schema"]["format"], "uuid", "{method} {path}: {name}");
        }
        // Every error answer is the error body.
        for (status, response) in responses {
            if !status.starts_with('2') {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
        if OPEN.contains(&path.as_str()) {
            assert_eq!(op["security"], json!([]), "{method} {path} is open");
            assert!(!responses.contains_key("401"), "{method} {path} is open");
        } else {
            assert!(
                op.get("security").is_none(),
                "{method} {path} uses the global bearer scheme"
            );
            for status in ["401", "429", "500"] {
                assert!(responses.contains_key(status), "{method} {path}: {status}");
            }
        }
        if op.get("requestBody").is_some() {
            assert!(op["requestBody"]["content"]["application/json"]["schema"]["$ref"].is_string());
            for status in ["400", "413", "415"] {
                assert!(responses.contains_key(status), "{method} {path}: {status}");
            }
        }
    }
    for (path, method, status) in [
        ("/api/chat", "post", "409"),
        ("/api/chat", "post", "422"),
        ("/api/chat", "post", "503"),
        ("/api/chat/{message_id}/cancel", "post", "409"),
        ("/api/chat/{message_id}/approve", "post", "409"),
        ("/api/conversations", "get", "422"),
        ("/api/conversations/{id}", "delete", "204"),
        ("/api/conversations", "post", "201"),
        ("/readyz", "get", "503"),
    ] {
        assert!(
            doc["paths"][path][method]["responses"].get(status).is_some(),
            "{method} {path}: {status}"
        );
    }
    assert!(
        doc["paths"]["/api/chat"]["post"]["responses"]["429"]["headers"]
            .get("Retry-After")
            .is_some()
    );
}

#[tokio::test]
async fn security_scheme_is_bearer_and_global() {
    let app = TestApp::start("http://127.0.0.1:9/v1").await;
    let doc = fetch_document(&app).await;
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(doc["security"], json!([{"bearer": []}]));
}

#[tokio::test]
async fn sse_event_schemas_are_described() {
    let app = TestApp::start("http://127.0.0.1:9/v1").await;
    let doc = fetch_document(&app).await;
    let schemas = &doc["components"]["schemas"];
    let payloads = SSE_EVENTS.iter().map(|(_, payload)| payload);
    for name in payloads.chain(&["SseEvent", "StepKind", "UsageTotals", "ErrorBody"]) {
        assert!(schemas.get(*name).is_some(), "schema {name}");
    }
    // SseEvent: one of {event, id, data} per event name, `data` being JSON text
    // of that event's payload schema.
    let want: BTreeMap<String, String> = SSE_EVENTS.iter().map(|(e, p)| (e.to_string(), p.to_string())).collect();
    assert_eq!(sse_payloads(&doc), want);
    for variant in schemas["SseEvent"]["oneOf"].as_array().expect("oneOf") {
        assert_eq!(variant["required"], json!(["event", "id", "data"]));
        assert_eq!(variant["properties"]["id"]["type"], "string");
        assert_eq!(variant["properties"]["data"]["type"], "string");
        assert_eq!(variant["properties"]["data"]["contentMediaType"], "application/json");
    }
    let description = schemas["SseEvent"]["description"].as_str().expect("description");
    for word in ["id:", "event:", "start", "process_step", "sources", "done", "error"] {
        assert!(description.contains(word), "SseEvent description mentions {word}");
    }
    // Step kinds by their `type`.
    let kinds: BTreeSet<&str> = schemas["StepKind"]["oneOf"]
        .as_array()
        .expect("StepKind is a oneOf")
        .iter()
        .map(|v| v["properties"]["type"]["enum"][0].as_str().expect("type"))
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["thinking", "text", "tool_call", "tool_approval", "tool_result"])
    );
    for (path, method) in [("/api/chat", "post"), ("/api/chat/{message_id}/events", "get")] {
        let ok = &doc["paths"][path][method]["responses"]["200"]["content"];
        assert_eq!(
            ok["text/event-stream"]["schema"]["$ref"], "#/components/schemas/SseEvent",
            "{method} {path}"
        );
    }
    // Times are RFC 3339 strings.
    for schema in ["Conversation", "Message"] {
        for field in ["created_at", "updated_at"] {
            let property = &schemas[schema]["properties"][field];
            assert_eq!(property["type"], "string", "{schema}.{field}");
            assert_eq!(property["format"], "date-time", "{schema}.{field}");
        }
    }
}

#[tokio::test]
async fn every_ref_resolves_and_every_schema_is_valid_json_schema() {
    let app = TestApp::start("http://127.0.0.1:9/v1").await;
    let doc = fetch_document(&app).await;
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 50, "the document uses references ({})", refs.len());
    for reference in &refs {
        assert!(
            reference.starts_with("#/components/schemas/"),
            "{reference} points into components"
        );
        assert!(resolve(&doc, reference).is_some(), "{reference} resolves");
    }
    // Every component is referenced from somewhere (no stale schemas), and
    // every one is a valid JSON Schema (draft 2020-12, OpenAPI 3.1's dialect).
    let used: BTreeSet<&str> = refs.iter().filter_map(|r| r.rsplit('/').next()).collect();
    for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
        assert!(used.contains(name.as_str()), "schema {name} is used");
        if let Err(e) = jsonschema::draft202012::meta::validate(schema) {
            panic!("schema {name} is not valid JSON Schema: {e}");
        }
    }
}

/// Validates instances against the document's component schemas.
struct Schemas {
    doc: Value,
    validators: BTreeMap<String, jsonschema::Validator>,
}

impl Schemas {
    fn new(doc: Value) -> Self {
        Self {
            doc,
            validators: BTreeMap::new(),
        }
    }

    /// Panics with the errors when `instance` does not match schema `name`.
    fn check(&mut self, name: &str, instance: &Value) {
        let errors = self.errors(name, instance);
        assert!(errors.is_empty(), "{name} does not match {instance}: {errors:#?}");
    }

    fn errors(&mut self, name: &str, instance: &Value) -> Vec<String> {
        let doc = &self.doc;
        let validator = self.validators.entry(name.to_string()).or_insert_with(|| {
            // The document is the root, so `#/components/schemas/...` resolves.
            let mut root = json!({"components": doc["components"].clone()});
            root["$ref"] = json!(format!("#/components/schemas/{name}"));
            jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&root)
                .unwrap_or_else(|e| panic!("schema {name}: {e}"))
        });
        validator.iter_errors(instance).map(|e| e.to_string()).collect()
    }

    /// Checks one received SSE event: the envelope against `SseEvent`, the
    /// payload against the schema SseEvent gives its name.
    fn check_event(&mut self, event: &SseEvent) {
        let envelope = json!({"event": event.event, "id": event.id, "data": event.data.to_string()});
        self.check("SseEvent", &envelope);
        let payload = sse_payloads(&self.doc)
            .remove(&event.event)
            .unwrap_or_else(|| panic!("event {} is documented", event.event));
        self.check(&payload, &event.data);
    }

    /// The schema name of the JSON response `status` of `method path`.
    fn response_schema(&self, path: &str, method: &str, status: u16) -> String {
        let content = &self.doc["paths"][path][method]["responses"][status.to_string()]["content"];
        let reference = content["application/json"]["schema"]["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} {status} is documented as JSON"));
        reference.rsplit('/').next().expect("name").to_string()
    }

    /// Sends the request and checks the JSON answer against the document.
    async fn call(&mut self, app: &TestApp, method: &str, template: &str, path: &str, body: Option<Value>) -> Value {
        let method_upper: reqwest::Method = method.to_uppercase().parse().expect("method");
        let mut request = app.http.request(method_upper, app.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let documented = &self.doc["paths"][template][method]["responses"][status.to_string()];
        assert!(documented.is_object(), "{method} {path}: status {status} is documented");
        if status == 204 {
            return Value::Null;
        }
        let json: Value = response.json().await.expect("JSON body");
        let name = self.response_schema(template, method, status);
        self.check(&name, &json);
        json
    }
}

#[tokio::test]
async fn real_responses_and_events_match_their_schemas() {
    let upstream = MockUpstream::start().await;
    // Reply 1: reasoning, a tool call, then text (two rounds).
    upstream.push(mock::sse(&[
        mock::role(),
        mock::reasoning_content("Let me compute."),
        mock::tool_piece(Some(0), Some("call_1"), Some("calculator"), r#"{"expression":"6*7"}"#),
        mock::finish("tool_calls"),
        mock::usage(10, 5),
    ]));
    upstream.push(mock::text_reply(&["It is ", "42."], 20, 3));
    // Reply 2: the upstream fails (an `error` event, an `error` on the message).
    upstream.push(mock::status(400, &[], r#"{"error":{"message":"bad request"}}"#));
    let app = TestApp::start(&upstream.base_url).await;
    let mut schemas = Schemas::new(fetch_document(&app).await);
    // The checks bite: wrong types, missing fields and bad formats fail.
    let conversation = json!({"id": "0190c0d2-0000-7000-8000-000000000000", "created_at": "2024-05-01T10:00:00.000Z",
        "updated_at": "2024-05-01T10:00:00.000Z", "title": null});
    schemas.check("Conversation", &conversation);
    for (field, bad) in [
        ("id", json!("nope")),
        ("created_at", json!("yesterday")),
        ("title", json!(3)),
    ] {
        let mut wrong = conversation.clone();
        wrong[field] = bad;
        assert!(!schemas.errors("Conversation", &wrong).is_empty(), "{wrong}");
    }
    let bad_step = json!({"id": "step-0", "index": 0, "type": "nope"});
    assert!(!schemas.errors("StepEvent", &bad_step).is_empty());
    let bad_name = json!({"event": "nope", "id": "1", "data": "{}"});
    assert!(!schemas.errors("SseEvent", &bad_name).is_empty());
    let bad_id = json!({"event": "start", "id": "x", "data": "{}"});
    assert!(!schemas.errors("SseEvent", &bad_id).is_empty());
    assert!(!schemas.errors("ErrorBody", &json!({"error": {"code": "x"}})).is_empty());

    // The SSE payloads of a whole reply.
    let response = app.post_chat(&json!({"message": "What is 6*7?"})).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = read_events(response, usize::MAX).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"start"));
    assert_eq!(names.last(), Some(&"done"));
    assert!(names.contains(&"process_step"), "{names:?}");
    for event in &events {
        schemas.check_event(event);
    }
    let conversation_id = events[0].data["conversation_id"].as_str().expect("id").to_string();
    let message_id = events[0].message_id();
    app.wait_final(&message_id).await;

    // Resumed in accumulated mode (`content` instead of `delta`).
    let resumed = app
        .http
        .get(app.url(&format!("/api/chat/{message_id}/events?stream_mode=accumulated")))
        .send()
        .await
        .expect("resume");
    assert_eq!(resumed.status(), 200);
    for event in read_events(resumed, usize::MAX).await {
        schemas.check_event(&event);
    }

    // A failing reply: `error` event, and a stored `error`.
    let failed = app
        .post_chat(&json!({"message": "Again", "conversation_id": conversation_id}))
        .await;
    let failed = read_events(failed, usize::MAX).await;
    assert_eq!(failed.last().map(|e| e.event.as_str()), Some("error"));
    for event in &failed {
        schemas.check_event(event);
    }
    app.wait_final(&failed[0].message_id()).await;

    // JSON routes, successes and errors.
    let c = "/api/conversations/{id}";
    let list = schemas
        .call(&app, "get", "/api/conversations", "/api/conversations?limit=1", None)
        .await;
    assert!(list["next_before"].is_string());
    schemas
        .call(&app, "get", "/api/conversations", "/api/conversations?limit=0", None)
        .await;
    schemas
        .call(
            &app,
            "get",
            "/api/conversations",
            "/api/conversations?before=nope",
            None,
        )
        .await;
    let messages = schemas
        .call(
            &app,
            "get",
            "/api/conversations/{id}/messages",
            &format!("/api/conversations/{conversation_id}/messages"),
            None,
        )
        .await;
    assert_eq!(messages["next_before"], Value::Null);
    let messages = messages["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 4);
    assert!(messages.iter().all(|m| m.get("steps").is_none()));
    assert!(messages[1]["tool_calls"].is_array());
    assert!(messages[3]["error"].is_object());
    let m = "/api/conversations/{id}/messages";
    let paged = schemas
        .call(
            &app,
            "get",
            m,
            &format!("/api/conversations/{conversation_id}/messages?limit=3&steps=true"),
            None,
        )
        .await;
    assert!(paged["next_before"].is_string());
    assert!(paged["messages"][0]["steps"].as_array().is_some_and(|s| s.len() >= 3));
    for query in ["limit=0", "before=nope", &format!("before={message_id}&limit=201")] {
        schemas
            .call(
                &app,
                "get",
                m,
                &format!("/api/conversations/{conversation_id}/messages?{query}"),
                None,
            )
            .await;
    }
    let one = "/api/conversations/{id}/messages/{message_id}";
    let reply = schemas
        .call(
            &app,
            "get",
            one,
            &format!("/api/conversations/{conversation_id}/messages/{message_id}"),
            None,
        )
        .await;
    assert!(reply["steps"].as_array().is_some_and(|s| s.len() >= 3));
    for path in [
        format!("/api/conversations/{conversation_id}/messages/{conversation_id}"),
        format!("/api/conversations/{conversation_id}/messages/nope"),
    ] {
        schemas.call(&app, "get", one, &path, None).await;
    }
    schemas
        .call(&app, "get", c, &format!("/api/conversations/{conversation_id}"), None)
        .await;
    let created = schemas
        .call(
            &app,
            "post",
            "/api/conversations",
            "/api/conversations",
            Some(json!({"title": "t", "temperature": 0.5})),
        )
        .await;
    let id = created["id"].as_str().expect("id").to_string();
    for patch in [json!({"title": null}), json!({"temperature": 9}), json!({"nope": 1})] {
        schemas
            .call(&app, "patch", c, &format!("/api/conversations/{id}"), Some(patch))
            .await;
    }
    schemas
        .call(&app, "delete", c, &format!("/api/conversations/{id}"), None)
        .await;
    schemas
        .call(&app, "get", c, &format!("/api/conversations/{id}"), None)
        .await;
    schemas
        .call(&app, "get", c, "/api/conversations/not-a-uuid", None)
        .await;
    schemas
        .call(
            &app,
            "post",
            "/api/chat/{message_id}/cancel",
            &format!("/api/chat/{message_id}/cancel"),
            None,
        )
        .await;
    schemas
        .call(
            &app,
            "post",
            "/api/chat/{message_id}/approve",
            &format!("/api/chat/{message_id}/approve"),
            Some(json!({"tool_call_id": "call_1", "approved": true})),
        )
        .await;
    schemas
        .call(&app, "post", "/api/chat", "/api/chat", Some(json!({"message": " "})))
        .await;
    schemas
        .call(
            &app,
            "post",
            "/api/chat",
            "/api/chat",
            Some(json!({"message": "x", "tools": 3})),
        )
        .await;
    schemas.call(&app, "get", "/api/tools", "/api/tools", None).await;
    schemas.call(&app, "get", "/api/models", "/api/models", None).await;
    schemas.call(&app, "get", "/healthz", "/healthz", None).await;
    schemas.call(&app, "get", "/readyz", "/readyz", None).await;
    schemas
        .call(&app, "get", "/api/openapi.json", "/api/openapi.json", None)
        .await;
}

//! Turns an MCP `tools/call` result into the text the model sees.
//!
//! Parts are joined with newlines: text parts as they are; images and audio
//! described (`[image: image/png, 1234 bytes]`); embedded text resources
//! included after a header line; binary resources and resource links
//! described. With no content at all, `structuredContent` is shown as JSON.

use serde_json::Value;

use super::connection::CallOutcome;

/// The model-facing text of a call result.
pub fn render(outcome: &CallOutcome) -> String {
    let parts: Vec<String> = outcome.content.iter().map(render_part).collect();
    if parts.is_empty() {
        return match &outcome.structured {
            Some(structured) => structured.to_string(),
            None if outcome.is_error => "the tool failed without saying why".to_string(),
            None => String::new(),
        };
    }
    parts.join("\n")
}

fn str_field<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// One content block as text.
fn render_part(part: &Value) -> String {
    let mime = |v: &Value| str_field(v, "mimeType").unwrap_or("unknown type").to_string();
    match str_field(part, "type").unwrap_or("") {
        "text" => str_field(part, "text").unwrap_or("").to_string(),
        kind @ ("image" | "audio") => {
            let bytes = decoded_len(str_field(part, "data").unwrap_or(""));
            format!("[{kind}: {}, {bytes} bytes]", mime(part))
        }
        "resource" => {
            let resource = part.get("resource").unwrap_or(&Value::Null);
            let uri = str_field(resource, "uri").unwrap_or("(no uri)");
            match (str_field(resource, "text"), str_field(resource, "blob")) {
                (Some(text), _) => match str_field(resource, "mimeType") {
                    Some(m) => format!("[resource: {uri}, {m}]\n{text}"),
                    None => format!("[resource: {uri}]\n{text}"),
                },
                (None, Some(blob)) => format!("[resource: {uri}, {}, {} bytes]", mime(resource), decoded_len(blob)),
                (None, None) => format!("[resource: {uri}]"),
            }
        }
        "resource_link" => {
            let uri = str_field(part, "uri").unwrap_or("(no uri)");
            let name = str_field(part, "name").unwrap_or("");
            match str_field(part, "mimeType") {
                Some(m) => format!("[resource link: {name} <{uri}>, {m}]"),
                None => format!("[resource link: {name} <{uri}>]"),
            }
        }
        "" => format!("[content without a type: {part}]"),
        other => format!("[{other} content]"),
    }
}

/// The number of bytes a base64 text decodes to (whitespace ignored).
fn decoded_len(data: &str) -> usize {
    let symbols: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let padding = symbols.iter().rev().take_while(|b| **b == b'=').count();
    let n = symbols.len() - padding;
    n / 4 * 3 + (n % 4 * 3) / 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn outcome(content: Vec<Value>) -> CallOutcome {
        CallOutcome {
            content,
            ..Default::default()
        }
    }

    #[test]
    fn base64_lengths() {
        assert_eq!(decoded_len(""), 0);
        assert_eq!(decoded_len("aGk="), 2); // "hi"
        assert_eq!(decoded_len("aGVsbG8="), 5); // "hello"
        assert_eq!(decoded_len("aGVs\nbG8h"), 6); // "hello!"
        assert_eq!(decoded_len("aGVsbG8"), 5); // unpadded
    }

    #[test]
    fn parts_are_joined_and_described() {
        let text = render(&outcome(vec![
            json!({"type": "text", "text": "first"}),
            json!({"type": "image", "data": "aGVsbG8=", "mimeType": "image/png"}),
            json!({"type": "audio", "data": "aGk=", "mimeType": "audio/wav"}),
            json!({"type": "resource", "resource": {"uri": "file:///a.txt", "mimeType": "text/plain", "text": "inside"}}),
            json!({"type": "resource", "resource": {"uri": "file:///b.bin", "mimeType": "application/octet-stream", "blob": "aGk="}}),
            json!({"type": "resource_link", "uri": "file:///c.md", "name": "c.md"}),
            json!({"type": "hologram"}),
        ]));
        assert_eq!(
            text,
            "first\n[image: image/png, 5 bytes]\n[audio: audio/wav, 2 bytes]\n[resource: file:///a.txt, text/plain]\ninside\n\
             [resource: file:///b.bin, application/octet-stream, 2 bytes]\n[resource link: c.md <file:///c.md>]\n[hologram content]"
        );
    }

    #[test]
    fn empty_content_falls_back_to_structured_content() {
        let mut out = outcome(vec![]);
        assert_eq!(render(&out), "");
        out.structured = Some(json!({"n": 1}));
        assert_eq!(render(&out), r#"{"n":1}"#);
        let failed = CallOutcome {
            is_error: true,
            ..Default::default()
        };
        assert_eq!(render(&failed), "the tool failed without saying why");
    }
}

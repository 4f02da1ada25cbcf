//! Bounds the nesting depth of HTML before it is parsed ([`flatten`]).
//!
//! Parsing and rendering HTML cost more than linear time in its nesting
//! depth (the parser scans its stack of open elements for many tags, the
//! renderer re-wraps every line once per enclosing block): 500 KB of nested
//! elements took about 50 s of CPU. A linear pre-scan therefore drops the
//! start tags (and matching end tags) of elements that would open deeper
//! than a limit, so their content joins the element at the limit: the text
//! stays, only the structure below the limit is flattened.
//!
//! The scan is a tokenizer-level approximation of the HTML tree builder; it
//! may count an element as open when the parser would have closed it
//! implicitly (which only flattens earlier), while the parser never sees
//! more than the limit of elements the scan kept open, plus the few it
//! inserts itself (`html`, `body`, `tbody`, ...).

/// Elements without content: they never open a level.
const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr",
];

/// Elements whose content is raw text up to their end tag (no tags inside).
const RAW_TEXT: &[&str] = &[
    "script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes",
];

/// Start tags that close an open `<p>` right before them.
const CLOSES_P: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "details",
    "div",
    "dl",
    "fieldset",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "ul",
];

/// How many of the innermost dropped elements an end tag is matched
/// against (keeps the scan linear whatever the input).
const DROPPED_LOOKBACK: usize = 16;

/// `html` with at most `max_depth` elements open at any point: start tags
/// that would open deeper are left out, and so are the end tags that close
/// them. Comments, doctypes, raw-text elements (`script`, `style`, ...) and
/// text are copied as they are. Linear in the length of `html`.
pub(super) fn flatten(html: &[u8], max_depth: usize) -> Vec<u8> {
    let mut scan = Scan {
        out: Vec::with_capacity(html.len()),
        open: Vec::new(),
        dropped: Vec::new(),
        max_depth,
    };
    let mut i = 0;
    while i < html.len() {
        let Some(lt) = find(html, i, b"<") else {
            scan.out.extend_from_slice(&html[i..]);
            break;
        };
        scan.out.extend_from_slice(&html[i..lt]);
        i = scan.markup(html, lt);
    }
    scan.out
}

struct Scan {
    out: Vec<u8>,
    /// The elements kept open, outermost first (at most `max_depth`).
    open: Vec<String>,
    /// The elements left out because they opened too deep, outermost first.
    dropped: Vec<String>,
    max_depth: usize,
}

impl Scan {
    /// Handles the markup starting at `html[lt] == b'<'`; returns where the
    /// text after it starts.
    fn markup(&mut self, html: &[u8], lt: usize) -> usize {
        let rest = &html[lt..];
        let copy_to = |out: &mut Vec<u8>, end: usize| {
            out.extend_from_slice(&html[lt..end]);
            end
        };
        if rest.starts_with(b"<!--") {
            let end = find(html, lt + 4, b"-->").map_or(html.len(), |e| e + 3);
            return copy_to(&mut self.out, end);
        }
        if rest.starts_with(b"<!") || rest.starts_with(b"<?") {
            let end = find(html, lt + 2, b">").map_or(html.len(), |e| e + 1);
            return copy_to(&mut self.out, end);
        }
        let closing = rest.starts_with(b"</");
        let name_start = lt + if closing { 2 } else { 1 };
        if !html.get(name_start).is_some_and(u8::is_ascii_alphabetic) {
            // Not a tag: a lone `<` is text.
            self.out.push(b'<');
            return lt + 1;
        }
        let name_end = html[name_start..]
            .iter()
            .position(|b| b.is_ascii_whitespace() || *b == b'/' || *b == b'>')
            .map_or(html.len(), |p| name_start + p);
        let name = String::from_utf8_lossy(&html[name_start..name_end]).to_ascii_lowercase();
        let end = tag_end(html, name_end);
        if closing {
            self.end_tag(&name, &html[lt..end]);
            return end;
        }
        let self_closing = end >= 2 && html[end - 1] == b'>' && html[end - 2] == b'/';
        self.start_tag(&name, &html[lt..end], self_closing);
        if RAW_TEXT.contains(&name.as_str()) {
            // Copy the raw text verbatim up to (not including) its end tag.
            let close = find_end_tag(html, end, &name).unwrap_or(html.len());
            self.out.extend_from_slice(&html[end..close]);
            return close;
        }
        end
    }

    fn start_tag(&mut self, name: &str, tag: &[u8], self_closing: bool) {
        let foreign = self.open.iter().any(|n| n == "svg" || n == "math");
        if VOID.contains(&name) || RAW_TEXT.contains(&name) || (self_closing && foreign) {
            // No level opens (raw text elements hold no tags).
            if self.dropped.is_empty() || VOID.contains(&name) || RAW_TEXT.contains(&name) {
                self.out.extend_from_slice(tag);
            }
            return;
        }
        self.close_implied(name);
        if self.dropped.is_empty() && self.open.len() < self.max_depth {
            self.open.push(name.to_string());
            self.out.extend_from_slice(tag);
        } else {
            self.dropped.push(name.to_string());
        }
    }

    /// Pops the innermost element when `name` closes it implicitly (a new
    /// `<li>` closes the open `<li>`, a block closes a `<p>`, ...).
    fn close_implied(&mut self, name: &str) {
        let stack = if self.dropped.is_empty() {
            &mut self.open
        } else {
            &mut self.dropped
        };
        let Some(top) = stack.last().map(String::as_str) else {
            return;
        };
        let closes = match top {
            "p" => CLOSES_P.contains(&name),
            "li" => name == "li",
            "dt" | "dd" => name == "dt" || name == "dd",
            "td" | "th" => name == "td" || name == "th" || name == "tr",
            "tr" => name == "tr",
            "option" => name == "option" || name == "optgroup",
            _ => false,
        };
        if closes {
            stack.pop();
        }
    }

    fn end_tag(&mut self, name: &str, tag: &[u8]) {
        let lookback = self.dropped.len().saturating_sub(DROPPED_LOOKBACK);
        if let Some(at) = self.dropped[lookback..].iter().rposition(|n| n == name) {
            // Closes an element that was left out: left out too.
            self.dropped.truncate(lookback + at);
            return;
        }
        if let Some(at) = self.open.iter().rposition(|n| n == name) {
            // Closes a kept element, and everything inside it.
            self.dropped.clear();
            self.open.truncate(at);
        }
        // Kept, or stray (the parser ignores most of those).
        self.out.extend_from_slice(tag);
    }
}

/// The index right after the `>` that ends the tag whose name ends at
/// `from` (quoted attribute values may hold `>`); the end of `html` if none.
fn tag_end(html: &[u8], from: usize) -> usize {
    let mut quote: Option<u8> = None;
    for (i, &b) in html.get(from..).unwrap_or_default().iter().enumerate() {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'>' => return from + i + 1,
            None => {}
        }
    }
    html.len()
}

/// Where the end tag `</name` (any case) starts at or after `from`.
fn find_end_tag(html: &[u8], from: usize, name: &str) -> Option<usize> {
    let mut at = from;
    while let Some(lt) = find(html, at, b"</") {
        let start = lt + 2;
        let candidate = html.get(start..start + name.len())?;
        let after = html.get(start + name.len()).copied();
        if candidate.eq_ignore_ascii_case(name.as_bytes())
            && after.is_none_or(|b| b.is_ascii_whitespace() || b == b'>' || b == b'/')
        {
            return Some(lt);
        }
        at = lt + 2;
    }
    None
}

/// The first index at or after `from` where `needle` starts.
fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    let rest = haystack.get(from..)?;
    if needle.len() == 1 {
        return rest.iter().position(|b| *b == needle[0]).map(|p| from + p);
    }
    rest.windows(needle.len()).position(|w| w == needle).map(|p| from + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(html: &str, depth: usize) -> String {
        String::from_utf8(flatten(html.as_bytes(), depth)).expect("utf-8")
    }

    #[test]
    fn shallow_html_is_unchanged() {
        let html = "<!doctype html><html><head><title>T</title><style>a > b { }</style>\
                    <script>if (a < b && c > d) { x = \"</div>\"; }</script></head>\
                    <body><!-- <div><div> --><p>One<p>Two<ul><li>a<li>b</ul>\
                    <img src=\"x>y\"><br/><svg><path d=\"M0\"/><path/></svg> 1 < 2</body></html>";
        assert_eq!(flat(html, 8), html);
    }

    #[test]
    fn deep_nesting_is_flattened_and_the_text_kept() {
        let html = format!("{}deep{}<p>after</p>", "<div>".repeat(10), "</div>".repeat(10));
        assert_eq!(flat(&html, 3), "<div><div><div>deep</div></div></div><p>after</p>");
        // Unclosed elements, and an end tag of a kept element closing the
        // dropped ones inside it.
        let html = format!("<section>{}x</section><b>y</b>", "<span>".repeat(50));
        assert_eq!(flat(&html, 3), "<section><span><span>x</section><b>y</b>");
        // Implicitly closed elements do not count as nesting.
        let html = "<ul><li>1<li>2<li>3<li>4<li>5</ul><p>a<p>b<p>c<p>d";
        assert_eq!(flat(html, 2), html);
        // Self-closing non-void HTML elements open a level (the parser
        // ignores the slash).
        assert_eq!(flat(&"<div/>".repeat(5), 2), "<div/><div/>");
    }

    #[test]
    fn the_scan_is_linear_on_hostile_input() {
        // Many distinct unclosed elements, then end tags matching none of
        // the innermost dropped ones.
        let mut html = String::new();
        for i in 0..20_000 {
            html.push_str(&format!("<x{i}>"));
        }
        html.push_str(&"</x0>".repeat(20_000));
        let started = std::time::Instant::now();
        let out = flat(&html, 32);
        assert_eq!(out.matches("<x").count(), 32);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}

//! One container log line as people read it. Our binaries write JSON objects (`aibox-log`):
//! those become time, level, message, then the other fields as `key=value`. Any other line is
//! shown as text with terminal escape codes (colours) taken out, so no ESC garbage reaches the page.
use maud::{html, Markup};
use serde_json::{Map, Value};

/// Keys that are shown in their own place, not among the fields.
const TIME_KEYS: [&str; 3] = ["timestamp", "time", "ts"];
const LEVEL_KEYS: [&str; 2] = ["level", "lvl"];
const MESSAGE_KEYS: [&str; 2] = ["message", "msg"];

/// The contents of one `<li>` of the log list: `ts` is Docker's timestamp of the line, if any.
pub fn render(ts: Option<&str>, line: &str) -> Markup {
    let Some(Value::Object(mut obj)) = serde_json::from_str::<Value>(line.trim()).ok() else {
        return html! { (time(ts)) span.line { (strip_ansi(line)) } };
    };
    // tracing's unflattened JSON keeps the event's fields (and the message) under "fields".
    if let Some(Value::Object(fields)) = obj.remove("fields") {
        for (k, v) in fields {
            obj.entry(k).or_insert(v);
        }
    }
    let own_time = take_str(&mut obj, &TIME_KEYS);
    let level = take_str(&mut obj, &LEVEL_KEYS).map(|l| l.to_ascii_uppercase());
    let message = take_str(&mut obj, &MESSAGE_KEYS);
    // By key, whatever order serde_json's map keeps: the same line always reads the same.
    let mut fields: Vec<(&String, &Value)> = obj.iter().collect();
    fields.sort_by_key(|(k, _)| *k);
    html! {
        (time(ts.or(own_time.as_deref())))
        @if let Some(level) = &level {
            span class={ "lvl lvl-" (level.to_ascii_lowercase()) } { (level) } " "
        }
        span.line {
            @if let Some(message) = &message { span.msg { (message) } }
            @for (k, v) in &fields {
                " " span.fld { span.key { (k) "=" } (field_value(v)) }
            }
        }
    }
}

fn time(ts: Option<&str>) -> Markup {
    html! { @if let Some(ts) = ts { time datetime=(ts) { (short_ts(ts)) } " " } }
}

/// `2026-11-26T05:00:01.123456789Z` -> `05:00:01`.
pub fn short_ts(ts: &str) -> &str {
    ts.split_once('T')
        .map(|(_, t)| t.get(..8).unwrap_or(t))
        .unwrap_or(ts)
}

fn take_str(obj: &mut Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| match obj.remove(*k)? {
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

/// Strings bare unless they would read as two values; everything else as JSON.
fn field_value(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() && !s.contains([' ', '"', '=']) => s.clone(),
        other => other.to_string(),
    }
}

/// Drops ANSI escape sequences (CSI `ESC [ … final`, OSC `ESC ] … BEL|ESC \`, and two-byte ones).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_reads_time_level_message_then_fields() {
        let line = r#"{"timestamp":"2026-11-30T10:00:01.5Z","level":"WARN","message":"upstream attempt failed","target":"edge::providers","endpoint":"http://gpu1:11434","attempt":2,"error":"connection refused"}"#;
        let html = render(None, line).into_string();
        assert_eq!(
            html,
            concat!(
                r#"<time datetime="2026-11-30T10:00:01.5Z">10:00:01</time> "#,
                r#"<span class="lvl lvl-warn">WARN</span> "#,
                r#"<span class="line"><span class="msg">upstream attempt failed</span>"#,
                r#" <span class="fld"><span class="key">attempt=</span>2</span>"#,
                r#" <span class="fld"><span class="key">endpoint=</span>http://gpu1:11434</span>"#,
                r#" <span class="fld"><span class="key">error=</span>&quot;connection refused&quot;</span>"#,
                r#" <span class="fld"><span class="key">target=</span>edge::providers</span></span>"#,
            )
        );
    }

    #[test]
    fn dockers_timestamp_wins_and_nested_fields_are_read() {
        let line =
            r#"{"timestamp":"x","level":"info","fields":{"message":"hi","n":1},"target":"t"}"#;
        let html = render(Some("2026-11-30T09:08:07Z"), line).into_string();
        assert!(html.starts_with(r#"<time datetime="2026-11-30T09:08:07Z">09:08:07</time> "#));
        assert!(html.contains(r#"<span class="lvl lvl-info">INFO</span>"#));
        assert!(html.contains(r#"<span class="msg">hi</span>"#));
        assert!(html.contains(r#"<span class="key">n=</span>1"#));
        assert!(!html.contains("timestamp"));
    }

    #[test]
    fn other_lines_are_text_without_escape_codes_and_html_is_escaped() {
        let line = "\x1b[2m2026-11-30T10:00:00Z\x1b[0m \x1b[32m INFO\x1b[0m <b>hi</b> \x1b]8;;http://x\x07link\x1b]8;;\x1b\\";
        let html = render(None, line).into_string();
        assert_eq!(
            html,
            r#"<span class="line">2026-11-30T10:00:00Z  INFO &lt;b&gt;hi&lt;/b&gt; link</span>"#
        );
        assert!(!html.contains('\x1b'));
        assert_eq!(
            render(None, "[1,2]").into_string(),
            r#"<span class="line">[1,2]</span>"#
        );
    }
}

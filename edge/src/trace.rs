//! W3C Trace Context (`traceparent`, `tracestate`) for model requests.
//!
//! The edge is one hop of the caller's trace: a valid `traceparent` keeps its trace id, and the
//! edge sends upstream a *child* — the same trace id, a new span id of its own, the caller's
//! flags — so a tracing backend sees caller → edge → provider. A missing or invalid header
//! (the spec's rules: version `ff`, wrong lengths, upper-case or non-hex digits, an all-zero
//! id) starts a new trace, unsampled. `tracestate` is passed on as it came, only beside a
//! valid `traceparent` (the spec ties the two together). The trace id is logged beside the
//! request id.
use http::HeaderMap;
use rand::Rng;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// The edge's own span id, 16 lower-case hex digits: the upstream's parent.
    pub span_id: String,
    pub flags: u8,
    pub tracestate: Option<String>,
    /// Whether the caller sent a valid `traceparent` (else the edge started the trace).
    pub continued: bool,
}

fn hex_id(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// `(trace_id, parent_id, flags)` of a valid `traceparent` value.
pub fn parse_traceparent(value: &str) -> Option<(&str, &str, u8)> {
    let version = value.get(0..2)?;
    if !version
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        || version == "ff"
    {
        return None;
    }
    // Version 00 is exactly 55 characters; a later version may append `-…` fields.
    if value.len() < 55 || (version == "00" && value.len() != 55) {
        return None;
    }
    if value.len() > 55 && value.as_bytes()[55] != b'-' {
        return None;
    }
    let b = value.as_bytes();
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let (trace_id, parent_id, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    if !hex_id(trace_id, 32) || !hex_id(parent_id, 16) {
        return None;
    }
    if !flags
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    Some((trace_id, parent_id, u8::from_str_radix(flags, 16).ok()?))
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    loop {
        let s: String = (0..bytes)
            .map(|_| format!("{:02x}", rng.random::<u8>()))
            .collect();
        if s.bytes().any(|b| b != b'0') {
            return s;
        }
    }
}

impl TraceContext {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut values = headers.get_all("traceparent").iter();
        // Two `traceparent` headers are invalid: the spec says to restart the trace.
        let parsed = match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().ok().and_then(parse_traceparent),
            _ => None,
        };
        match parsed {
            Some((trace_id, _, flags)) => Self {
                trace_id: trace_id.to_owned(),
                span_id: random_hex(8),
                flags,
                tracestate: headers
                    .get("tracestate")
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| v.len() <= 512)
                    .map(str::to_owned),
                continued: true,
            },
            None => Self {
                trace_id: random_hex(16),
                span_id: random_hex(8),
                flags: 0,
                tracestate: None,
                continued: false,
            },
        }
    }

    /// The `traceparent` the edge sends upstream: its own span as the parent.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specs_example_is_continued_as_a_child() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", SPEC_EXAMPLE.parse().unwrap());
        h.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
        let t = TraceContext::from_headers(&h);
        assert!(t.continued);
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        let up = t.traceparent();
        assert!(up.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && up.ends_with("-01"));
        assert_ne!(
            &up[36..52],
            "00f067aa0ba902b7",
            "a new span id, the edge's own"
        );
        assert_eq!(
            parse_traceparent(&up).map(|p| p.0),
            Some(t.trace_id.as_str())
        );
        assert_eq!(t.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn invalid_values_start_a_new_trace() {
        for bad in [
            "",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
        // A later version may carry more fields after a dash.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more")
                .is_some()
        );
        let mut h = HeaderMap::new();
        h.insert("traceparent", "nonsense".parse().unwrap());
        h.insert("tracestate", "a=b".parse().unwrap());
        let t = TraceContext::from_headers(&h);
        assert!(!t.continued && t.tracestate.is_none() && t.flags == 0);
        assert!(parse_traceparent(&t.traceparent()).is_some());
    }
}

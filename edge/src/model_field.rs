//! The top-level `model` of a JSON request body, read and rewritten without building a JSON tree.
//!
//! Pass-through routes change one value (`vllm/Qwen…` becomes `Qwen…`) and forward the rest as
//! the client sent it. Parsing the whole body into a `Value` and serialising it again costs an
//! allocation per string and per map and reorders keys; here the body is scanned once
//! (serde_json skips every other value without allocating), the `model` value's byte span is
//! taken from a borrowed `RawValue`, and the new body is the old one with only that span
//! replaced.
//!
//! What counts as the body's model is what `serde_json::Value` would see at the top level, with
//! one deliberate difference: a duplicate top-level `model` key is an error here, where `Value`
//! keeps the last one. The bytes are forwarded as sent, so an upstream that reads the first key
//! would otherwise be routed by a model the edge's policy never checked.
//!
//! Skipped values are checked for JSON syntax (as `Value` would) but their strings are not
//! checked for UTF-8; the upstream sees them byte for byte.
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Why a body has no model to route by; each maps to a 400 in the caller's own error shape.
#[derive(Debug, thiserror::Error)]
pub enum ModelFieldError {
    #[error("the request body is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("the request body must be a JSON object")]
    NotAnObject,
    /// Absent or `null` (as the surfaces treat an explicit null today).
    #[error("model is required")]
    Missing,
    #[error("model must be a string")]
    NotAString,
    #[error("model is given more than once")]
    Duplicate,
}

/// A body's top-level `model` string: its decoded value and where its JSON text sits in the body.
#[derive(Debug)]
pub struct ModelField<'a> {
    body: &'a [u8],
    /// The value's JSON text in `body`, quotes included.
    span: Range<usize>,
    value: Cow<'a, str>,
}

impl<'a> ModelField<'a> {
    /// Finds the top-level `model` of `body`, which must be one JSON object.
    pub fn find(body: &'a [u8]) -> Result<Self, ModelFieldError> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            // Only the error path tells "valid JSON, wrong shape" from "not JSON".
            return Err(match serde_json::from_slice::<IgnoredAny>(body) {
                Ok(_) => ModelFieldError::NotAnObject,
                Err(e) => ModelFieldError::Json(e),
            });
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let found = de
            .deserialize_map(TopLevel)
            .and_then(|found| de.end().map(|()| found))
            .map_err(ModelFieldError::Json)?;
        if found.duplicate {
            return Err(ModelFieldError::Duplicate);
        }
        let raw = found.model.ok_or(ModelFieldError::Missing)?.get();
        match raw.as_bytes().first() {
            Some(b'"') => {}
            Some(b'n') => return Err(ModelFieldError::Missing),
            _ => return Err(ModelFieldError::NotAString),
        }
        let span = span_in(body, raw).ok_or_else(|| {
            ModelFieldError::Json(de::Error::custom("model value outside the body"))
        })?;
        let value = serde_json::Deserializer::from_str(raw)
            .deserialize_str(BorrowedStr)
            .map_err(ModelFieldError::Json)?;
        Ok(ModelField { body, span, value })
    }

    /// The model as the client named it (escapes decoded).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The value's JSON text in the body, quotes included.
    #[cfg(test)]
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// The body with only the model's value replaced by `model`; every other byte as sent.
    pub fn replaced(&self, model: &str) -> Vec<u8> {
        let (before, after) = (&self.body[..self.span.start], &self.body[self.span.end..]);
        let mut out = Vec::with_capacity(before.len() + model.len() + 2 + after.len());
        out.extend_from_slice(before);
        write_json_string(&mut out, model);
        out.extend_from_slice(after);
        out
    }
}

/// Where `inner` (a slice serde_json borrowed from `body`) sits in `body`.
fn span_in(body: &[u8], inner: &str) -> Option<Range<usize>> {
    let start = (inner.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(inner.len())?;
    (end <= body.len()).then_some(start..end)
}

/// `s` as a JSON string, escaped exactly as serde_json escapes it.
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..i]);
        out.extend_from_slice(escape);
        plain = i + 1;
    }
    out.extend_from_slice(&bytes[plain..]);
    out.push(b'"');
}

/// What the top-level scan saw: the last `model` value's raw text, and whether there were more.
struct Found<'de> {
    model: Option<&'de RawValue>,
    duplicate: bool,
}

/// Visits the top-level object: keeps `model`'s raw value, skips every other value unread.
struct TopLevel;

impl<'de> Visitor<'de> for TopLevel {
    type Value = Found<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found<'de>, A::Error> {
        let mut found = Found {
            model: None,
            duplicate: false,
        };
        while let Some(is_model) = map.next_key_seed(IsModelKey)? {
            if is_model {
                found.duplicate |= found.model.is_some();
                found.model = Some(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// A key, compared to `model` after unescaping (`"mod\u0065l"` is `model`, as `Value` sees it).
struct IsModelKey;

impl<'de> DeserializeSeed<'de> for IsModelKey {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for IsModelKey {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == "model")
    }
}

/// A JSON string, borrowed from the input unless it has escapes to decode.
struct BorrowedStr;

impl<'de> Visitor<'de> for BorrowedStr {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::{json, Map, Value};

    fn rewrite(body: &str, model: &str) -> String {
        let field = ModelField::find(body.as_bytes()).unwrap();
        String::from_utf8(field.replaced(model)).unwrap()
    }

    #[test]
    fn replaces_only_the_value_and_keeps_every_other_byte() {
        let body = r#"{ "stream" :true,"model" : "vllm/Qwen/Qwen2.5" ,"messages":[{"role":"user","content":"hi"}] }"#;
        assert_eq!(
            rewrite(body, "Qwen/Qwen2.5"),
            r#"{ "stream" :true,"model" : "Qwen/Qwen2.5" ,"messages":[{"role":"user","content":"hi"}] }"#
        );
        let field = ModelField::find(body.as_bytes()).unwrap();
        assert_eq!(field.value(), "vllm/Qwen/Qwen2.5");
        assert_eq!(&body[field.span()], r#""vllm/Qwen/Qwen2.5""#);
    }

    #[test]
    fn an_unescaped_value_is_borrowed_from_the_body() {
        let body = br#"{"model":"llama3:8b"}"#;
        let field = ModelField::find(body).unwrap();
        assert!(matches!(field.value, Cow::Borrowed("llama3:8b")));
    }

    #[test]
    fn escapes_in_the_value_are_decoded_and_the_new_value_is_escaped() {
        let body = r#"{"model":"a\"b\\c\u00e9\n\ud83d\ude00"}"#;
        let field = ModelField::find(body.as_bytes()).unwrap();
        assert_eq!(field.value(), "a\"b\\c\u{e9}\n\u{1F600}");
        let new = "q\"\\\u{1}\u{7f}é\t😀";
        let out = rewrite(body, new);
        assert_eq!(
            out,
            format!(r#"{{"model":{}}}"#, serde_json::to_string(new).unwrap())
        );
        let reparsed: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(reparsed["model"], new);
    }

    #[test]
    fn an_escaped_key_is_still_model() {
        let body = r#"{"mod\u0065l":"x","n":1}"#;
        assert_eq!(rewrite(body, "y"), r#"{"mod\u0065l":"y","n":1}"#);
    }

    #[test]
    fn nested_model_keys_are_not_touched() {
        let body = r#"{"metadata":{"model":"inner"},"tools":[{"model":"t"}],"model":"outer","x":{"model":"after"}}"#;
        let field = ModelField::find(body.as_bytes()).unwrap();
        assert_eq!(field.value(), "outer");
        assert_eq!(
            rewrite(body, "new"),
            r#"{"metadata":{"model":"inner"},"tools":[{"model":"t"}],"model":"new","x":{"model":"after"}}"#
        );
        // Only nested ones: there is no top-level model.
        let nested_only = br#"{"metadata":{"model":"inner"}}"#;
        assert!(matches!(
            ModelField::find(nested_only),
            Err(ModelFieldError::Missing)
        ));
    }

    #[test]
    fn a_model_inside_a_string_is_not_a_key() {
        let body = r#"{"content":"\"model\":\"fake\"","model":"real"}"#;
        assert_eq!(ModelField::find(body.as_bytes()).unwrap().value(), "real");
    }

    #[test]
    fn absent_null_and_non_string_models_are_typed_errors() {
        let err = |b: &str| ModelField::find(b.as_bytes()).unwrap_err();
        assert!(matches!(
            err(r#"{"stream":true}"#),
            ModelFieldError::Missing
        ));
        assert!(matches!(err("{}"), ModelFieldError::Missing));
        assert!(matches!(err(r#"{"model":null}"#), ModelFieldError::Missing));
        for v in ["1", "true", "[\"a\"]", "{\"a\":1}", "-0.5e3"] {
            let body = format!(r#"{{"model":{v}}}"#);
            assert!(matches!(err(&body), ModelFieldError::NotAString), "{v}");
        }
    }

    #[test]
    fn a_body_that_is_not_an_object_is_told_apart_from_one_that_is_not_json() {
        let err = |b: &[u8]| ModelField::find(b).unwrap_err();
        for b in [&b"[]"[..], b"\"model\"", b"12", b"null", b"  true "] {
            assert!(matches!(err(b), ModelFieldError::NotAnObject), "{b:?}");
        }
        for b in [
            &b""[..],
            b"   ",
            b"{",
            b"{\"model\":\"x\"",
            b"{\"model\":\"x\"}}",
            b"{\"model\":\"x\"} trailing",
            b"{\"model\":\"x\",}",
            b"{\"a\":\"bad \\q escape\",\"model\":\"x\"}",
            b"{\"a\":[1,,2],\"model\":\"x\"}",
            b"{\"model\":\"x\",\"a\":tru}",
            b"{\"model\":\"\x01\"}",
            b"{\"model\":\"\xff\"}",
            b"[",
        ] {
            assert!(matches!(err(b), ModelFieldError::Json(_)), "{b:?}");
        }
    }

    #[test]
    fn whitespace_around_the_object_is_kept() {
        let body = "\n\t {\"model\" :\"a\"} \r\n";
        assert_eq!(rewrite(body, "b"), "\n\t {\"model\" :\"b\"} \r\n");
    }

    /// `serde_json::Value` keeps the last of duplicate keys; forwarding bytes with two `model`s
    /// would let an upstream that reads the first one see a model no policy checked.
    #[test]
    fn a_duplicate_top_level_model_is_refused() {
        let dup = r#"{"model":"allowed","x":1,"model":"other"}"#;
        let as_value: Value = serde_json::from_str(dup).unwrap();
        assert_eq!(as_value["model"], "other", "serde_json takes the last");
        assert!(matches!(
            ModelField::find(dup.as_bytes()),
            Err(ModelFieldError::Duplicate)
        ));
        let escaped_dup = r#"{"model":"a","mod\u0065l":"b"}"#;
        assert!(matches!(
            ModelField::find(escaped_dup.as_bytes()),
            Err(ModelFieldError::Duplicate)
        ));
        // Duplicates elsewhere are the upstream's business, as before.
        let other_dup = r#"{"n":1,"model":"a","n":2}"#;
        assert_eq!(ModelField::find(other_dup.as_bytes()).unwrap().value(), "a");
    }

    #[test]
    fn escaping_matches_serde_json_for_every_control_and_special_char() {
        let all: String = (0u32..0x100).filter_map(char::from_u32).collect();
        let mut out = Vec::new();
        write_json_string(&mut out, &all);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&all).unwrap()
        );
    }

    // --- property test: the same answer as a full parse, rewritten as a full parse would ---

    /// Random JSON text for `v`: any char may be written as `\uXXXX`, whitespace anywhere legal.
    struct Writer<'r> {
        rng: &'r mut StdRng,
        out: String,
    }

    impl Writer<'_> {
        fn ws(&mut self) {
            for _ in 0..self.rng.random_range(0..3) {
                let c = [' ', '\n', '\t', '\r'][self.rng.random_range(0..4)];
                self.out.push(c);
            }
        }

        fn string(&mut self, s: &str) {
            self.out.push('"');
            for c in s.chars() {
                let must = c == '"' || c == '\\' || (c as u32) < 0x20;
                if must || self.rng.random_bool(0.1) {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        self.out.push_str(&format!("\\u{u:04x}"));
                    }
                } else {
                    self.out.push(c);
                }
            }
            self.out.push('"');
        }

        fn value(&mut self, v: &Value) {
            self.ws();
            match v {
                Value::String(s) => self.string(s),
                Value::Array(items) => {
                    self.out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            self.out.push(',');
                        }
                        self.value(item);
                    }
                    self.ws();
                    self.out.push(']');
                }
                Value::Object(map) => {
                    let fields: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    self.object(&fields);
                }
                other => self.out.push_str(&other.to_string()),
            }
            self.ws();
        }

        /// Fields in the given order, duplicates allowed.
        fn object(&mut self, fields: &[(String, Value)]) {
            self.out.push('{');
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.ws();
                self.string(k);
                self.ws();
                self.out.push(':');
                self.value(v);
            }
            self.ws();
            self.out.push('}');
        }
    }

    fn random_string(rng: &mut StdRng) -> String {
        const POOL: &[char] = &[
            'a', 'z', 'Q', '0', '/', ':', '.', '-', ' ', '"', '\\', '\n', '\u{0}', '\u{1f}',
            '\u{7f}', 'é', 'ß', '中', '😀', '\u{2028}',
        ];
        (0..rng.random_range(0..8))
            .map(|_| POOL[rng.random_range(0..POOL.len())])
            .collect()
    }

    fn random_key(rng: &mut StdRng) -> String {
        const KEYS: &[&str] = &["model", "messages", "stream", "a", "Model", "model ", ""];
        KEYS[rng.random_range(0..KEYS.len())].to_owned()
    }

    fn random_value(rng: &mut StdRng, depth: u32) -> Value {
        let kinds = if depth == 0 { 5 } else { 7 };
        match rng.random_range(0..kinds) {
            0 => Value::Null,
            1 => Value::Bool(rng.random_bool(0.5)),
            2 => json!(rng.random_range(-1000i64..1000)),
            3 => json!(rng.random_range(-1e6f64..1e6)),
            4 => Value::String(random_string(rng)),
            5 => (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
            _ => {
                let mut m = Map::new();
                for _ in 0..rng.random_range(0..4) {
                    m.insert(random_key(rng), random_value(rng, depth - 1));
                }
                Value::Object(m)
            }
        }
    }

    #[test]
    fn agrees_with_a_full_parse_and_reserialise() {
        let mut rng = StdRng::seed_from_u64(12);
        let (mut ok, mut refused) = (0, 0);
        for case in 0..5000 {
            // Top-level fields; `model` absent, once (string or not) or twice.
            let mut fields: Vec<(String, Value)> = (0..rng.random_range(0..5))
                .map(|_| {
                    let k = random_key(&mut rng);
                    let k = if k == "model" { "other".into() } else { k };
                    (k, random_value(&mut rng, 3))
                })
                .collect();
            let models = [0, 1, 1, 1, 1, 2][rng.random_range(0..6)];
            let mut model_kinds = Vec::new();
            for _ in 0..models {
                let v = if rng.random_bool(0.8) {
                    Value::String(random_string(&mut rng))
                } else {
                    random_value(&mut rng, 1)
                };
                model_kinds.push(v.clone());
                let at = rng.random_range(0..=fields.len());
                fields.insert(at, ("model".into(), v));
            }
            let mut w = Writer {
                rng: &mut rng,
                out: String::new(),
            };
            w.ws();
            w.object(&fields);
            let body = w.out;
            let full: Value = serde_json::from_str(&body).unwrap();

            let found = ModelField::find(body.as_bytes());
            let expected_model = full.get("model");
            match (models, expected_model, found) {
                (2, _, Err(ModelFieldError::Duplicate)) => refused += 1,
                (0, None, Err(ModelFieldError::Missing)) => refused += 1,
                (1, Some(Value::Null), Err(ModelFieldError::Missing)) => refused += 1,
                (1, Some(v), Err(ModelFieldError::NotAString)) if !v.is_string() => refused += 1,
                (1, Some(Value::String(s)), Ok(field)) => {
                    assert_eq!(field.value(), s, "case {case}: {body}");
                    let new = random_string(&mut rng);
                    let out = field.replaced(&new);
                    // Every byte outside the value is as sent.
                    let span = field.span();
                    assert_eq!(&out[..span.start], &body.as_bytes()[..span.start]);
                    assert_eq!(
                        &out[out.len() - (body.len() - span.end)..],
                        &body.as_bytes()[span.end..]
                    );
                    // And it means what the full parse, with model replaced, means.
                    let mut expected = full.clone();
                    expected["model"] = Value::String(new);
                    let got: Value = serde_json::from_slice(&out).unwrap();
                    assert_eq!(got, expected, "case {case}: {body}");
                    ok += 1;
                }
                (n, m, r) => panic!("case {case}: {n} models, full parse {m:?}, got {r:?}: {body}"),
            }
            // Any cut of the body is either still the same JSON (trailing whitespace) or an
            // error from both parsers.
            let cut = rng.random_range(0..body.len());
            let truncated = &body.as_bytes()[..cut];
            if serde_json::from_slice::<Value>(truncated).is_err() {
                assert!(matches!(
                    ModelField::find(truncated),
                    Err(ModelFieldError::Json(_))
                ));
            }
        }
        assert!(ok > 2000 && refused > 500, "ok {ok}, refused {refused}");
    }
}

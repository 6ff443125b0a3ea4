//! Just enough JSON5 for `openclaw.json`: read it into an order-keeping tree, write it back.
//!
//! Read: everything JSON5 allows (comments, trailing commas, unquoted keys, single quotes,
//! hexadecimal and signed numbers, `Infinity`/`NaN`, line continuations in strings). Written:
//! plain JSON with two-space indentation, which is valid JSON5. Key order and every value are
//! kept; comments are not (the backup written before each change keeps them). Numbers are kept
//! as written, so nothing is rounded.
use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// The number's source text (JSON5 spellings included).
    Number(String),
    String(String),
    Array(Vec<Value>),
    /// Members in file order.
    Object(Vec<(String, Value)>),
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Value {
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        match self {
            Value::Object(members) => members.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }

    pub fn str(s: &str) -> Value {
        Value::String(s.to_owned())
    }
}

pub fn parse(text: &str) -> Result<Value, ParseError> {
    let mut p = Parser {
        chars: text.chars().collect(),
        pos: 0,
    };
    p.skip_space()?;
    let v = p.value(0)?;
    p.skip_space()?;
    if p.pos < p.chars.len() {
        return Err(p.error("unexpected text after the top-level value"));
    }
    Ok(v)
}

const MAX_DEPTH: usize = 128;

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn error(&self, message: impl Into<String>) -> ParseError {
        let before = &self.chars[..self.pos.min(self.chars.len())];
        let line = before.iter().filter(|c| **c == '\n').count() + 1;
        let column = before.iter().rev().take_while(|c| **c != '\n').count() + 1;
        ParseError {
            line,
            column,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn starts_with(&self, s: &str) -> bool {
        s.chars()
            .enumerate()
            .all(|(i, c)| self.chars.get(self.pos + i) == Some(&c))
    }

    fn skip_space(&mut self) -> Result<(), ParseError> {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() || c == '\u{feff}' => self.pos += 1,
                Some('/') if self.starts_with("//") => {
                    while let Some(c) = self.peek() {
                        if c == '\n' {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                Some('/') if self.starts_with("/*") => {
                    let start = self.pos;
                    self.pos += 2;
                    while !self.starts_with("*/") {
                        if self.pos >= self.chars.len() {
                            self.pos = start;
                            return Err(self.error("unterminated /* comment"));
                        }
                        self.pos += 1;
                    }
                    self.pos += 2;
                }
                _ => return Ok(()),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        match self.peek() {
            None => Err(self.error("unexpected end of file")),
            Some('{') => self.object(depth),
            Some('[') => self.array(depth),
            Some('"') | Some('\'') => Ok(Value::String(self.string()?)),
            Some(c) if c == '-' || c == '+' || c == '.' || c.is_ascii_digit() => self.number(),
            Some(_) => {
                let word = self.identifier();
                match word.as_str() {
                    "true" => Ok(Value::Bool(true)),
                    "false" => Ok(Value::Bool(false)),
                    "null" => Ok(Value::Null),
                    "Infinity" | "NaN" => Ok(Value::Number(word.clone())),
                    "" => Err(self.error(format!(
                        "unexpected character {:?}",
                        self.peek().unwrap_or(' ')
                    ))),
                    other => Err(self.error(format!("unexpected word {other:?}"))),
                }
            }
        }
    }

    fn identifier(&mut self) -> String {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if c.is_alphanumeric() || c == '_' || c == '$' {
                out.push(c);
                self.pos += 1;
            } else {
                break;
            }
        }
        out
    }

    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.pos;
        if matches!(self.peek(), Some('+') | Some('-')) {
            self.pos += 1;
        }
        if self.starts_with("Infinity") || self.starts_with("NaN") {
            self.identifier();
        } else {
            while let Some(c) = self.peek() {
                if c.is_ascii_alphanumeric()
                    || c == '.'
                    || ((c == '+' || c == '-')
                        && matches!(self.chars.get(self.pos - 1).copied(), Some('e') | Some('E')))
                {
                    self.pos += 1;
                } else {
                    break;
                }
            }
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        let digits = text.trim_start_matches(['+', '-']);
        let ok = digits == "Infinity"
            || digits == "NaN"
            || (digits.len() > 2
                && (digits.starts_with("0x") || digits.starts_with("0X"))
                && digits[2..].chars().all(|c| c.is_ascii_hexdigit()))
            || (!digits.is_empty()
                && digits.trim_end_matches('.').parse::<f64>().is_ok()
                && !digits.contains(['x', 'X']));
        if !ok {
            self.pos = start;
            return Err(self.error(format!("malformed number {text:?}")));
        }
        Ok(Value::Number(text))
    }

    fn string(&mut self) -> Result<String, ParseError> {
        let quote = self.peek().unwrap_or('"');
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                self.pos = start;
                return Err(self.error("unterminated string"));
            };
            self.pos += 1;
            match c {
                c if c == quote => return Ok(out),
                '\n' => {
                    self.pos -= 1;
                    return Err(self.error("line break inside a string"));
                }
                '\\' => {
                    let Some(e) = self.peek() else { continue };
                    self.pos += 1;
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'v' => out.push('\u{b}'),
                        '0' => out.push('\0'),
                        '\n' => {}
                        '\r' => {
                            if self.peek() == Some('\n') {
                                self.pos += 1;
                            }
                        }
                        'u' => out.push(self.unicode_escape()?),
                        'x' => {
                            let hex: String = self
                                .chars
                                .get(self.pos..self.pos + 2)
                                .unwrap_or_default()
                                .iter()
                                .collect();
                            let code = u32::from_str_radix(&hex, 16)
                                .map_err(|_| self.error("bad \\x escape"))?;
                            self.pos += 2;
                            out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
    }

    fn unicode_escape(&mut self) -> Result<char, ParseError> {
        let read4 = |p: &mut Parser| -> Result<u32, ParseError> {
            let hex: String = p
                .chars
                .get(p.pos..p.pos + 4)
                .unwrap_or_default()
                .iter()
                .collect();
            let v = u32::from_str_radix(&hex, 16).map_err(|_| p.error("bad \\u escape"))?;
            p.pos += 4;
            Ok(v)
        };
        let hi = read4(self)?;
        if (0xd800..0xdc00).contains(&hi) && self.starts_with("\\u") {
            self.pos += 2;
            let lo = read4(self)?;
            let code = 0x10000 + ((hi - 0xd800) << 10) + (lo.wrapping_sub(0xdc00) & 0x3ff);
            return Ok(char::from_u32(code).unwrap_or('\u{fffd}'));
        }
        Ok(char::from_u32(hi).unwrap_or('\u{fffd}'))
    }

    fn object(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.pos += 1;
        let mut members: Vec<(String, Value)> = Vec::new();
        loop {
            self.skip_space()?;
            match self.peek() {
                Some('}') => {
                    self.pos += 1;
                    return Ok(Value::Object(members));
                }
                None => return Err(self.error("unterminated object")),
                _ => {}
            }
            let key = match self.peek() {
                Some('"') | Some('\'') => self.string()?,
                _ => {
                    let k = self.identifier();
                    if k.is_empty() {
                        return Err(self.error("expected a key"));
                    }
                    k
                }
            };
            self.skip_space()?;
            if self.peek() != Some(':') {
                return Err(self.error(format!("expected ':' after key {key:?}")));
            }
            self.pos += 1;
            self.skip_space()?;
            let value = self.value(depth + 1)?;
            // A repeated key: the last one wins, as in JavaScript (and in OpenClaw's reader).
            members.retain(|(k, _)| *k != key);
            members.push((key, value));
            self.skip_space()?;
            match self.peek() {
                Some(',') => self.pos += 1,
                Some('}') => {}
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            self.skip_space()?;
            match self.peek() {
                Some(']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                None => return Err(self.error("unterminated array")),
                _ => {}
            }
            items.push(self.value(depth + 1)?);
            self.skip_space()?;
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(']') => {}
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }
}

/// Pretty JSON (valid JSON5), two-space indent, a final newline.
pub fn to_string_pretty(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v, 0);
    out.push('\n');
    out
}

fn write_value(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Object(members) if members.is_empty() => out.push_str("{}"),
        Value::Array(items) => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                pad(out, indent + 1);
                write_value(out, item, indent + 1);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            pad(out, indent);
            out.push(']');
        }
        Value::Object(members) => {
            out.push_str("{\n");
            for (i, (k, item)) in members.iter().enumerate() {
                pad(out, indent + 1);
                write_string(out, k);
                out.push_str(": ");
                write_value(out, item, indent + 1);
                out.push_str(if i + 1 < members.len() { ",\n" } else { "\n" });
            }
            pad(out, indent);
            out.push('}');
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    for _ in 0..indent {
        out.push_str("  ");
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json5_spellings_are_read() {
        let v = parse(
            "// top\n{ unquoted: 'single', \"q\": \"a\\\"b\", hex: 0x1F, neg: -.5, plus: +1,\n\
             inf: Infinity, arr: [1, 2, /* c */ ], nested: { x: null, y: true, }, }\n",
        )
        .unwrap();
        assert_eq!(v.get("unquoted"), Some(&Value::str("single")));
        assert_eq!(v.get("q"), Some(&Value::str("a\"b")));
        assert_eq!(v.get("hex"), Some(&Value::Number("0x1F".into())));
        assert_eq!(v.get("neg"), Some(&Value::Number("-.5".into())));
        assert_eq!(v.get("inf"), Some(&Value::Number("Infinity".into())));
        assert_eq!(
            v.get("arr"),
            Some(&Value::Array(vec![
                Value::Number("1".into()),
                Value::Number("2".into())
            ]))
        );
        assert_eq!(
            v.get("nested").and_then(|n| n.get("y")),
            Some(&Value::Bool(true))
        );
    }

    #[test]
    fn order_and_numbers_survive_a_round_trip() {
        let v = parse("{z: 1, a: 2.50, m: [\"x\"]}").unwrap();
        let text = to_string_pretty(&v);
        assert_eq!(
            text,
            "{\n  \"z\": 1,\n  \"a\": 2.50,\n  \"m\": [\n    \"x\"\n  ]\n}\n"
        );
        assert_eq!(parse(&text).unwrap(), v);
    }

    #[test]
    fn errors_say_where() {
        let e = parse("{\n  a: 1,\n  b: ,\n}").unwrap_err();
        assert_eq!((e.line, e.column), (3, 6), "{e}");
        assert!(parse("{a: 1").is_err());
        assert!(parse("{a: 1} x").is_err());
        assert!(parse("{a: 'x\n'}").is_err());
        assert!(parse("/* open").is_err());
        assert!(parse("{a: 0xZZ}").is_err());
    }
}

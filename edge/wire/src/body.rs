//! JSON request bodies are objects, in every service. serde happily builds a struct from a JSON
//! array (`[true]` as `{"confirm": true}`), and `deny_unknown_fields` does not stop that, so every
//! JSON body is decoded through [`from_slice`], which refuses anything but an object first.
use serde::de::DeserializeOwned;

/// Why a body was refused; the message is written for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Valid JSON, but not an object (`what` is "an array", "a string", "a number", "null", ...).
    NotAnObject { what: &'static str },
    /// Not JSON, or an object that does not fit the expected fields.
    Invalid(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::NotAnObject { what } => {
                write!(f, "the JSON body must be an object, not {what}")
            }
            BodyError::Invalid(e) => write!(f, "invalid JSON body: {e}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// What kind of JSON value `body` starts with, judged by its first non-blank byte; `None` for an
/// object or for something that is not JSON at all (the parser then says why).
pub fn non_object_kind(body: &[u8]) -> Option<&'static str> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    match first {
        b'{' => None,
        b'[' => Some("an array"),
        b'"' => Some("a string"),
        b'-' | b'0'..=b'9' => Some("a number"),
        b'n' if is_literal(body, "null") => Some("null"),
        b't' if is_literal(body, "true") => Some("a boolean"),
        b'f' if is_literal(body, "false") => Some("a boolean"),
        _ => None,
    }
}

fn is_literal(body: &[u8], word: &str) -> bool {
    std::str::from_utf8(body).is_ok_and(|s| s.trim() == word)
}

/// Decodes a JSON object into `T`; anything that is not an object is refused before serde sees it.
pub fn from_slice<T: DeserializeOwned>(body: &[u8]) -> Result<T, BodyError> {
    if let Some(what) = non_object_kind(body) {
        return Err(BodyError::NotAnObject { what });
    }
    serde_json::from_slice(body).map_err(|e| BodyError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Confirm {
        #[serde(default)]
        confirm: bool,
    }

    #[test]
    fn only_objects_become_structs() {
        assert!(
            from_slice::<Confirm>(br#" {"confirm": true} "#)
                .unwrap()
                .confirm
        );
        for (body, what) in [
            (&b"[true]"[..], "an array"),
            (b"\"yes\"", "a string"),
            (b"1", "a number"),
            (b"-1", "a number"),
            (b"null", "null"),
            (b" true ", "a boolean"),
        ] {
            assert_eq!(
                from_slice::<Confirm>(body).unwrap_err(),
                BodyError::NotAnObject { what },
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(matches!(
            from_slice::<Confirm>(b"{nope"),
            Err(BodyError::Invalid(_))
        ));
        assert!(matches!(
            from_slice::<serde_json::Value>(b"nul"),
            Err(BodyError::Invalid(_))
        ));
        let e = from_slice::<Confirm>(b"[]").unwrap_err().to_string();
        assert_eq!(e, "the JSON body must be an object, not an array");
    }
}

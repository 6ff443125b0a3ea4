//! Name rules that two processes must agree on.

/// An MCP server name the edge's registry accepts: 1-48 of `[A-Za-z0-9_-]`, starting with a letter
/// or digit, without `__` (it separates server and tool in tool names) or a trailing `_`.
pub fn mcp_server_name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 48
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
        && !name.contains("__")
        && !name.ends_with('_')
}

/// The rule of [`mcp_server_name_ok`], worded for an error message.
pub const MCP_SERVER_NAME_RULE: &str = "use 1-48 of [A-Za-z0-9_-], starting with a letter or digit, without \"__\" or a trailing \"_\" (\"__\" separates server and tool in tool names)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        for ok in ["time", "git-2", "a", "A_b-c", &"x".repeat(48)] {
            assert!(mcp_server_name_ok(ok), "{ok}");
        }
        for bad in ["", "a__b", "a_", "-a", "_a", "a.b", "a b", &"x".repeat(49)] {
            assert!(!mcp_server_name_ok(bad), "{bad}");
        }
    }
}

//! `mcp-bridge`: the entrypoint of a tool container. It starts the image's own stdio MCP server
//! as its one child and serves it over MCP streamable HTTP, so the edge reaches every tool
//! server the same way (docs/mcp.md, "Tool containers").
//!
//! ```text
//! mcp-bridge [--listen 0.0.0.0:8000] -- PROGRAM [ARGS...]
//! ```
//!
//! One child per container, shared by every HTTP client: JSON-RPC ids are rewritten to the
//! bridge's own, so requests of different clients never collide; the child's `initialize`
//! answer is kept and given to later clients (the child is initialised once). The bridge exits
//! with the child's status when the child ends, so the container's state is the server's.
mod relay;

use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const USAGE: &str = "usage: mcp-bridge [--listen ADDR] -- PROGRAM [ARGS...]";

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    program: String,
    args: Vec<String>,
}

/// A command line the bridge cannot run; the message is printed before exit status 2.
#[derive(Debug, thiserror::Error)]
enum ArgsError {
    #[error("--listen needs an address")]
    ListenMissing,
    #[error("{USAGE}")]
    Help,
    #[error("unknown option {0:?}\n{USAGE}")]
    UnknownOption(String),
    #[error("--listen {listen:?}: {source}")]
    BadListen {
        listen: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("no program to run\n{USAGE}")]
    NoProgram,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, ArgsError> {
    let mut listen = std::env::var("MCP_BRIDGE_LISTEN").unwrap_or_else(|_| "0.0.0.0:8000".into());
    let mut rest = Vec::new();
    while let Some(a) = argv.next() {
        match a.as_str() {
            "--listen" => listen = argv.next().ok_or(ArgsError::ListenMissing)?,
            "--" => {
                rest.extend(argv.by_ref());
                break;
            }
            "-h" | "--help" => return Err(ArgsError::Help),
            other if other.starts_with('-') && rest.is_empty() => {
                return Err(ArgsError::UnknownOption(other.to_string()))
            }
            _ => {
                rest.push(a);
                rest.extend(argv.by_ref());
                break;
            }
        }
    }
    let listen = listen
        .parse()
        .map_err(|source| ArgsError::BadListen { listen, source })?;
    let mut rest = rest.into_iter();
    let program = rest.next().ok_or(ArgsError::NoProgram)?;
    Ok(Args {
        listen,
        program,
        args: rest.collect(),
    })
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mcp-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mcp-bridge: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(run(args));
    // The child and open streams must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    ExitCode::from(code)
}

async fn run(args: Args) -> u8 {
    let mut child = match tokio::process::Command::new(&args.program)
        .args(&args.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mcp-bridge: cannot start {:?}: {e}", args.program);
            return 127;
        }
    };
    // Both are piped above; without them there is nothing to bridge.
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        eprintln!("mcp-bridge: {:?} has no stdin/stdout pipe", args.program);
        let _ = child.start_kill();
        return 2;
    };
    let (to_child, mut outbox) = tokio::sync::mpsc::channel::<Vec<u8>>(256);
    let relay = Arc::new(relay::Relay::new(to_child));

    // The two pipe pumps live as long as `run`: aborted (JoinSet drop) when the child or the
    // server ends.
    let mut pumps = tokio::task::JoinSet::new();
    pumps.spawn(async move {
        while let Some(mut line) = outbox.recv().await {
            line.push(b'\n');
            if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                break;
            }
        }
    });
    let reader_relay = relay.clone();
    pumps.spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            reader_relay.on_child_line(&line).await;
        }
    });

    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mcp-bridge: cannot listen on {}: {e}", args.listen);
            return 2;
        }
    };
    eprintln!(
        "mcp-bridge: serving {:?} on http://{}/mcp",
        args.program, args.listen
    );
    // Small JSON-RPC frames in several writes: without TCP_NODELAY, Nagle and delayed ACKs add
    // ~40 ms to every answer.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, relay::router(relay));

    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("mcp-bridge: cannot handle SIGTERM: {e}");
            let _ = child.start_kill();
            return 2;
        }
    };
    let code = tokio::select! {
        status = child.wait() => {
            let status = status.map(|s| s.code().unwrap_or(1)).unwrap_or(1);
            eprintln!("mcp-bridge: {:?} exited with status {status}", args.program);
            u8::try_from(status).unwrap_or(1).max(1)
        }
        r = server => {
            eprintln!("mcp-bridge: HTTP server stopped: {r:?}");
            1
        }
        _ = term.recv() => 0,
        _ = tokio::signal::ctrl_c() => 0,
    };
    pumps.abort_all();
    let _ = child.start_kill();
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Args, ArgsError> {
        parse_args(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn program_and_args_follow_the_options() {
        let a = parse(&["--listen", "127.0.0.1:9", "--", "python3", "-m", "x"]).unwrap();
        assert_eq!(a.listen.port(), 9);
        assert_eq!(a.program, "python3");
        assert_eq!(a.args, ["-m", "x"]);
        let a = parse(&["srv", "--flag"]).unwrap();
        assert_eq!(
            (a.program.as_str(), a.args.as_slice()),
            ("srv", &["--flag".to_string()][..])
        );
        assert!(
            matches!(parse(&["--"]), Err(ArgsError::NoProgram))
                && parse(&["--"])
                    .unwrap_err()
                    .to_string()
                    .contains("no program")
        );
        assert!(parse(&["--bogus"])
            .unwrap_err()
            .to_string()
            .contains("unknown option"));
    }
}

//! cdp-gate: the browser worker's entrypoint. It starts Chromium with its DevTools endpoint on
//! loopback and forwards CDP clients (OpenClaw, on the `cdp` network) to it.
//!
//! ```text
//! cdp-gate [--listen 0.0.0.0:9222] [--to 127.0.0.1:9223] -- /usr/lib/chromium/chromium-headless-shell FLAGS…
//! ```
//!
//! Why a forwarder at all: Chromium's DevTools HTTP endpoint answers 500 ("Host header is
//! specified and is not an IP address or localhost") to a client that names the browser by its
//! compose service name (`http://browser:9222`), a guard against DNS rebinding, and newer
//! Chromium listens on 127.0.0.1 only. The gate rewrites each request's `Host` to the address the
//! client actually connected to (an IP, so Chromium accepts it), and Chromium then builds the
//! `webSocketDebuggerUrl` in `/json/version` from that same address, which the client can reach.
//! WebSocket upgrades are passed through byte for byte after their head; Chromium's own Origin
//! check still applies.
//!
//! The gate exits with Chromium's status when Chromium exits, so the container restarts.
#![allow(
    clippy::disallowed_methods,
    reason = "a binary: the accept loop and each connection's two copy directions belong to \
              the process and end with it"
)]
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

mod head;

const MAX_HEAD: usize = 64 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

struct Args {
    listen: SocketAddr,
    to: SocketAddr,
    command: Vec<String>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut listen: SocketAddr = "0.0.0.0:9222".parse()?;
    let mut to: SocketAddr = "127.0.0.1:9223".parse()?;
    let mut command = Vec::new();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--listen" => {
                let v = it.next().context("--listen needs ip:port")?;
                listen = v.parse().with_context(|| format!("--listen {v:?}"))?;
            }
            "--to" => {
                let v = it.next().context("--to needs ip:port")?;
                to = v.parse().with_context(|| format!("--to {v:?}"))?;
            }
            "--" => {
                command.extend(it.by_ref());
            }
            other => anyhow::bail!("unknown argument {other:?} (usage: cdp-gate [--listen ip:port] [--to ip:port] -- COMMAND ARGS…)"),
        }
    }
    Ok(Args {
        listen,
        to,
        command,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cdp-gate: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<ExitCode> {
    let args = parse_args(std::env::args().skip(1))?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!(
        "cdp-gate listening on {} -> {}",
        listener.local_addr()?,
        args.to
    );
    let to = args.to;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((client, _)) => {
                    tokio::spawn(async move {
                        if let Err(e) = forward(client, to).await {
                            eprintln!("cdp-gate: connection: {e:#}");
                        }
                    });
                }
                Err(e) => {
                    eprintln!("cdp-gate: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });

    let Some((program, rest)) = args.command.split_first() else {
        // No browser to start: forward only (useful next to a browser started elsewhere).
        std::future::pending::<()>().await;
        unreachable!();
    };
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        status = child.wait() => {
            let status = status?;
            eprintln!("cdp-gate: {program} exited: {status}");
            Ok(ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8))
        }
        _ = term.recv() => {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One client connection: every request head has its `Host` rewritten; after a WebSocket
/// upgrade the bytes flow unchanged both ways.
async fn forward(client: TcpStream, to: SocketAddr) -> anyhow::Result<()> {
    let host = head::host_value(client.local_addr()?);
    let upstream = TcpStream::connect(to)
        .await
        .with_context(|| format!("connecting to Chromium at {to}"))?;
    let (client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut upstream_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    let mut reader = BufReader::new(client_read);
    loop {
        let Some(raw) = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut reader))
            .await
            .context("request head timed out")??
        else {
            break;
        };
        let request = head::rewrite(&raw, &host)?;
        upstream_write.write_all(&request.head).await?;
        if request.upgrade {
            tokio::io::copy(&mut reader, &mut upstream_write).await?;
            break;
        }
        if request.body_len > 0 {
            let mut body = (&mut reader).take(request.body_len);
            tokio::io::copy(&mut body, &mut upstream_write).await?;
        }
    }
    let _ = upstream_write.shutdown().await;
    let _ = back.await;
    Ok(())
}

/// The bytes up to and including the blank line; `None` at a clean end of stream.
async fn read_head<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> anyhow::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = reader.read_until(b'\n', &mut head).await?;
        if n == 0 {
            anyhow::ensure!(head.is_empty(), "connection closed inside a request head");
            return Ok(None);
        }
        anyhow::ensure!(head.len() <= MAX_HEAD, "request head over {MAX_HEAD} bytes");
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            if head.len() == line.len() {
                // Blank lines between requests are allowed (RFC 9112 2.2); skip them.
                head.clear();
                continue;
            }
            return Ok(Some(head));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> anyhow::Result<Args> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments_after_the_separator_are_the_browser_command() {
        let a = args(&[
            "--to",
            "127.0.0.1:9",
            "--",
            "chromium",
            "--headless",
            "--x=1",
        ])
        .unwrap();
        assert_eq!(a.to, "127.0.0.1:9".parse().unwrap());
        assert_eq!(a.listen, "0.0.0.0:9222".parse().unwrap());
        assert_eq!(a.command, ["chromium", "--headless", "--x=1"]);
        assert!(args(&["--bogus"]).is_err());
    }
}

//! `./aibox bench`: the edge's cost, measured against hitting the same upstream directly, in one
//! run on this machine. Prints first the floor (direct, nginx as a plain reverse proxy, and the
//! edge, for chat and streamed chat: added p50, rps, CPU per request; see `floor`), then per
//! scenario: added latency p50/p99 at concurrency 1, and
//! requests per second at concurrency 64 (edge ÷ direct), then requests per second of a keyed
//! client with its limits in process vs in a local `redis-server` (skipped with a message when
//! none is installed), then the edge's idle memory.
//!
//! Both sides use one keep-alive HTTP/1.1 connection per worker, so the comparison is the same
//! client doing the same work with and without the edge in the path.
// A bench driver: every task lives as long as the run, so a bare spawn has its owner.
#![allow(clippy::disallowed_methods)]
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use tokio::net::TcpStream;

mod floor;
mod nginx;
mod proc_stat;

use proc_stat::rss_kib;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/edge")]
    edge: String,
    #[arg(long, default_value = "target/release/fake-upstream")]
    fake: String,
    /// Sequential requests per side for the latency figures.
    #[arg(long, default_value_t = 2000)]
    latency_requests: usize,
    /// Seconds per side for the throughput figures.
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Interleaved rounds of the floor comparison (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The nginx binary for the floor row (default: Debian's, installed when missing).
    #[arg(long)]
    nginx: Option<String>,
    /// Only the floor comparison and the idle memory (a quicker run).
    #[arg(long)]
    floor_only: bool,
}

/// A child process killed when dropped, with the address it announced.
struct Running {
    child: Child,
    addr: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(cmd: &mut Command, label: &str) -> Result<Running> {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stderr = child.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines();
    let needle = format!("{label} listening on ");
    let addr = loop {
        let Some(line) = lines.next() else {
            bail!("{cmd:?} exited before listening")
        };
        let line = line?;
        if let Some(pos) = line.find(&needle) {
            break line[pos + needle.len()..].trim().to_owned();
        }
    };
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(Running { child, addr })
}

/// A redis-server of the benchmark's own on a free loopback port, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `Err` says why there is none (the row is then skipped with that message).
fn start_redis() -> std::result::Result<Redis, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("redis-server is not installed ({e}; Debian: apt-get install redis-server)")
        })?;
    let redis = Redis { child, port };
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(redis);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!("redis-server did not listen on 127.0.0.1:{port}"))
}

struct Scenario {
    name: &'static str,
    direct_addr: String,
    direct_path: &'static str,
    direct_body: String,
    edge_path: &'static str,
    edge_body: String,
}

async fn connect(addr: &str) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// The bench client's key: a keyed client with every limit set, to measure policy checks.
const BENCH_KEY: &str = "bench-key-0123456789abcdef";

async fn one(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: &str,
    path: &str,
    body: &Bytes,
    key: Option<&str>,
) -> Result<()> {
    sender.ready().await?;
    let mut req = Request::post(path)
        .header("host", addr)
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = req.body(Full::new(body.clone()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
    }
    Ok(())
}

async fn latencies(addr: &str, path: &str, body: &str, n: usize) -> Result<Vec<Duration>> {
    latencies_as(addr, path, body, n, None).await
}

async fn latencies_as(
    addr: &str,
    path: &str,
    body: &str,
    n: usize,
    key: Option<&str>,
) -> Result<Vec<Duration>> {
    let mut sender = connect(addr).await?;
    let body = Bytes::from(body.to_owned());
    for _ in 0..n / 10 {
        one(&mut sender, addr, path, &body, key).await?; // warm-up
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        one(&mut sender, addr, path, &body, key).await?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

async fn throughput(addr: &str, path: &str, body: &str, workers: usize, secs: u64) -> Result<f64> {
    throughput_as(addr, path, body, workers, secs, None).await
}

async fn throughput_as(
    addr: &str,
    path: &str,
    body: &str,
    workers: usize,
    secs: u64,
    key: Option<&'static str>,
) -> Result<f64> {
    Ok(throughput_run(addr, path, body, workers, secs, key)
        .await?
        .rps)
}

/// A throughput run's rate and how many requests it completed.
struct Run {
    rps: f64,
    requests: u64,
}

async fn throughput_counted(
    addr: &str,
    path: &str,
    body: &str,
    workers: usize,
    secs: u64,
) -> Result<Run> {
    throughput_run(addr, path, body, workers, secs, None).await
}

async fn throughput_run(
    addr: &str,
    path: &str,
    body: &str,
    workers: usize,
    secs: u64,
    key: Option<&'static str>,
) -> Result<Run> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (addr, path, body) = (
            addr.to_owned(),
            path.to_owned(),
            Bytes::from(body.to_owned()),
        );
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(&addr).await?;
            let mut n = 0u64;
            while Instant::now() < deadline {
                one(&mut sender, &addr, &path, &body, key).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let started = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(Run {
        rps: total as f64 / started.elapsed().as_secs_f64(),
        requests: total,
    })
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let ollama = start(
        Command::new(&args.fake).args(["--kind", "ollama", "--chunk-delay-ms", "0"]),
        "api",
    )?;
    let openai = start(
        Command::new(&args.fake).args(["--kind", "openai", "--chunk-delay-ms", "0"]),
        "api",
    )?;
    let dir = std::env::temp_dir().join(format!("aibox-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // The same edge with its limits in Redis, when Debian's redis-server is here.
    let redis = start_redis();
    let config = dir.join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "[[providers]]\nname = \"ollama\"\nkind = \"ollama\"\nbase_url = \"http://{}\"\n\
             [[providers]]\nname = \"vllm\"\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\n\
             [[clients]]\nname = \"bench\"\nkey_env = \"AIBOX_BENCH_KEY\"\nmodels = [\"ollama/*\", \"vllm/*\"]\n\
             rpm = 100000000\ntpm = 1000000000\nconcurrency = 100000\n\
             [egress]\ndns_servers = [\"127.0.0.1:9\"]\n[mcp]\nregistry = \"{}/none.json\"\nservers_txt = \"{}/none.txt\"\n",
            ollama.addr,
            openai.addr,
            dir.display(),
            dir.display()
        ),
    )?;
    let edge = start(
        Command::new(&args.edge)
            .env("EDGE_CONFIG", &config)
            .env("AIBOX_BENCH_KEY", BENCH_KEY)
            .env("EDGE_LISTEN", "127.0.0.1:0")
            .env("EGRESS_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn"),
        "api",
    )?;
    let shared_edge = match &redis {
        Ok(r) => Some(start(
            Command::new(&args.edge)
                .env("EDGE_CONFIG", &config)
                .env("AIBOX_BENCH_KEY", BENCH_KEY)
                .env("EDGE_LISTEN", "127.0.0.1:0")
                .env("EGRESS_LISTEN", "127.0.0.1:0")
                .env("AIBOX_REDIS_URL", format!("redis://127.0.0.1:{}/", r.port))
                .env("RUST_LOG", "warn"),
            "api",
        )?),
        Err(_) => None,
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_kib(edge.child.id());

    let chat = |model: &str, stream: bool| {
        format!(
            r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"hello bench"}}]}}"#
        )
    };
    let messages = |model: &str, stream: bool| {
        format!(
            r#"{{"model":"{model}","max_tokens":64,"stream":{stream},"messages":[{{"role":"user","content":"hello bench"}}]}}"#
        )
    };
    let responses = |model: &str, stream: bool| {
        format!(r#"{{"model":"{model}","stream":{stream},"input":"hello bench"}}"#)
    };
    let nginx = nginx::start(args.nginx.as_deref(), &dir, &openai.addr);
    let load = floor::Load {
        latency_requests: args.latency_requests,
        seconds: args.seconds,
        concurrency: args.concurrency,
        rounds: args.rounds,
    };
    floor::print_header(&load);
    if let Err(why) = &nginx {
        println!("{:<8} {:<13} skipped: {why}", "", "nginx-proxy");
    }
    for (mode, stream) in [("chat", false), ("stream", true)] {
        let direct_body = chat("Qwen/Qwen2.5-0.5B-Instruct", stream);
        let edge_body = chat("vllm/Qwen/Qwen2.5-0.5B-Instruct", stream);
        let path = "/v1/chat/completions";
        let mut rows = vec![floor::Row {
            name: "direct",
            addr: &openai.addr,
            path,
            body: &direct_body,
            pid: None,
        }];
        if let Ok(n) = &nginx {
            rows.push(floor::Row {
                name: "nginx-proxy",
                addr: if stream { &n.streaming } else { &n.buffered },
                path,
                body: &direct_body,
                pid: Some(n.pid()),
            });
        }
        rows.push(floor::Row {
            name: "edge",
            addr: &edge.addr,
            path,
            body: &edge_body,
            pid: Some(edge.child.id()),
        });
        floor::print(mode, &floor::measure(&rows, &load).await?);
    }
    println!(
        "edge idle RSS: {:.1} MiB (VmRSS after start; target ≤ 20 MiB)",
        idle_rss as f64 / 1024.0
    );
    drop(nginx);
    if args.floor_only {
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }

    let scenarios = vec![
        Scenario {
            name: "openai passthrough, chat",
            direct_addr: openai.addr.clone(),
            direct_path: "/v1/chat/completions",
            direct_body: chat("Qwen/Qwen2.5-0.5B-Instruct", false),
            edge_path: "/v1/chat/completions",
            edge_body: chat("vllm/Qwen/Qwen2.5-0.5B-Instruct", false),
        },
        Scenario {
            name: "openai passthrough, stream",
            direct_addr: openai.addr.clone(),
            direct_path: "/v1/chat/completions",
            direct_body: chat("Qwen/Qwen2.5-0.5B-Instruct", true),
            edge_path: "/v1/chat/completions",
            edge_body: chat("vllm/Qwen/Qwen2.5-0.5B-Instruct", true),
        },
        Scenario {
            name: "ollama translated, chat",
            direct_addr: ollama.addr.clone(),
            direct_path: "/api/chat",
            direct_body: chat("llama3:8b", false),
            edge_path: "/v1/chat/completions",
            edge_body: chat("ollama/llama3:8b", false),
        },
        Scenario {
            name: "ollama translated, stream",
            direct_addr: ollama.addr.clone(),
            direct_path: "/api/chat",
            direct_body: chat("llama3:8b", true),
            edge_path: "/v1/chat/completions",
            edge_body: chat("ollama/llama3:8b", true),
        },
        Scenario {
            name: "ollama surface, chat",
            direct_addr: ollama.addr.clone(),
            direct_path: "/api/chat",
            direct_body: chat("llama3:8b", false),
            edge_path: "/api/chat",
            edge_body: chat("llama3:8b", false),
        },
        Scenario {
            name: "ollama surface, stream",
            direct_addr: ollama.addr.clone(),
            direct_path: "/api/chat",
            direct_body: chat("llama3:8b", true),
            edge_path: "/api/chat",
            edge_body: chat("llama3:8b", true),
        },
        Scenario {
            name: "ollama api → openai, chat",
            direct_addr: openai.addr.clone(),
            direct_path: "/v1/chat/completions",
            direct_body: chat("Qwen/Qwen2.5-0.5B-Instruct", false),
            edge_path: "/api/chat",
            edge_body: chat("vllm/Qwen/Qwen2.5-0.5B-Instruct", false),
        },
        Scenario {
            name: "ollama api → openai, stream",
            direct_addr: openai.addr.clone(),
            direct_path: "/v1/chat/completions",
            direct_body: chat("Qwen/Qwen2.5-0.5B-Instruct", true),
            edge_path: "/api/chat",
            edge_body: chat("vllm/Qwen/Qwen2.5-0.5B-Instruct", true),
        },
        Scenario {
            name: "anthropic → ollama, chat",
            direct_addr: ollama.addr.clone(),
            direct_path: "/api/chat",
            direct_body: chat("llama3:8b", false),
            edge_path: "/v1/messages",
            edge_body: messages("ollama/llama3:8b", false),
        },
        Scenario {
            name: "anthropic → ollama, stream",
            direct_addr: ollama.addr.clone(),
            direct_path: "/api/chat",
            direct_body: chat("llama3:8b", true),
            edge_path: "/v1/messages",
            edge_body: messages("ollama/llama3:8b", true),
        },
        Scenario {
            name: "anthropic → openai, chat",
            direct_addr: openai.addr.clone(),
            direct_path: "/v1/chat/completions",
            direct_body: chat("Qwen/Qwen2.5-0.5B-Instruct", false),
            edge_path: "/v1/messages",
            edge_body: messages("vllm/Qwen/Qwen2.5-0.5B-Instruct", false),
        },
        Scenario {
            name: "anthropic → openai, stream",
            direct_addr: openai.addr.clone(),
            direct_path: "/v1/chat/completions",
            direct_body: chat("Qwen/Qwen2.5-0.5B-Instruct", true),
            edge_path: "/v1/messages",
            edge_body: messages("vllm/Qwen/Qwen2.5-0.5B-Instruct", true),
        },
        Scenario {
            name: "responses → ollama, chat",
            direct_addr: ollama.addr.clone(),
            direct_path: "/api/chat",
            direct_body: chat("llama3:8b", false),
            edge_path: "/v1/responses",
            edge_body: responses("ollama/llama3:8b", false),
        },
        Scenario {
            name: "responses → ollama, stream",
            direct_addr: ollama.addr.clone(),
            direct_path: "/api/chat",
            direct_body: chat("llama3:8b", true),
            edge_path: "/v1/responses",
            edge_body: responses("ollama/llama3:8b", true),
        },
        Scenario {
            name: "responses → openai, chat",
            direct_addr: openai.addr.clone(),
            direct_path: "/v1/chat/completions",
            direct_body: chat("Qwen/Qwen2.5-0.5B-Instruct", false),
            edge_path: "/v1/responses",
            edge_body: responses("vllm/Qwen/Qwen2.5-0.5B-Instruct", false),
        },
        Scenario {
            name: "responses → openai, stream",
            direct_addr: openai.addr.clone(),
            direct_path: "/v1/chat/completions",
            direct_body: chat("Qwen/Qwen2.5-0.5B-Instruct", true),
            edge_path: "/v1/responses",
            edge_body: responses("vllm/Qwen/Qwen2.5-0.5B-Instruct", true),
        },
    ];
    // Added p50 per scenario, for the translation overhead summary below.
    let mut added = std::collections::HashMap::new();

    println!(
        "{:<28} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10} {:>7}",
        "scenario",
        "direct p50",
        "edge p50",
        "added p50",
        "added p99",
        "direct rps",
        "edge rps",
        "ratio"
    );
    for s in &scenarios {
        let direct = latencies(
            &s.direct_addr,
            s.direct_path,
            &s.direct_body,
            args.latency_requests,
        )
        .await?;
        let via = latencies(&edge.addr, s.edge_path, &s.edge_body, args.latency_requests).await?;
        let added50 = us(pct(&via, 0.5)) - us(pct(&direct, 0.5));
        added.insert(s.name, added50);
        let added99 = us(pct(&via, 0.99)) - us(pct(&direct, 0.99));
        let direct_rps = throughput(
            &s.direct_addr,
            s.direct_path,
            &s.direct_body,
            args.concurrency,
            args.seconds,
        )
        .await?;
        let edge_rps = throughput(
            &edge.addr,
            s.edge_path,
            &s.edge_body,
            args.concurrency,
            args.seconds,
        )
        .await?;
        println!(
            "{:<28} {:>8.0}µs {:>8.0}µs {:>10.0}µs {:>10.0}µs {:>10.0} {:>10.0} {:>6.2}×",
            s.name,
            us(pct(&direct, 0.5)),
            us(pct(&via, 0.5)),
            added50,
            added99,
            direct_rps,
            edge_rps,
            edge_rps / direct_rps
        );
    }
    // The cost of a second translation layer (Responses or Messages on top of the chat path),
    // as added latency relative to chat's to the same provider: chat translated (Ollama) or
    // chat passed through (OpenAI-compatible, no translation at all: the stricter bar).
    for (what, base, how) in [
        ("ollama", "ollama translated", "translated"),
        ("openai", "openai passthrough", "passed through"),
    ] {
        for mode in ["chat", "stream"] {
            let chat = added[format!("{base}, {mode}").as_str()].max(1.0);
            println!(
                "added p50 vs chat {how} ({what}, {mode}): responses {:.2}×, messages {:.2}×",
                added[format!("responses → {what}, {mode}").as_str()] / chat,
                added[format!("anthropic → {what}, {mode}").as_str()] / chat,
            );
        }
    }
    // Policy checks on the hot path: the same request as a keyed client with every limit set
    // (key hash, model globs, rpm, tpm, concurrency, usage) and as anonymous with the open
    // default, interleaved so drift hits both alike.
    let body = chat("llama3:8b", false);
    let (mut keyed, mut open) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let n = args.latency_requests / 5;
        keyed.extend(latencies_as(&edge.addr, "/api/chat", &body, n, Some(BENCH_KEY)).await?);
        open.extend(latencies_as(&edge.addr, "/api/chat", &body, n, None).await?);
    }
    keyed.sort();
    open.sort();
    println!(
        "{:<28} {:>10} {:>10} {:>12} {:>12}",
        "policy (ollama surface)", "open p50", "keyed p50", "added p50", "added p99"
    );
    println!(
        "{:<28} {:>8.1}µs {:>8.1}µs {:>10.1}µs {:>10.1}µs",
        "keyed+limited vs anonymous",
        us(pct(&open, 0.5)),
        us(pct(&keyed, 0.5)),
        us(pct(&keyed, 0.5)) - us(pct(&open, 0.5)),
        us(pct(&keyed, 0.99)) - us(pct(&open, 0.99)),
    );
    // Shared limits: the keyed client (rpm, tpm, concurrency all set) on one edge with its limits
    // in Redis vs in process; three interleaved rounds, the best of each.
    println!(
        "{:<28} {:>12} {:>12} {:>7}",
        "limits (ollama surface)", "in-process", "redis", "ratio"
    );
    match (&shared_edge, &redis) {
        (Some(shared), Ok(r)) => {
            let (mut local_rps, mut shared_rps) = (0f64, 0f64);
            for _ in 0..3 {
                let l = throughput_as(
                    &edge.addr,
                    "/api/chat",
                    &body,
                    args.concurrency,
                    args.seconds,
                    Some(BENCH_KEY),
                )
                .await?;
                let s = throughput_as(
                    &shared.addr,
                    "/api/chat",
                    &body,
                    args.concurrency,
                    args.seconds,
                    Some(BENCH_KEY),
                )
                .await?;
                local_rps = local_rps.max(l);
                shared_rps = shared_rps.max(s);
            }
            println!(
                "{:<28} {:>8.0} rps {:>8.0} rps {:>6.2}×",
                format!("keyed, c={}", args.concurrency),
                local_rps,
                shared_rps,
                shared_rps / local_rps
            );
            let _ = r;
        }
        (_, Err(why)) => println!("{:<28} skipped: {why}", "keyed, shared in Redis"),
        (None, Ok(_)) => unreachable!("an edge is started whenever Redis is"),
    }
    println!(
        "edge memory: idle {:.1} MiB, after the run {:.1} MiB (VmRSS)",
        idle_rss as f64 / 1024.0,
        rss_kib(edge.child.id()) as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

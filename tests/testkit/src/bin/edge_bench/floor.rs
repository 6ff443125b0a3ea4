//! The edge against the floor: the same chat request sent directly to the fake upstream,
//! through nginx as a plain keep-alive reverse proxy (one proxy hop, nothing else), and through
//! the edge. Per row: added p50 at concurrency 1, requests per second at concurrency 64, and the
//! proxy's CPU per request over that run; then the edge ÷ nginx ratios beside issue 12's
//! targets. Rounds are interleaved so drift on a shared machine hits every row alike.
use anyhow::Result;

use super::proc_stat::{clock_ticks_per_second, cpu_ticks_of_tree};
use super::{latencies, pct, throughput_counted, us};

/// One way to reach the upstream.
pub struct Row<'a> {
    pub name: &'static str,
    pub addr: &'a str,
    pub path: &'a str,
    pub body: &'a str,
    /// The proxy process whose CPU (with its children's) is charged to the row.
    pub pid: Option<u32>,
}

pub struct Load {
    pub latency_requests: usize,
    pub seconds: u64,
    pub concurrency: usize,
    pub rounds: usize,
}

#[derive(Default)]
struct Tally {
    p50_us: Vec<f64>,
    added_us: Vec<f64>,
    rps: Vec<f64>,
    ticks: u64,
    requests: u64,
}

/// What one row measured, medians over the rounds.
pub struct Figures {
    pub name: &'static str,
    pub p50_us: f64,
    pub added_us: f64,
    pub rps: f64,
    pub cpu_us_per_request: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Measures every row; the first is the direct baseline the others' added latency is taken from.
pub async fn measure(rows: &[Row<'_>], load: &Load) -> Result<Vec<Figures>> {
    let mut tallies: Vec<Tally> = rows.iter().map(|_| Tally::default()).collect();
    for _ in 0..load.rounds {
        let mut direct_p50 = 0.0;
        for (i, row) in rows.iter().enumerate() {
            let lat = latencies(row.addr, row.path, row.body, load.latency_requests).await?;
            let p50 = us(pct(&lat, 0.5));
            if i == 0 {
                direct_p50 = p50;
            }
            let before = row.pid.map(cpu_ticks_of_tree);
            let run =
                throughput_counted(row.addr, row.path, row.body, load.concurrency, load.seconds)
                    .await?;
            let t = &mut tallies[i];
            if let (Some(pid), Some(before)) = (row.pid, before) {
                t.ticks += cpu_ticks_of_tree(pid).saturating_sub(before);
            }
            t.requests += run.requests;
            t.p50_us.push(p50);
            t.added_us.push(p50 - direct_p50);
            t.rps.push(run.rps);
        }
    }
    let per_second = clock_ticks_per_second();
    Ok(rows
        .iter()
        .zip(tallies)
        .map(|(row, t)| Figures {
            name: row.name,
            p50_us: median(t.p50_us),
            added_us: median(t.added_us),
            rps: median(t.rps),
            cpu_us_per_request: row
                .pid
                .map(|_| t.ticks as f64 * 1e6 / per_second / t.requests.max(1) as f64),
        })
        .collect())
}

pub fn print_header(load: &Load) {
    println!(
        "floor: one proxy hop (chat to the OpenAI-compatible fake; p50 over {} sequential \
         requests, rps and CPU at c={} for {} s; median of {} interleaved rounds)",
        load.latency_requests, load.concurrency, load.seconds, load.rounds
    );
    println!(
        "{:<8} {:<13} {:>10} {:>11} {:>10} {:>12}",
        "mode", "row", "p50", "added p50", "rps", "cpu/request"
    );
}

pub fn print(mode: &str, figures: &[Figures]) {
    for f in figures {
        let cpu = f
            .cpu_us_per_request
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.0}µs"));
        println!(
            "{:<8} {:<13} {:>8.0}µs {:>9.0}µs {:>10.0} {:>12}",
            mode, f.name, f.p50_us, f.added_us, f.rps, cpu
        );
    }
    let find = |name: &str| figures.iter().find(|f| f.name == name);
    if let (Some(edge), Some(nginx)) = (find("edge"), find("nginx-proxy")) {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        let added = ratio(edge.added_us, nginx.added_us);
        let rps = ratio(edge.rps, nginx.rps);
        let cpu = match (edge.cpu_us_per_request, nginx.cpu_us_per_request) {
            (Some(e), Some(n)) => ratio(e, n),
            _ => f64::NAN,
        };
        let verdict = |ok: bool| if ok { "met" } else { "missed" };
        println!(
            "{:<8} {:<13} added p50 {:.2}× (target ≤ 1.5, {}), rps {:.2}× (≥ 0.8, {}), \
             cpu/request {:.2}× (≤ 2, {})",
            mode,
            "edge÷nginx",
            added,
            verdict(added <= 1.5),
            rps,
            verdict(rps >= 0.8),
            cpu,
            verdict(cpu <= 2.0),
        );
    }
}

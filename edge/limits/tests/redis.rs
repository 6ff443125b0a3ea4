//! The shared limits against a real `redis-server` (Debian's), started on a free loopback port.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's helpers too: a failed unwrap is a failed test"
)]
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aibox_limits::{Limits, SharedLimits, DEFAULT_TIMEOUT, PROBE_INTERVAL};

/// A redis-server of our own; killed when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is not installed (Debian: apt-get install redis-server)");
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn limits(url: &str) -> SharedLimits {
    // Generous: a loaded machine must not turn a slow answer into a fallback.
    SharedLimits::new(url, Duration::from_secs(5)).unwrap()
}

#[tokio::test]
async fn two_replicas_share_one_window() {
    let redis = RedisServer::start();
    let (a, b) = (limits(&redis.url()), limits(&redis.url()));
    let mut admitted = 0;
    for i in 0..12 {
        let replica = if i % 2 == 0 { &a } else { &b };
        match replica.hit("rpm", "team", 5).await.expect("redis answers") {
            Ok(()) => admitted += 1,
            Err(wait) => assert!(
                wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
                "{wait:?}"
            ),
        }
    }
    assert_eq!(admitted, 5, "5 per minute across both replicas");
    // Another client's window is its own.
    assert_eq!(a.hit("rpm", "other", 5).await, Some(Ok(())));
}

#[tokio::test]
async fn tokens_over_the_budget_are_debt() {
    let redis = RedisServer::start();
    let l = limits(&redis.url());
    let tpm = Limits {
        tpm: Some(100),
        ..Limits::default()
    };
    assert_eq!(l.admit("c", &tpm).await, Some(Ok(())));
    l.tokens_charge("c", 100, 60).await.unwrap();
    assert_eq!(l.admit("c", &tpm).await, Some(Ok(())), "60 of 100");
    l.tokens_charge("c", 100, 250).await.unwrap();
    match l.admit("c", &tpm).await {
        Some(Err(("tpm", wait))) => assert!(wait > Duration::from_secs(60), "{wait:?}"),
        other => panic!("over the budget must be refused: {other:?}"),
    }
}

#[tokio::test]
async fn concurrency_slots_are_shared_and_come_back() {
    let redis = RedisServer::start();
    let (a, b) = (limits(&redis.url()), limits(&redis.url()));
    let two = Limits {
        concurrency: Some(2),
        ..Limits::default()
    };
    assert_eq!(a.admit("c", &two).await, Some(Ok(())));
    assert_eq!(b.admit("c", &two).await, Some(Ok(())));
    assert!(matches!(
        a.admit("c", &two).await,
        Some(Err(("concurrency", _)))
    ));
    b.slot_give_back("c").await;
    assert_eq!(a.admit("c", &two).await, Some(Ok(())));
}

#[tokio::test]
async fn a_request_refused_by_rpm_gives_its_slot_back() {
    let redis = RedisServer::start();
    let l = limits(&redis.url());
    let both = Limits {
        rpm: Some(1),
        concurrency: Some(1),
        ..Limits::default()
    };
    assert_eq!(l.admit("c", &both).await, Some(Ok(())));
    l.slot_give_back("c").await;
    assert!(matches!(l.admit("c", &both).await, Some(Err(("rpm", _)))));
    // The refused request took no slot: with rpm out of the way, one slot is free.
    let conc = Limits {
        concurrency: Some(1),
        ..Limits::default()
    };
    assert_eq!(l.admit("c", &conc).await, Some(Ok(())));
}

#[tokio::test]
async fn an_unreachable_redis_means_local_limits_until_it_answers() {
    let redis = RedisServer::start();
    let port = redis.port;
    let l = SharedLimits::new(&redis.url(), DEFAULT_TIMEOUT).unwrap();
    assert_eq!(l.hit("rpm", "c", 1).await, Some(Ok(())));
    assert!(l.is_shared());
    drop(redis);

    let started = Instant::now();
    assert_eq!(
        l.hit("rpm", "c", 1).await,
        None,
        "down: the caller limits locally"
    );
    assert!(!l.is_shared());
    // Within the probe interval nobody waits on Redis.
    let quick = Instant::now();
    assert_eq!(l.hit("rpm", "c", 1).await, None);
    assert!(
        quick.elapsed() < Duration::from_millis(100),
        "{:?}",
        quick.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let _back = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if l.hit("rpm", "c", 1).await.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "sharing never resumed");
        tokio::time::sleep(PROBE_INTERVAL / 4).await;
    }
    assert!(l.is_shared());
}

#[test]
fn a_bad_url_is_refused_without_repeating_it() {
    let e = SharedLimits::new("http://user:secret@host/", DEFAULT_TIMEOUT).unwrap_err();
    assert!(!e.to_string().contains("secret"), "{e}");
}

//! The forward proxy over real sockets, all on loopback: a test DNS server maps test names to
//! 127.0.0.x, loopback is allowed only through the test-only switch, and recorders prove that
//! denied addresses are never connected to.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{fixed, Origin, Recorder, RunningProxy, TestDns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Test config that may reach only the given loopback networks.
fn loopback_config(dns: SocketAddr, port: u16, allow: &[&str], extra: &str) -> String {
    let allow: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "dns_servers = [\"{dns}\"]\ndns_timeout_ms = 2000\nports = [80, 443, {port}]\n\
         allow_loopback_for_tests = true\nallow_cidrs = [{}]\n{extra}\n",
        allow.join(", ")
    )
}

#[tokio::test]
async fn plain_http_reaches_a_loopback_origin_rewritten_to_origin_form() {
    let origin = Origin::start("127.0.0.2").await;
    let port = origin.addr.port();
    let dns = TestDns::start(vec![("origin.test", fixed(&["127.0.0.2"]))]).await;
    let proxy = RunningProxy::start(&loopback_config(dns.addr, port, &["127.0.0.2/32"], "")).await;

    let resp = proxy
        .exchange(&format!(
            "POST http://origin.test:{port}/hello?x=1 HTTP/1.1\r\nHost: origin.test:{port}\r\n\
             Proxy-Authorization: Basic dGVzdDpzZWNyZXQ=\r\nProxy-Connection: keep-alive\r\n\
             Connection: keep-alive, X-Drop-Me\r\nX-Drop-Me: 1\r\nX-Keep: 2\r\n\
             Content-Length: 5\r\n\r\nhello"
        ))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(
        resp.body.contains("origin saw: POST /hello?x=1 HTTP/1.1"),
        "{}",
        resp.body
    );
    assert!(resp.body.contains("body: hello"), "{}", resp.body);
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    assert_eq!(resp.header("keep-alive"), None);

    let seen = origin
        .requests
        .lock()
        .unwrap()
        .join("\n")
        .to_ascii_lowercase();
    assert!(
        seen.contains(&format!("host: origin.test:{port}")),
        "{seen}"
    );
    assert!(seen.contains("x-keep: 2"), "{seen}");
    for gone in [
        "proxy-authorization",
        "proxy-connection",
        "x-drop-me",
        "keep-alive",
    ] {
        assert!(!seen.contains(gone), "{gone} was forwarded: {seen}");
    }
    assert_eq!(
        proxy.metric("aibox_egress_decisions_total", &[("decision", "allow")]),
        1.0
    );
}

#[tokio::test]
async fn chunked_request_bodies_are_forwarded_by_their_framing() {
    let origin = Origin::start("127.0.0.2").await;
    let port = origin.addr.port();
    let dns = TestDns::start(vec![("origin.test", fixed(&["127.0.0.2"]))]).await;
    let proxy = RunningProxy::start(&loopback_config(dns.addr, port, &["127.0.0.2/32"], "")).await;
    let resp = proxy
        .exchange(&format!(
            "POST http://origin.test:{port}/up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
             4\r\nWiki\r\n0\r\n\r\n"
        ))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.body.contains("4\r\nWiki\r\n0"), "{}", resp.body);
}

#[tokio::test]
async fn connect_tunnels_bytes_to_a_loopback_origin() {
    let origin = Origin::start("127.0.0.2").await;
    let port = origin.addr.port();
    let dns = TestDns::start(vec![("origin.test", fixed(&["127.0.0.2"]))]).await;
    let proxy = RunningProxy::start(&loopback_config(dns.addr, port, &["127.0.0.2/32"], "")).await;

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            format!("CONNECT origin.test:{port} HTTP/1.1\r\nHost: origin.test:{port}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(proxy.metric("aibox_egress_open_tunnels", &[]), 1.0);

    stream.write_all(b"ECHO tunnel\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    while support::find(&got, b"ECHO tunnel\r\n\r\n").is_none() {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "tunnel closed early");
        got.extend_from_slice(&buf[..n]);
    }
    drop(stream);
    for _ in 0..50 {
        if proxy.metric("aibox_egress_open_tunnels", &[]) == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.metric("aibox_egress_open_tunnels", &[]), 0.0);
}

/// The DNS server answers 127.0.0.2 (allowed) first and 127.0.0.3 (denied, a recorder) on every
/// later query. The proxy must connect to the address it checked, never ask again.
#[tokio::test]
async fn dns_rebinding_cannot_move_the_connection_to_a_denied_address() {
    let origin = Origin::start("127.0.0.2").await;
    let port = origin.addr.port();
    let recorder = Recorder::start(SocketAddr::new("127.0.0.3".parse().unwrap(), port)).await;
    let dns = TestDns::start(vec![(
        "rebind.test",
        Box::new(|n| {
            vec![if n == 0 {
                [127, 0, 0, 2]
            } else {
                [127, 0, 0, 3]
            }
            .into()]
        }),
    )])
    .await;
    let proxy = RunningProxy::start(&loopback_config(
        dns.addr,
        port,
        &["127.0.0.2/32"],
        "deny_cidrs = [\"127.0.0.3/32\"]",
    ))
    .await;

    let first = proxy.get(&format!("http://rebind.test:{port}/first")).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert!(first.body.contains("GET /first"), "{}", first.body);
    assert_eq!(
        dns.a_queries("rebind.test"),
        1,
        "one resolution per decision"
    );

    let second = proxy
        .get(&format!("http://rebind.test:{port}/second"))
        .await;
    assert_eq!(second.status, 403, "{second:?}");
    assert_eq!(second.deny_reason().as_deref(), Some("denied_cidr"));

    let tunnel = proxy.connect(&format!("rebind.test:{port}")).await;
    assert_eq!(tunnel.deny_reason().as_deref(), Some("denied_cidr"));

    assert_eq!(
        recorder.connections(),
        0,
        "the denied address was connected to"
    );
    assert_eq!(proxy.connect_attempts(), 1.0);
}

#[tokio::test]
async fn a_name_with_any_denied_answer_is_denied() {
    let origin = Origin::start("127.0.0.2").await;
    let port = origin.addr.port();
    let recorder = Recorder::start(SocketAddr::new("127.0.0.3".parse().unwrap(), port)).await;
    let dns = TestDns::start(vec![
        ("mixed.test", fixed(&["127.0.0.2", "127.0.0.3"])),
        ("mixed-reversed.test", fixed(&["127.0.0.3", "127.0.0.2"])),
    ])
    .await;
    let proxy = RunningProxy::start(&loopback_config(
        dns.addr,
        port,
        &["127.0.0.2/32"],
        "deny_cidrs = [\"127.0.0.3/32\"]",
    ))
    .await;
    for name in ["mixed.test", "mixed-reversed.test"] {
        let resp = proxy.get(&format!("http://{name}:{port}/")).await;
        assert_eq!(resp.status, 403, "{resp:?}");
        assert_eq!(resp.deny_reason().as_deref(), Some("denied_cidr"));
        assert!(resp.body.contains("denied_cidr"), "{}", resp.body);
    }
    assert_eq!(recorder.connections(), 0);
    assert_eq!(origin.requests.lock().unwrap().len(), 0);
    assert_eq!(proxy.connect_attempts(), 0.0);
}

/// Every bypass spelling, as plain HTTP and as CONNECT, with recorders on the loopback
/// addresses the spellings denote. Nothing is allowed, nothing is connected to.
#[tokio::test]
async fn bypass_forms_are_denied_without_any_connection() {
    let v4 = Recorder::start("127.0.0.1:0".parse().unwrap()).await;
    let port = v4.addr.port();
    let v6 = Recorder::start(SocketAddr::new("::1".parse().unwrap(), port)).await;
    let dns = TestDns::start(vec![
        ("loopback.test", fixed(&["127.0.0.1"])),
        ("metadata.test", fixed(&["169.254.169.254"])),
        ("private.test", fixed(&["10.1.2.3"])),
        ("tailnet.test", fixed(&["100.101.102.103"])),
    ])
    .await;
    // No loopback allowance: the production shape, with the test port allowed.
    let proxy = RunningProxy::start(&format!(
        "dns_servers = [\"{}\"]\nports = [{port}]\n",
        dns.addr
    ))
    .await;

    let cases: &[(&str, &str)] = &[
        ("127.1", "loopback"),
        ("0x7f.1", "loopback"),
        ("2130706433", "loopback"),
        ("0177.0.0.1", "loopback"),
        ("0", "loopback"),
        ("127.0.0.1.", "loopback"),
        ("[::]", "loopback"),
        ("[::1]", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("[::ffff:a9fe:a9fe]", "metadata"),
        ("[64:ff9b::a9fe:a9fe]", "metadata"),
        ("[2002:a9fe:a9fe::1]", "metadata"),
        ("169.254.169.254", "metadata"),
        ("0xa9fea9fe", "metadata"),
        ("loopback.test", "loopback"),
        ("loopback.test.", "loopback"),
        ("LOOPBACK.test", "loopback"),
        ("metadata.test", "metadata"),
        ("private.test", "private_range"),
        ("tailnet.test", "tailnet"),
        ("nxdomain.test", "dns_failure"),
    ];
    let mut failures = Vec::new();
    for (host, want) in cases {
        let http = proxy
            .exchange(&format!("GET http://{host}:{port}/ HTTP/1.1\r\n\r\n"))
            .await;
        let tunnel = proxy
            .exchange(&format!("CONNECT {host}:{port} HTTP/1.1\r\n\r\n"))
            .await;
        for (kind, resp) in [("GET", &http), ("CONNECT", &tunnel)] {
            if resp.status != 403 || resp.deny_reason().as_deref() != Some(*want) {
                failures.push(format!(
                    "{kind} {host}: {} {:?}, want 403 {want}",
                    resp.status,
                    resp.deny_reason()
                ));
            }
        }
    }
    let userinfo = [
        format!("GET http://user@127.0.0.1:{port}/ HTTP/1.1\r\n\r\n"),
        format!("GET http://example.com@127.0.0.1:{port}/ HTTP/1.1\r\n\r\n"),
        format!("CONNECT user:pw@127.0.0.1:{port} HTTP/1.1\r\n\r\n"),
    ];
    for raw in &userinfo {
        let resp = proxy.exchange(raw).await;
        if resp.deny_reason().as_deref() != Some("userinfo") {
            failures.push(format!("{raw:?}: {:?}", resp.deny_reason()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(v4.connections(), 0);
    assert_eq!(v6.connections(), 0);
    assert_eq!(proxy.connect_attempts(), 0.0);
    assert_eq!(
        proxy.metric(
            "aibox_egress_decisions_total",
            &[("decision", "deny"), ("reason", "metadata")]
        ),
        12.0
    );
}

#[tokio::test]
async fn malformed_and_mismatched_requests_are_refused() {
    let recorder = Recorder::start("127.0.0.2:0".parse().unwrap()).await;
    let port = recorder.addr.port();
    let dns = TestDns::start(vec![("origin.test", fixed(&["127.0.0.2"]))]).await;
    let proxy = RunningProxy::start(&loopback_config(dns.addr, port, &["127.0.0.2/32"], "")).await;
    let cases = [
        (format!("GET http://origin.test:{port}/ HTTP/1.1\r\nHost: other.test\r\n\r\n"), 403, "host_mismatch"),
        (format!("GET http://origin.test:{port}/ HTTP/1.1\r\nHost: origin.test\r\n\r\n"), 403, "host_mismatch"),
        (format!("CONNECT origin.test:{port} HTTP/1.1\r\nHost: 127.0.0.2:{port}\r\n\r\n"), 403, "host_mismatch"),
        (format!("GET http://origin.test:{port}/ HTTP/1.1\r\nHost: origin.test:{port}\r\nHost: origin.test:{port}\r\n\r\n"), 400, "bad_request"),
        ("GET https://origin.test/ HTTP/1.1\r\n\r\n".to_string(), 403, "scheme_not_allowed"),
        ("GET ftp://origin.test/ HTTP/1.1\r\n\r\n".to_string(), 403, "scheme_not_allowed"),
        ("GET /index.html HTTP/1.1\r\nHost: origin.test\r\n\r\n".to_string(), 400, "bad_request"),
        ("CONNECT origin.test HTTP/1.1\r\n\r\n".to_string(), 400, "bad_request"),
        ("GET http://origin.test:1/ HTTP/1.1\r\n\r\n".to_string(), 403, "port_not_allowed"),
        ("CONNECT origin.test:22 HTTP/1.1\r\n\r\n".to_string(), 403, "port_not_allowed"),
        ("NOT HTTP AT ALL\r\n\r\n".to_string(), 400, "bad_request"),
        ("GET http://exa mple.test/ HTTP/1.1\r\n\r\n".to_string(), 400, "bad_request"),
        (format!("POST http://origin.test:{port}/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"), 400, "bad_request"),
        (format!("POST http://origin.test:{port}/ HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"), 400, "bad_request"),
        (format!("POST http://origin.test:{port}/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), 400, "bad_request"),
    ];
    let mut failures = Vec::new();
    for (raw, status, reason) in &cases {
        let resp = proxy.exchange(raw).await;
        if resp.status != *status || resp.deny_reason().as_deref() != Some(*reason) {
            failures.push(format!(
                "{raw:?}: {} {:?}, want {status} {reason}",
                resp.status,
                resp.deny_reason()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(recorder.connections(), 0);
    assert_eq!(proxy.connect_attempts(), 0.0);
}

#[tokio::test]
async fn report_mode_relaxes_name_rules_but_never_address_rules() {
    let origin = Origin::start("127.0.0.2").await;
    let port = origin.addr.port();
    let dns = TestDns::start(vec![
        ("blocked.test", fixed(&["127.0.0.2"])),
        ("metadata.test", fixed(&["169.254.169.254"])),
    ])
    .await;
    let extra = "deny_domains = [\"blocked.test\"]\n[client_modes]\nauditor = \"report\"\n";
    let proxy =
        RunningProxy::start(&loopback_config(dns.addr, port, &["127.0.0.2/32"], extra)).await;

    // Anonymous clients get the default (enforce) mode.
    let anonymous = proxy.get(&format!("http://blocked.test:{port}/")).await;
    assert_eq!(anonymous.deny_reason().as_deref(), Some("denied_domain"));

    // auditor:x in Basic form.
    let auth = "Proxy-Authorization: Basic YXVkaXRvcjp4\r\n";
    let reported = proxy
        .exchange(&format!(
            "GET http://blocked.test:{port}/seen HTTP/1.1\r\n{auth}\r\n"
        ))
        .await;
    assert_eq!(reported.status, 200, "{reported:?}");
    assert!(reported.body.contains("GET /seen"));
    assert_eq!(
        proxy.metric(
            "aibox_egress_decisions_total",
            &[("decision", "would_deny"), ("reason", "denied_domain")]
        ),
        1.0
    );

    for target in ["metadata.test".to_string(), "169.254.169.254".to_string()] {
        let resp = proxy
            .exchange(&format!(
                "GET http://{target}:{port}/ HTTP/1.1\r\n{auth}\r\n"
            ))
            .await;
        assert_eq!(resp.status, 403, "{target}: {resp:?}");
        assert_eq!(resp.deny_reason().as_deref(), Some("metadata"));
    }
}

#[tokio::test]
async fn redirects_are_passed_back_and_each_hop_is_judged_afresh() {
    let origin = Origin::start("127.0.0.2").await;
    let port = origin.addr.port();
    let dns = TestDns::start(vec![("origin.test", fixed(&["127.0.0.2"]))]).await;
    let proxy = RunningProxy::start(&loopback_config(dns.addr, port, &["127.0.0.2/32"], "")).await;
    let hop1 = proxy
        .get(&format!(
            "http://origin.test:{port}/redirect?to=http://169.254.169.254/latest/meta-data/"
        ))
        .await;
    assert_eq!(hop1.status, 302, "{hop1:?}");
    let location = hop1.header("location").unwrap();
    assert_eq!(location, "http://169.254.169.254/latest/meta-data/");
    let hop2 = proxy.get(&location).await;
    assert_eq!(hop2.status, 403);
    assert_eq!(hop2.deny_reason().as_deref(), Some("metadata"));
    assert_eq!(proxy.connect_attempts(), 1.0);
}

#[tokio::test]
async fn the_edge_itself_is_not_reachable_through_the_proxy() {
    let dns = TestDns::start(vec![("localhost", fixed(&["127.0.0.1"]))]).await;
    // Even a config that allows all of loopback may not reach the proxy's own listener address.
    let proxy = RunningProxy::start(&loopback_config(dns.addr, 1, &["127.0.0.0/8"], "")).await;
    let own = proxy.addr;
    for target in [format!("{}:443", own.ip()), "localhost:80".to_string()] {
        let resp = proxy.connect(&target).await;
        assert_eq!(
            resp.deny_reason().as_deref(),
            Some("edge_address"),
            "{target}: {resp:?}"
        );
    }
    assert_eq!(proxy.connect_attempts(), 0.0);
}

#[tokio::test]
async fn tunnels_are_limited_in_number_and_idle_time() {
    let origin = Origin::start("127.0.0.2").await;
    let port = origin.addr.port();
    let dns = TestDns::start(vec![]).await;
    let proxy = RunningProxy::start(&loopback_config(
        dns.addr,
        port,
        &["127.0.0.2/32"],
        "max_tunnels = 1\nidle_timeout_secs = 1",
    ))
    .await;
    let mut first = TcpStream::connect(proxy.addr).await.unwrap();
    first
        .write_all(format!("CONNECT 127.0.0.2:{port} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    let second = proxy.connect(&format!("127.0.0.2:{port}")).await;
    assert_eq!(second.status, 403);
    assert_eq!(second.deny_reason().as_deref(), Some("too_many_tunnels"));

    // Silent for longer than the idle timeout: the proxy closes the tunnel.
    let closed = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    for _ in 0..50 {
        if proxy.metric("aibox_egress_open_tunnels", &[]) == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let third = proxy.connect(&format!("127.0.0.2:{port}")).await;
    assert_eq!(third.status, 200, "{third:?}");
}

#[tokio::test]
async fn an_unreachable_dns_server_is_a_dns_failure() {
    // A bound but silent UDP socket: queries go unanswered until the timeout.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let proxy = RunningProxy::start(&format!(
        "dns_servers = [\"{}\"]\ndns_timeout_ms = 300\n",
        silent.local_addr().unwrap()
    ))
    .await;
    let resp = proxy.get("http://slow.test/").await;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.deny_reason().as_deref(), Some("dns_failure"));
    assert_eq!(proxy.connect_attempts(), 0.0);
}

#[tokio::test]
async fn config_errors_name_the_key() {
    let registry = prometheus::Registry::new();
    for (toml_src, key) in [
        (
            "dns_servers = [\"resolver.example\"]",
            "egress.dns_servers[0]",
        ),
        ("allow_cidrs = [\"127.0.0.0/8\"]", "egress.allow_cidrs[0]"),
        ("max_tunnels = 0", "egress.max_tunnels"),
    ] {
        let config: egress::EgressConfig = toml::from_str(toml_src).unwrap();
        let err = egress::EgressProxy::new(config, &registry)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(key), "{toml_src}: {err}");
    }
    let unknown = toml::from_str::<egress::EgressConfig>("no_such_key = 1").unwrap_err();
    assert!(unknown.to_string().contains("no_such_key"), "{unknown}");
}

#[tokio::test]
async fn an_allowed_address_that_refuses_is_a_bad_gateway() {
    // A port on 127.0.0.2 with nothing listening (bound, then released).
    let port = {
        let probe = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        probe.local_addr().unwrap().port()
    };
    let dns = TestDns::start(vec![("closed.test", fixed(&["127.0.0.2"]))]).await;
    let proxy = RunningProxy::start(&loopback_config(dns.addr, port, &["127.0.0.2/32"], "")).await;
    let resp = proxy.get(&format!("http://closed.test:{port}/")).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(
        resp.header("X-Aibox-Egress-Error").as_deref(),
        Some("connect_failed")
    );
    assert_eq!(resp.deny_reason(), None);
    assert_eq!(proxy.connect_attempts(), 1.0);
}

/// Issue 13: with `allow_cidrs` opening a translation prefix (an IPv6-only host behind NAT64),
/// the IPv4 address inside is still judged by every rule. No case may start a connection.
#[tokio::test]
async fn translated_addresses_are_judged_as_the_ipv4_they_carry() {
    let dns = TestDns::start(vec![]).await;
    let proxy = RunningProxy::start(&format!(
        "dns_servers = [\"{}\"]\n\
         allow_cidrs = [\"64:ff9b::/96\", \"2002::/16\", \"64:ff9b:1::/64\"]\n\
         deny_cidrs = [\"93.184.216.0/24\"]\n\
         edge_addresses = [\"93.184.215.14\"]\n\
         nat64_prefixes = [\"2a00:1450:64::/96\"]\n",
        dns.addr
    ))
    .await;
    let cases: &[(&str, &str)] = &[
        // The two requests from the SSRF corpus, verbatim.
        (
            "GET http://[64:ff9b::a00:1]/ HTTP/1.1\r\n\r\n",
            "private_range",
        ),
        ("CONNECT [64:ff9b::7f00:1]:443 HTTP/1.1\r\n\r\n", "loopback"),
        // NAT64 and 6to4 forms of a deny_cidrs entry (93.184.216.34).
        (
            "GET http://[64:ff9b::5db8:d822]/ HTTP/1.1\r\n\r\n",
            "denied_cidr",
        ),
        (
            "CONNECT [64:ff9b::93.184.216.34]:443 HTTP/1.1\r\n\r\n",
            "denied_cidr",
        ),
        (
            "CONNECT [2002:5db8:d822::1]:443 HTTP/1.1\r\n\r\n",
            "denied_cidr",
        ),
        // NAT64 and 6to4 forms of an edge address (93.184.215.14).
        (
            "GET http://[64:ff9b::5db8:d70e]/ HTTP/1.1\r\n\r\n",
            "edge_address",
        ),
        (
            "CONNECT [2002:5db8:d70e::]:443 HTTP/1.1\r\n\r\n",
            "edge_address",
        ),
        // Metadata and other built-in ranges inside the opened prefixes.
        (
            "GET http://[64:ff9b::a83f:8110]/ HTTP/1.1\r\n\r\n",
            "metadata",
        ),
        (
            "CONNECT [2002:a9fe:a9fe::]:443 HTTP/1.1\r\n\r\n",
            "metadata",
        ),
        (
            "CONNECT [2002:c0a8:101::]:443 HTTP/1.1\r\n\r\n",
            "private_range",
        ),
        ("CONNECT [2002:6464:6464::]:443 HTTP/1.1\r\n\r\n", "tailnet"),
        // An operator's /64 NAT64 prefix inside the local-use prefix (RFC 6052 position after
        // the u octet): 10.0.0.1.
        (
            "CONNECT [64:ff9b:1:0:a:0:100::]:443 HTTP/1.1\r\n\r\n",
            "private_range",
        ),
        // The host network's own NAT64 prefix (nat64_prefixes): global unicast, so nothing but
        // the embedded address can deny it.
        (
            "GET http://[2a00:1450:64::a00:1]/ HTTP/1.1\r\n\r\n",
            "private_range",
        ),
        (
            "CONNECT [2a00:1450:64::7f00:1]:443 HTTP/1.1\r\n\r\n",
            "loopback",
        ),
        // Prefixes not opened keep their own reason around a public address.
        ("CONNECT [::ffff:808:808]:443 HTTP/1.1\r\n\r\n", "reserved"),
        (
            "CONNECT [2001:0:808:808::]:443 HTTP/1.1\r\n\r\n",
            "reserved",
        ),
    ];
    let mut failures = Vec::new();
    for (raw, want) in cases {
        let resp = proxy.exchange(raw).await;
        if resp.status != 403 || resp.deny_reason().as_deref() != Some(*want) {
            failures.push(format!(
                "{raw:?}: {} {:?}, want 403 {want}",
                resp.status,
                resp.deny_reason()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(proxy.connect_attempts(), 0.0);
}

/// The check that keeps loopback out of `allow_cidrs` reads entries through their IPv4
/// embedding; a whole translation prefix stays allowed (it clears only its own `reserved`).
#[test]
fn allow_cidrs_cannot_reach_loopback_through_an_embedding() {
    let registry = prometheus::Registry::new();
    for entry in [
        "64:ff9b::7f00:0/104",
        "64:ff9b::7f00:1",
        "::ffff:127.0.0.1",
        "::ffff:0:0/97",
        "2002:7f00::/24",
        "2001:0:7f00::/40",
        "64:ff9b:1::7f00:0/104",
        "2a00:1450::5efe:7f00:1",
    ] {
        let config: egress::EgressConfig =
            toml::from_str(&format!("allow_cidrs = [\"10.9.0.0/16\", \"{entry}\"]")).unwrap();
        let err = egress::EgressProxy::new(config, &registry)
            .err()
            .unwrap_or_else(|| panic!("{entry} was accepted"))
            .to_string();
        assert!(err.contains("egress.allow_cidrs[1]"), "{entry}: {err}");
        assert!(err.contains("loopback"), "{entry}: {err}");
    }
    for entry in [
        "64:ff9b::/96",
        "2002::/16",
        "64:ff9b:1::/48",
        "64:ff9b:1:abcd::/64",
        "2000::/3",
    ] {
        let config: egress::EgressConfig =
            toml::from_str(&format!("allow_cidrs = [\"{entry}\"]")).unwrap();
        assert!(
            egress::EgressProxy::new(config, &prometheus::Registry::new()).is_ok(),
            "{entry} was refused"
        );
    }
}

/// Every provider's metadata and host-service address, in every spelling, holds against an
/// `allow_cidrs` that opens the ranges around them.
#[tokio::test]
async fn cloud_metadata_addresses_hold_against_allow_cidrs() {
    let dns = TestDns::start(vec![
        ("metadata.google.internal", fixed(&["169.254.169.254"])),
        ("wireserver.test", fixed(&["168.63.129.16"])),
    ])
    .await;
    let proxy = RunningProxy::start(&format!(
        "dns_servers = [\"{}\"]\n\
         allow_cidrs = [\"169.254.0.0/16\", \"192.0.0.0/24\", \"100.64.0.0/10\", \
         \"fd00::/8\", \"fe80::/10\", \"64:ff9b::/96\"]\n",
        dns.addr
    ))
    .await;
    let hosts = [
        "169.254.169.254",
        "169.254.170.2",
        "169.254.170.23",
        "169.254.169.123",
        "169.254.169.253",
        "168.63.129.16",
        "192.0.0.192",
        "100.100.100.200",
        "[fd00:ec2::254]",
        "[fd00:ec2::23]",
        "[fd00:ec2::123]",
        "[fd00:ec2::253]",
        "[fd20:ce::254]",
        "[64:ff9b::a83f:8110]",
        "[::ffff:168.63.129.16]",
        "metadata.google.internal",
        "wireserver.test",
    ];
    let mut failures = Vec::new();
    for host in hosts {
        for raw in [
            format!("GET http://{host}/ HTTP/1.1\r\n\r\n"),
            format!("CONNECT {host}:443 HTTP/1.1\r\n\r\n"),
        ] {
            let resp = proxy.exchange(&raw).await;
            if resp.deny_reason().as_deref() != Some("metadata") {
                failures.push(format!("{raw:?}: {} {:?}", resp.status, resp.deny_reason()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(proxy.connect_attempts(), 0.0);
}

/// Issue 13: a name whose CNAME chain reaches `deny_domains` is that denied domain.
#[tokio::test]
async fn a_name_that_cnames_into_a_denied_domain_is_denied() {
    let origin = Origin::start("127.0.0.2").await;
    let port = origin.addr.port();
    let dns = TestDns::start_with_cnames(
        vec![
            ("cdn.blocked.test", fixed(&["127.0.0.2"])),
            ("cdn.fine.test", fixed(&["127.0.0.2"])),
        ],
        vec![
            ("alias.test", "cdn.blocked.test"),
            ("hop.test", "mid.test"),
            ("mid.test", "cdn.blocked.test"),
            ("ok.test", "cdn.fine.test"),
        ],
    )
    .await;
    let extra = "deny_domains = [\"*.blocked.test\"]\n[client_modes]\nauditor = \"report\"\n";
    let proxy =
        RunningProxy::start(&loopback_config(dns.addr, port, &["127.0.0.2/32"], extra)).await;

    for name in ["alias.test", "hop.test"] {
        let http = proxy.get(&format!("http://{name}:{port}/")).await;
        assert_eq!(http.status, 403, "{name}: {http:?}");
        assert_eq!(http.deny_reason().as_deref(), Some("denied_domain"));
        let tunnel = proxy.connect(&format!("{name}:{port}")).await;
        assert_eq!(tunnel.deny_reason().as_deref(), Some("denied_domain"));
    }
    assert_eq!(proxy.connect_attempts(), 0.0);
    assert_eq!(origin.requests.lock().unwrap().len(), 0);

    // A chain that stays clear of the deny list goes through.
    let fine = proxy.get(&format!("http://ok.test:{port}/fine")).await;
    assert_eq!(fine.status, 200, "{fine:?}");

    // Like any domain rule, report mode relaxes it (and logs would_deny).
    let reported = proxy
        .exchange(&format!(
            "GET http://alias.test:{port}/seen HTTP/1.1\r\nProxy-Authorization: Basic YXVkaXRvcjp4\r\n\r\n"
        ))
        .await;
    assert_eq!(reported.status, 200, "{reported:?}");
    assert_eq!(
        proxy.metric(
            "aibox_egress_decisions_total",
            &[("decision", "would_deny"), ("reason", "denied_domain")]
        ),
        1.0
    );
}

/// Issue 13: the 64 KiB limit is on the whole head, also when it arrives in one piece.
#[tokio::test]
async fn the_head_limit_covers_the_whole_head() {
    let origin = Origin::start("127.0.0.2").await;
    let port = origin.addr.port();
    let dns = TestDns::start(vec![("origin.test", fixed(&["127.0.0.2"]))]).await;
    let proxy = RunningProxy::start(&loopback_config(dns.addr, port, &["127.0.0.2/32"], "")).await;

    let long_line = format!(
        "GET http://origin.test:{port}/{} HTTP/1.1\r\n\r\n",
        "a".repeat(70_000)
    );
    let resp = proxy.exchange(&long_line).await;
    assert_eq!(resp.status, 431, "{}", resp.head);
    assert_eq!(resp.deny_reason().as_deref(), Some("head_too_large"));

    let many_headers = format!(
        "GET http://origin.test:{port}/ HTTP/1.1\r\n{}\r\n",
        format!("X-Pad: {}\r\n", "b".repeat(1_000)).repeat(70)
    );
    let resp = proxy.exchange(&many_headers).await;
    assert_eq!(resp.status, 431, "{}", resp.head);
    assert_eq!(proxy.connect_attempts(), 0.0);
    assert_eq!(origin.requests.lock().unwrap().len(), 0);

    // Just under the limit is still a request.
    let fits = format!(
        "GET http://origin.test:{port}/{} HTTP/1.1\r\n\r\n",
        "a".repeat(60_000)
    );
    let resp = proxy.exchange(&fits).await;
    assert_eq!(resp.status, 200, "{}", resp.head);
}

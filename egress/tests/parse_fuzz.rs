//! Property tests over the request-line, CONNECT and host parsing: arbitrary input never
//! panics, and whatever parses to an address is classified by that address.

use egress::host::{parse_host, Host};
use egress::request::{
    check_host_header, parse_authority, parse_connect_target, parse_head, parse_target,
    request_framing, response_framing,
};
use egress::{classify::classify, Framing};
use proptest::prelude::*;

/// Strings built from the characters that matter to URL and authority parsing.
fn urlish() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("http://".to_string()),
            Just("https://".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just(":".to_string()),
            Just("@".to_string()),
            Just(".".to_string()),
            Just("/".to_string()),
            Just("\\".to_string()),
            Just("%".to_string()),
            Just("#".to_string()),
            Just("?".to_string()),
            Just("0x".to_string()),
            Just("::ffff:".to_string()),
            Just("127".to_string()),
            Just("0".to_string()),
            Just("。".to_string()),
            Just("ｆ".to_string()),
            Just("xn--".to_string()),
            "[0-9a-fA-F]{1,4}",
            "[a-z]{1,6}",
            any::<char>().prop_map(String::from),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn request_heads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(Some((head, len))) = parse_head(&bytes) {
            prop_assert!(len <= bytes.len());
            let _ = request_framing(&head);
            if let Ok(target) = parse_target(&head.method, &head.target) {
                let _ = check_host_header(&head, &target);
            }
        }
    }

    #[test]
    fn request_lines_never_panic(method in "(GET|CONNECT|POST|[A-Z]{1,7})", target in urlish(), host in urlish()) {
        let raw = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n");
        if let Ok(Some((head, _))) = parse_head(raw.as_bytes()) {
            let _ = request_framing(&head);
            if let Ok(t) = parse_target(&head.method, &head.target) {
                let _ = check_host_header(&head, &t);
                prop_assert!(t.port() != 0);
            }
        }
    }

    #[test]
    fn connect_targets_never_panic(target in urlish()) {
        if let Ok(t) = parse_connect_target(&target) {
            prop_assert!(t.port() != 0);
            prop_assert!(!target.contains('@'));
        }
        let _ = parse_authority(&target);
    }

    /// Whatever a host parses to prints back to the same host: no second reading of a host
    /// can disagree with the one the policy judged.
    #[test]
    fn parsed_hosts_round_trip(raw in urlish()) {
        if let Ok(host) = parse_host(&raw) {
            let printed = host.to_string();
            prop_assert_eq!(parse_host(&printed), Ok(host.clone()));
            if let Host::Ip(ip) = host {
                let _ = classify(ip);
            }
        }
    }

    #[test]
    fn every_ipv4_spelling_is_judged_as_its_address(a in any::<u32>(), style in 0u8..4) {
        let spelled = match style {
            0 => a.to_string(),
            1 => format!("{:#x}", a),
            2 => format!("0{:o}", a),
            _ => {
                let [w, x, y, z] = a.to_be_bytes();
                format!("{w}.{x}.{}", u16::from_be_bytes([y, z]))
            }
        };
        let want = std::net::IpAddr::V4(a.into());
        prop_assert_eq!(parse_host(&spelled), Ok(Host::Ip(want)));
    }

    #[test]
    fn response_framing_never_panics(status in 0u16..1000, cl in "[0-9, ]{0,24}", te in "(chunked|gzip|, |identity){0,3}") {
        let headers = vec![
            ("Content-Length".to_string(), cl.into_bytes()),
            ("Transfer-Encoding".to_string(), te.into_bytes()),
        ];
        let f = response_framing("GET", status, &headers);
        if status == 204 || status == 304 {
            prop_assert_eq!(f, Framing::None);
        }
    }
}

//! The OpenClaw facts on its Services card: where its UI is, and how the config sync
//! (`openclaw-sync`, a one-shot that exits) last ended. See docs/openclaw.md.
use maud::{html, Markup};

use crate::backend::ServiceStatus;

/// The service whose card gets these facts, and the one-shot that prepares its config.
pub const SERVICE: &str = "openclaw";
pub const SYNC_SERVICE: &str = "openclaw-sync";

/// The UI's address on the host, from the published port (loopback only in the bundle).
pub fn ui_url(s: &ServiceStatus) -> Option<String> {
    let p = s
        .ports
        .iter()
        .find(|p| p.public.is_some() && p.private == 18789)?;
    let ip =
        p.ip.as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "0.0.0.0")
            .unwrap_or("127.0.0.1");
    Some(format!("http://{ip}:{}/", p.public?))
}

/// The sync's last result in words: the one-shot's exit as Docker reports it.
pub fn sync_result(sync: Option<&ServiceStatus>) -> (&'static str, String) {
    match sync {
        None => (
            "warn",
            "not run (start the openclaw profile with ./aibox up)".into(),
        ),
        Some(s) if s.state == "running" => ("warn", "running".into()),
        Some(s) if s.status.contains("Exited (0)") => ("good", s.status.clone()),
        Some(s) if s.state == "exited" => (
            "bad",
            format!(
                "{} — see its logs; openclaw.json was left untouched",
                s.status
            ),
        ),
        Some(s) => (
            "warn",
            if s.status.is_empty() {
                s.state.clone()
            } else {
                s.status.clone()
            },
        ),
    }
}

/// Extra `dt`/`dd` pairs for the OpenClaw card.
pub fn facts(s: &ServiceStatus, sync: Option<&ServiceStatus>) -> Markup {
    let (class, text) = sync_result(sync);
    html! {
        dt { "UI" }
        dd {
            @match ui_url(s) {
                Some(url) => a href=(url) rel="noopener" target="_blank" { (url) },
                None => span.muted { "not published" },
            }
        }
        dt { "Config sync" }
        dd { span class={ "badge " (class) } { (text) } }
    }
}

/// The browser worker's card links its egress decisions (`/egress`).
pub const BROWSER_SERVICE: &str = "browser";

pub fn browser_facts() -> Markup {
    html! {
        dt { "Egress" }
        dd { a href="/egress" { "decisions by reason" } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::PortBinding;

    fn svc(name: &str, state: &str, status: &str) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            state: state.into(),
            status: status.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_ui_link_comes_from_the_published_port() {
        let mut s = svc("openclaw", "running", "Up 2 minutes");
        assert_eq!(ui_url(&s), None);
        s.ports = vec![PortBinding {
            private: 18789,
            public: Some(6666),
            ip: Some("127.0.0.1".into()),
            ..Default::default()
        }];
        assert_eq!(ui_url(&s).as_deref(), Some("http://127.0.0.1:6666/"));
    }

    #[test]
    fn the_sync_result_reads_the_one_shot_exit() {
        assert_eq!(
            sync_result(Some(&svc(
                "openclaw-sync",
                "exited",
                "Exited (0) 3 minutes ago"
            )))
            .0,
            "good"
        );
        let (class, text) = sync_result(Some(&svc(
            "openclaw-sync",
            "exited",
            "Exited (1) 1 minute ago",
        )));
        assert_eq!(class, "bad");
        assert!(text.contains("left untouched"), "{text}");
        assert_eq!(sync_result(None).0, "warn");
        let page = facts(&svc("openclaw", "running", ""), None).into_string();
        assert!(
            page.contains("Config sync") && page.contains("not published"),
            "{page}"
        );
    }
}

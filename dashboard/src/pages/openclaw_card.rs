//! Service-specific facts on the Services cards: where the web UIs are (OpenClaw, Open WebUI,
//! n8n, ComfyUI: their loopback ports), how OpenClaw's config sync (`openclaw-sync`, a one-shot
//! that exits) last ended (docs/openclaw.md), and the browser's egress page.
use maud::{html, Markup};

use crate::backend::ServiceStatus;

/// The service whose card gets these facts, and the one-shot that prepares its config.
pub const SERVICE: &str = "openclaw";
pub const SYNC_SERVICE: &str = "openclaw-sync";

/// The UI's address on the host, from the published port (loopback only in the bundle).
pub fn ui_url(s: &ServiceStatus) -> Option<String> {
    published_url(s, 18789)
}

/// The other services people use through their own web UI, and the container port it listens
/// on: the compose file publishes each on 127.0.0.1 (docs/third-party-services.md). ComfyUI is
/// reached only this way, never through the model gateway.
const WEB_UIS: &[(&str, u16)] = &[("open-webui", 8080), ("n8n", 5678), ("comfyui", 8188)];

/// `http://IP:PORT/` of a container port as published on the host (0.0.0.0 shown as loopback).
fn published_url(s: &ServiceStatus, private: u16) -> Option<String> {
    let p = s
        .ports
        .iter()
        .find(|p| p.public.is_some() && p.private == private)?;
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

/// A "UI" link on the card of a service with its own web UI (Open WebUI, n8n, ComfyUI).
pub fn web_ui_facts(s: &ServiceStatus) -> Option<Markup> {
    let &(_, private) = WEB_UIS.iter().find(|(name, _)| *name == s.name)?;
    Some(html! {
        dt { "UI" }
        dd {
            @match published_url(s, private) {
                Some(url) => a href=(url) rel="noopener" target="_blank" { (url) },
                None => span.muted { "not published" },
            }
        }
    })
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
    fn the_web_uis_are_linked_from_their_published_ports() {
        let mut s = svc("comfyui", "running", "Up 2 minutes");
        s.ports = vec![PortBinding {
            private: 8188,
            public: Some(8188),
            ip: Some("127.0.0.1".into()),
            ..Default::default()
        }];
        let html = web_ui_facts(&s).expect("comfyui has a UI").into_string();
        assert!(html.contains(r#"href="http://127.0.0.1:8188/""#), "{html}");
        s.ports.clear();
        assert!(web_ui_facts(&s)
            .unwrap()
            .into_string()
            .contains("not published"));
        assert!(web_ui_facts(&svc("edge", "running", "")).is_none());
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

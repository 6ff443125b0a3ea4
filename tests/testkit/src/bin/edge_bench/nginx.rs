//! The floor: Debian's nginx as a plain keep-alive reverse proxy in front of the same fake
//! upstream, i.e. what one proxy hop costs on this machine. Installed with apt-get when missing.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::proc_stat::running_as_root;

/// An nginx master (and its workers) of the benchmark's own, stopped when dropped. Two
/// listeners: `buffered` with nginx's defaults for whole responses, `streaming` with
/// `proxy_buffering off` so each event is passed on as it arrives.
pub struct Nginx {
    child: Child,
    pub buffered: String,
    pub streaming: String,
}

impl Nginx {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then stops its workers instead of orphaning them.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// The nginx binary, installing Debian's `nginx-light` when there is none. `Err` says why
/// there is no nginx row.
fn nginx_binary(asked: Option<&str>) -> Result<PathBuf, String> {
    if let Some(path) = asked {
        return Ok(PathBuf::from(path));
    }
    let found = || {
        ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(p) = found() {
        return Ok(p);
    }
    eprintln!("nginx is not installed; installing Debian's nginx-light for the floor row");
    let install = || {
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "nginx-light",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get")
            .args(["update", "-q"])
            .stdout(Stdio::null())
            .status();
        install();
    }
    found().ok_or_else(|| "nginx is not installed and `apt-get install nginx-light` failed".into())
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// The config: upstream keep-alive over HTTP/1.1, no access log, keep-alive limits high
/// enough that no client or upstream connection is closed during a run.
fn config(dir: &Path, upstream: &str, buffered: u16, streaming: u16) -> String {
    let dir = dir.display();
    let user = if running_as_root() {
        "user root;\n"
    } else {
        ""
    };
    let server = |port: u16, buffering: &str| {
        format!(
            "  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      \
             proxy_pass http://fake;\n      proxy_http_version 1.1;\n      \
             proxy_set_header Connection \"\";\n      proxy_buffering {buffering};\n    }}\n  }}\n"
        )
    };
    format!(
        "{user}daemon off;\nworker_processes auto;\npid {dir}/nginx.pid;\n\
         error_log {dir}/nginx-error.log warn;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n  \
         client_body_temp_path {dir}/nginx-body;\n  proxy_temp_path {dir}/nginx-proxy;\n  \
         fastcgi_temp_path {dir}/nginx-fastcgi;\n  uwsgi_temp_path {dir}/nginx-uwsgi;\n  \
         scgi_temp_path {dir}/nginx-scgi;\n  \
         upstream fake {{\n    server {upstream};\n    keepalive 128;\n    \
         keepalive_requests 100000000;\n    keepalive_timeout 300s;\n  }}\n{}{}}}\n",
        server(buffered, "on"),
        server(streaming, "off"),
    )
}

/// Starts nginx in front of `upstream` (host:port), its config and files in `dir`.
pub fn start(asked: Option<&str>, dir: &Path, upstream: &str) -> Result<Nginx, String> {
    let bin = nginx_binary(asked)?;
    let (buffered, streaming) = (free_port()?, free_port()?);
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config(dir, upstream, buffered, streaming)).map_err(|e| e.to_string())?;
    let child = Command::new(&bin)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let nginx = Nginx {
        child,
        buffered: format!("127.0.0.1:{buffered}"),
        streaming: format!("127.0.0.1:{streaming}"),
    };
    for _ in 0..500 {
        let up = |port| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if up(buffered) && up(streaming) {
            return Ok(nginx);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default();
    Err(format!("nginx did not listen: {}", log.trim()))
}

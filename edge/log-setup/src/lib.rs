//! One logging set-up for the edge, the controller and the dashboard, so that all three write
//! the same lines: JSON objects (one per line, fields flattened) when stdout is not a terminal —
//! containers, pipes, tests — and human-readable, coloured lines only on a terminal. `LOG_FORMAT`
//! (`--log-format`) overrides the choice; `RUST_LOG` overrides the level filter.
pub mod secret_files;

use std::io::IsTerminal;
use std::str::FromStr;

use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// `--log-format` / `LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// JSON unless stdout is a terminal.
    #[default]
    Auto,
    Json,
    /// Readable lines; coloured only when stdout is a terminal.
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Self::Auto),
            "json" => Ok(Self::Json),
            // `text` was the dashboard's name for it.
            "pretty" | "text" => Ok(Self::Pretty),
            other => Err(format!(
                "unknown log format {other:?} (expected auto, json or pretty)"
            )),
        }
    }
}

/// What the lines look like, decided from the format and where stdout goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    pub json: bool,
    pub ansi: bool,
}

impl LogFormat {
    /// Escape codes only ever reach a terminal (and not even one when `NO_COLOR` is set), so a
    /// log collected from a container or a pipe never carries them.
    pub fn output(self, stdout_is_terminal: bool, no_color: bool) -> Output {
        let json = match self {
            Self::Auto => !stdout_is_terminal,
            Self::Json => true,
            Self::Pretty => false,
        };
        Output {
            json,
            ansi: !json && stdout_is_terminal && !no_color,
        }
    }
}

/// Events that are normal operation but come at a level that says otherwise, from code we do not
/// own. Pingora's connection pool logs "failed to acquire reusable stream" at ERROR when a pooled
/// keep-alive connection (to the dashboard) is picked up on one worker thread in the instant
/// after another thread's idle watcher released its lock but before it dropped its handle
/// (tokio's `OwnedMutexGuard` unlocks before it drops its `Arc`): the pool just opens a new
/// connection, nothing fails. It is the only `error!` in `pingora_core::connectors`.
fn is_known_noise(meta: &Metadata<'_>) -> bool {
    *meta.level() == Level::ERROR && meta.target() == "pingora_core::connectors"
}

/// `<label> listening on <addr>` on stderr, the line tests and scripts wait for, written with one
/// `write` so that log lines on stdout (the same pipe, in tests) cannot split it.
pub fn announce_listening(label: &str, addr: impl std::fmt::Display) {
    use std::io::Write;
    let line = format!("{label} listening on {addr}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Install the global subscriber (and the bridge for crates that use `log`, such as Pingora).
/// `default_filter` applies when `RUST_LOG` is not set.
pub fn init(format: LogFormat, default_filter: &str) {
    let out = format.output(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
    );
    let levels =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    subscriber(out, levels, std::io::stdout).init();
}

fn subscriber<W>(out: Output, levels: EnvFilter, writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = levels.and(filter_fn(|meta| !is_known_noise(meta)));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(out.ansi);
    let layer = if out.json {
        layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed()
    } else {
        layer.boxed()
    };
    tracing_subscriber::registry().with(layer.with_filter(filter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_in_containers_colour_only_on_a_terminal() {
        let auto = LogFormat::Auto;
        assert_eq!(
            auto.output(false, false),
            Output {
                json: true,
                ansi: false
            }
        );
        assert_eq!(
            auto.output(true, false),
            Output {
                json: false,
                ansi: true
            }
        );
        assert_eq!(
            auto.output(true, true),
            Output {
                json: false,
                ansi: false
            }
        );
        let pretty = LogFormat::Pretty;
        assert_eq!(
            pretty.output(false, false),
            Output {
                json: false,
                ansi: false
            }
        );
        assert_eq!(
            LogFormat::Json.output(true, false),
            Output {
                json: true,
                ansi: false
            }
        );
    }

    /// What the subscriber wrote, one string per line.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(out: Output, emit: impl FnOnce()) -> Vec<String> {
        let captured = Captured::default();
        let sink = captured.clone();
        let sub = subscriber(out, EnvFilter::new("info"), move || sink.clone());
        tracing::subscriber::with_default(sub, emit);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn json_lines_carry_time_level_message_and_fields_at_the_top() {
        let lines = logged(
            Output {
                json: true,
                ansi: false,
            },
            || {
                tracing::info!(request_id = "r1", status = 200, "request");
                tracing::debug!("below the filter");
            },
        );
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        for key in [
            r#""timestamp":"#,
            r#""level":"INFO""#,
            r#""message":"request""#,
            r#""request_id":"r1""#,
            r#""status":200"#,
        ] {
            assert!(line.contains(key), "{key} in {line}");
        }
    }

    #[test]
    fn pingoras_reusable_stream_race_is_not_an_error_line() {
        let lines = logged(
            Output {
                json: false,
                ansi: false,
            },
            || {
                tracing::error!(target: "pingora_core::connectors", "failed to acquire reusable stream");
                tracing::error!(target: "pingora_proxy", "Fail to proxy");
            },
        );
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("Fail to proxy") && !lines[0].contains('\x1b'));
    }

    #[test]
    fn formats_parse_by_name() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!("Pretty".parse(), Ok(LogFormat::Pretty));
        assert_eq!("text".parse(), Ok(LogFormat::Pretty));
        assert_eq!("auto".parse(), Ok(LogFormat::Auto));
        assert!("xml"
            .parse::<LogFormat>()
            .unwrap_err()
            .contains("auto, json or pretty"));
    }
}

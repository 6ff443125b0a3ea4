//! What a handler learned about its request (provider, endpoint, model, upstream time, tokens,
//! error kind), handed to the gateway with the response for the log line, the metrics and
//! `Server-Timing`.
//!
//! A handler puts an `Outcome` into its response's extensions (`Outcome::attach`); the layers
//! around it fill in what they know (the surface, the matched route). A streamed body learns
//! its tokens and errors only as it goes: its relay hands the final `Tally` over through a
//! `StreamEnd`, a one-shot cell the gateway reads once the body is finished.
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::response::Response;

#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub surface: &'static str,
    /// The matched route template (`/v1/chat/completions`), a bounded metric label.
    pub route: Option<String>,
    pub provider: Option<String>,
    /// The endpoint that answered (the last one tried, after a failover).
    pub endpoint: Option<String>,
    pub model: Option<String>,
    pub upstream_time: Option<Duration>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// `EdgeError::kind()` of the failure, when the request failed.
    pub error: Option<&'static str>,
    /// The tallies of the relays streaming the body, filled in when each one ends.
    pub streams: Vec<StreamEnd>,
}

impl Outcome {
    /// The outcome of a request on `surface` (`openai`, `ollama`, `anthropic`).
    pub fn on(surface: &'static str) -> Self {
        Outcome {
            surface,
            ..Outcome::default()
        }
    }

    pub fn failed(kind: &'static str) -> Self {
        Outcome {
            error: Some(kind),
            ..Outcome::default()
        }
    }

    /// The response's outcome, created empty when it has none yet.
    pub fn of(resp: &mut Response) -> &mut Outcome {
        resp.extensions_mut().get_or_insert_default::<Outcome>()
    }

    /// Puts this outcome on `resp`: what the response carries already (set deeper down, by
    /// the code that knew it first hand) is kept, and this one fills the gaps.
    pub fn attach(self, mut resp: Response) -> Response {
        Outcome::of(&mut resp).fill_from(self);
        resp
    }

    /// Takes every field `other` has and this one lacks.
    pub fn fill_from(&mut self, other: Outcome) {
        if self.surface.is_empty() {
            self.surface = other.surface;
        }
        fill(&mut self.route, other.route);
        fill(&mut self.provider, other.provider);
        fill(&mut self.endpoint, other.endpoint);
        fill(&mut self.model, other.model);
        fill(&mut self.upstream_time, other.upstream_time);
        fill(&mut self.error, other.error);
        if self.tokens_in == 0 && self.tokens_out == 0 {
            self.tokens_in = other.tokens_in;
            self.tokens_out = other.tokens_out;
        }
        self.streams.extend(other.streams);
    }

    /// Folds in the tallies of the streams that ended (read once the body is done).
    pub fn settle(&mut self) {
        for s in std::mem::take(&mut self.streams) {
            if let Some(t) = s.get() {
                if t.tokens_in > 0 || t.tokens_out > 0 {
                    self.tokens_in = t.tokens_in;
                    self.tokens_out = t.tokens_out;
                }
                if self.error.is_none() {
                    self.error = t.error;
                }
            }
        }
    }
}

fn fill<T>(slot: &mut Option<T>, other: Option<T>) {
    if slot.is_none() {
        *slot = other;
    }
}

/// What a relay counted by the end of its stream.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Tally {
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// `EdgeError::kind()` of a failure inside the stream.
    pub error: Option<&'static str>,
}

/// The one-shot handoff of a stream's `Tally`: the relay sets it once when it ends (or is
/// dropped because the client left), the gateway reads it after the body is done.
#[derive(Debug, Default, Clone)]
pub struct StreamEnd(Arc<OnceLock<Tally>>);

impl StreamEnd {
    pub fn new() -> Self {
        Self::default()
    }

    /// The first call wins; later ones are ignored.
    pub fn set(&self, tally: Tally) {
        let _ = self.0.set(tally);
    }

    pub fn get(&self) -> Option<Tally> {
        self.0.get().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deeper_fields_win_and_outer_ones_fill_gaps() {
        let inner = Outcome {
            provider: Some("local".into()),
            error: Some("upstream_timeout"),
            ..Outcome::default()
        };
        let resp = inner.attach(Response::new(axum::body::Body::empty()));
        let resp = Outcome {
            surface: "openai",
            provider: Some("other".into()),
            model: Some("m".into()),
            ..Outcome::default()
        }
        .attach(resp);
        let o = resp.extensions().get::<Outcome>().unwrap();
        assert_eq!(o.surface, "openai");
        assert_eq!(o.provider.as_deref(), Some("local"));
        assert_eq!(o.model.as_deref(), Some("m"));
        assert_eq!(o.error, Some("upstream_timeout"));
    }

    #[test]
    fn a_stream_tally_is_read_once_it_ended() {
        let end = StreamEnd::new();
        let mut o = Outcome {
            streams: vec![end.clone()],
            ..Outcome::default()
        };
        end.set(Tally {
            tokens_in: 3,
            tokens_out: 5,
            error: Some("upstream_stream_failed"),
        });
        end.set(Tally::default());
        o.settle();
        assert_eq!((o.tokens_in, o.tokens_out), (3, 5));
        assert_eq!(o.error, Some("upstream_stream_failed"));
    }
}

//! The edge's operations routes as the dashboard reads them.
use serde::{Deserialize, Serialize};

/// `GET /ready`: 200 when some provider is healthy, 503 with the same body when none is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    pub providers: Vec<ProviderReadiness>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderReadiness {
    pub name: String,
    /// `ollama` or `openai`.
    pub kind: String,
    pub healthy: bool,
    pub endpoints: Vec<EndpointReadiness>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointReadiness {
    pub url: String,
    pub healthy: bool,
    pub ejected: bool,
    pub weight: u32,
    pub in_flight: u64,
    pub consecutive_failures: u32,
    pub latency_ms: Option<f64>,
    /// `None` (JSON `null`) until the endpoint has answered a model-list probe: a down
    /// endpoint has no list, which is not the same as an empty one.
    pub models: Option<Vec<String>>,
    /// Models loaded in memory (Ollama's `/api/ps`), when known.
    pub loaded: Option<Vec<String>>,
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_down_endpoint_reads_back() {
        let body = r#"{"ready":false,"providers":[{"name":"ollama","kind":"ollama","healthy":false,
            "endpoints":[{"url":"http://ollama:11434","healthy":false,"ejected":false,"weight":1,
            "in_flight":0,"consecutive_failures":3,"latency_ms":null,"models":null,"loaded":null,
            "last_error":"connection refused"}]}]}"#;
        let r: Readiness = serde_json::from_str(body).unwrap();
        assert_eq!(r.providers[0].endpoints[0].models, None);
    }
}

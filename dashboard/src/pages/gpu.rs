//! GPU memory as Ollama reports it: `/api/ps` gives, per loaded model, its size and the part of
//! it in GPU memory (`size_vram`). It says nothing of each GPU's total or free memory, nor which
//! GPU holds what, so the bars show what the loaded models hold, and the page says so.
use maud::{html, Markup};

use super::human_bytes;
use crate::backend::LoadedModels;

/// What Ollama does not tell, said once beside the bars.
pub const VRAM_NOTE: &str = "Ollama reports the memory each loaded model holds on the GPU, not each GPU's total or free memory: the bars compare the loaded models with each other.";

/// Total bytes held in GPU memory by the loaded models.
pub fn total_vram(loaded: &LoadedModels) -> u64 {
    loaded.models.iter().map(|m| m.size_vram).sum()
}

/// A bar per loaded model: the part of it in GPU memory, the rest (on the CPU) beside it.
pub fn vram_bars(loaded: &LoadedModels) -> Markup {
    let largest = loaded
        .models
        .iter()
        .map(|m| m.size.max(m.size_vram))
        .max()
        .unwrap_or(0)
        .max(1);
    let pct = |n: u64| (n.saturating_mul(1000) / largest) as f64 / 10.0;
    html! {
        p.vram-total {
            strong { (human_bytes(total_vram(loaded))) }
            " of GPU memory held by " (loaded.models.len())
            @if loaded.models.len() == 1 { " loaded model" } @else { " loaded models" }
        }
        ul.vram-bars aria-label="GPU memory per loaded model" {
            @for m in &loaded.models {
                @let name = if m.name.is_empty() { &m.model } else { &m.name };
                @let cpu = m.size.saturating_sub(m.size_vram);
                li {
                    span.vram-name { (name) }
                    // SVG attributes, not inline styles: the CSP allows no `style` attribute.
                    svg.vram-track viewBox="0 0 100 10" preserveAspectRatio="none" role="img"
                        aria-label={ (name) ": " (human_bytes(m.size_vram)) " on the GPU, " (human_bytes(cpu)) " on the CPU" } {
                        rect.vram-bg x="0" y="0" width="100" height="10" {}
                        rect.vram-gpu x="0" y="0" width=(pct(m.size_vram)) height="10" {}
                        rect.vram-cpu x=(pct(m.size_vram)) y="0" width=(pct(cpu)) height="10" {}
                    }
                    span.vram-figure.muted {
                        (human_bytes(m.size_vram)) " GPU"
                        @if cpu > 0 { " · " (human_bytes(cpu)) " CPU" }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LoadedModel;

    #[test]
    fn bars_say_what_is_on_the_gpu_and_what_is_not() {
        let loaded = LoadedModels {
            models: vec![
                LoadedModel {
                    name: "big:70b".into(),
                    size: 40 << 30,
                    size_vram: 30 << 30,
                    ..Default::default()
                },
                LoadedModel {
                    name: "small:1b".into(),
                    size: 1 << 30,
                    size_vram: 1 << 30,
                    ..Default::default()
                },
            ],
        };
        assert_eq!(total_vram(&loaded), 31 << 30);
        let html = vram_bars(&loaded).into_string();
        assert!(html.contains("31.0 GB"), "{html}");
        assert!(
            html.contains("big:70b: 30.0 GB on the GPU, 10.0 GB on the CPU"),
            "{html}"
        );
        assert!(
            html.contains(r#"width="75""#) && html.contains(r#"width="25""#),
            "{html}"
        );
    }
}

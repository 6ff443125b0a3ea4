//! OpenClaw, the agent gateway of the `openclaw` profile: its config sync (`dashboard
//! openclaw-sync`, run once before OpenClaw starts). See docs/openclaw.md.
pub mod json5;
pub mod merge;
pub mod sync;

//! Dashboard (see issue 7). Placeholder until that issue lands.
fn main() {
    eprintln!("dashboard: not built yet");
    std::process::exit(2);
}

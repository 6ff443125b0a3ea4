//! Controller (see issue 5). Placeholder until that issue lands.
fn main() {
    eprintln!("controller: not built yet");
    std::process::exit(2);
}

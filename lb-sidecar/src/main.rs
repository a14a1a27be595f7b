//! `lb-sidecar`: not built yet (issue 3). It exits with a clear message rather than pretending.
fn main() {
    eprintln!("lb-sidecar: not implemented yet; see the lb-sidecar issue");
    std::process::exit(2);
}

//! `coordinator`: everything is in the library's [`coordinator::cli`].
#![forbid(unsafe_code)]

#[tokio::main]
async fn main() {
    coordinator::cli::main().await
}

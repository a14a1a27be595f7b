//! Writes the man pages of `agent`, `lb-sidecar` and `coordinator` (section 1, roff) into the
//! directory given, from each binary's own command-line definition: the packages ship them.
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: man-pages DIR");
        std::process::exit(2);
    }));
    std::fs::create_dir_all(&dir).expect("create the output directory");
    for (name, command) in bluegreen_tests::command_lines() {
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, coordinator::cli::man_page(command))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        println!("{}", path.display());
    }
}

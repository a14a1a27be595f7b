//! `coordinator man`: the man page (roff) from the command line's definition.

/// The roff man page of `command`.
pub fn page(command: clap::Command) -> String {
    let mut out = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut out)
        .expect("rendering into memory cannot fail");
    String::from_utf8(out).expect("man pages are UTF-8")
}

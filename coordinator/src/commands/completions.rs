//! `coordinator completions SHELL`: a shell completion script from the command line's definition.
#[derive(clap::Args)]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

impl Args {
    /// The script for `cli`, the whole command line.
    pub fn run(self, mut cli: clap::Command) -> String {
        let mut out = Vec::new();
        clap_complete::generate(self.shell, &mut cli, "coordinator", &mut out);
        String::from_utf8(out).expect("completion scripts are UTF-8")
    }
}

use clap::Parser;

fn main() {
    // clap exits 2 on usage errors, as documented.
    let cli = pikaci::cli::Cli::parse();
    pikaci::signals::install();
    let code = match pikaci::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("{}", pikaci::error::render(&err));
            if pikaci::tools::command::is_interrupted(&err) {
                pikaci::exit::INTERRUPTED
            } else {
                let kind = pikaci::error::kind_of(&err);
                if kind == pikaci::error::ErrorKind::Internal {
                    eprintln!("this is a bug in pikaci; please report it with the command you ran");
                }
                kind.exit_code()
            }
        }
    };
    std::process::exit(code);
}

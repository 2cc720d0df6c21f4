use clap::Parser;
use pikaci::error::{self, ErrorKind, exit};

fn main() {
    // clap exits 2 on usage errors, as documented.
    let cli = pikaci::cli::Cli::parse();
    if cli.only_prints() {
        // `pikaci lanes --json | head`: a closed pipe ends the printing quietly, as for
        // any Unix filter, instead of failing a write (a run keeps recording whatever
        // happens to its output).
        // SAFETY: restoring a signal's default disposition at start-up, before threads.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    pikaci::signals::install();
    error::install_panic_hook();
    // A panic is a bug: it is caught where a job runs (and recorded there); one that
    // reaches this far still ends in one line and the documented code, never a trace.
    let result = std::panic::catch_unwind(|| pikaci::cli::run(cli))
        .unwrap_or_else(|payload| Err(error::internal(error::panic_message(payload.as_ref())).into()));
    let code = match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("{}", error::render(&err));
            if pikaci::tools::command::is_interrupted(&err) {
                exit::INTERRUPTED
            } else {
                let kind = error::kind_of(&err);
                if kind == ErrorKind::Internal {
                    eprintln!("this is a bug in pikaci; please report it with the command you ran");
                }
                kind.exit_code()
            }
        }
    };
    std::process::exit(code);
}

//! `kubectl pullbroker …`: kubectl runs a plugin named `kubectl-pullbroker`
//! found on `PATH` with the rest of the command line. This one replaces
//! itself with the `pullbroker` binary installed beside it (`cargo install
//! --path crates/cli` installs both), so exit codes, signals and output are
//! exactly pullbroker's; usage lines then read `kubectl pullbroker`.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok())
        .and_then(|p| p.parent().map(|d| d.join("pullbroker")));
    let Some(pullbroker) = beside.filter(|p| p.exists()) else {
        eprintln!("kubectl-pullbroker: no pullbroker binary beside this plugin (install both: cargo install --path crates/cli)");
        return ExitCode::from(2);
    };
    let err = Command::new(&pullbroker)
        .args(std::env::args_os().skip(1))
        .env("PULLBROKER_BIN_NAME", "kubectl pullbroker")
        .exec();
    eprintln!(
        "kubectl-pullbroker: cannot run {}: {err}",
        pullbroker.display()
    );
    ExitCode::from(2)
}

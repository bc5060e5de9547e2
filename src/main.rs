//! The `slimc` binary: a compiler driver for network slimming of YOLO11 (see [`cli`]).

mod cli;

use clap::Parser;

fn main() {
    std::panic::set_hook(Box::new(|p| {
        eprintln!("slimc: internal error: {p} (please report this with the command you ran)");
    }));
    let cli = cli::Cli::parse();
    if let Err(e) = cli::run(cli) {
        eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}

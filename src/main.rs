//! The `slimc` binary: a compiler driver for network slimming of YOLO11 (see [`cli`]).

mod cli;

fn main() {
    // Rust ignores SIGPIPE, which turns a closed stdout (`slimc dump m.slim | head`) into a
    // panic in println!; the default action ends the process quietly, as for other tools.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::panic::set_hook(Box::new(|p| {
        eprintln!("slimc: internal error: {p} (please report this with the command you ran)");
    }));
    if let Err(e) = cli::main() {
        eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}

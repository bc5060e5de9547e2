//! The `slimc` binary: a compiler driver for network slimming of Ultralytics YOLO detectors (YOLO11,
//! YOLOv8 with its P2 and P6 variants, YOLOv5u, YOLO12; see [`cli`]).

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
    let result = cli::main();
    if let Err(e) = &result {
        // A rank of several names itself: its message is the one that explains the job's end.
        let rank = match slimc::distributed::launched_size() {
            1 => String::new(),
            _ => slimc::distributed::world().map(|w| format!("rank {}: ", w.rank())).unwrap_or_default(),
        };
        eprintln!("{rank}error: {}", format!("{e:#}").replace('\n', " "));
    }
    // MPI is finalised after success; a failed rank of several ends every rank.
    slimc::distributed::finish(result.is_ok());
    if result.is_err() {
        std::process::exit(1);
    }
}

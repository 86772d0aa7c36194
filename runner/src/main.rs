//! The `kvbench` command line: generate text with any supported model, fetch and create models,
//! and (as the benchmark grows) score predictions, run experiments and publish leaderboards.
//! Library errors become one readable message and a non-zero exit here, at the binary's edge.

mod cli;
mod commands;

use clap::Parser;

fn main() {
    // Like other Unix tools, end quietly when the reader of stdout goes away (`kvbench ... | head`).
    // SAFETY: restoring the default disposition of SIGPIPE at startup, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = cli::Cli::parse();
    let filter = match cli.global.verbose {
        0 => "warn,kvbench=info,kvcore=info",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KVBENCH_LOG").unwrap_or_else(|_| filter.into()))
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    if let Err(e) = commands::run(cli) {
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        let disk_full = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(libc::ENOSPC))
        });
        if disk_full {
            eprintln!("hint: the disk is full. Every record written before this point is complete and kept (a half-written one is dropped on resume); free some space and rerun the same command with --resume.");
        }
        std::process::exit(1);
    }
}

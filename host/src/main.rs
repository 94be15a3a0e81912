//! The `sluice` binary: parse the command line, wire signals to the
//! shutdown tokens, run, and turn any error into one line and exit code 1.

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = sluice::cli::Cli::parse();
    let default_level = match cli.command {
        sluice::cli::Command::Run => "info",
        // The dev loop shows each job's outcome and each reload.
        sluice::cli::Command::Dev(_) => "warn,sluice::pump=info,sluice::reload=info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        // Control characters in any field are escaped: no forged lines.
        .fmt_fields(sluice::logfmt::fields())
        // Colour only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let result = runtime.block_on(async {
        tokio::spawn(signals(shutdown.clone(), hard_stop.clone()));
        sluice::cli::execute(cli, shutdown, hard_stop).await
    });
    // A compile that outlived its compile_timeout may still run on a
    // blocking thread; it cannot be stopped and must not hold up the exit
    // (a dropped runtime would wait for it). Cache writes are atomic, so
    // leaving one unfinished is safe.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// First SIGINT/SIGTERM: stop pulling and drain. Second: interrupt what is
/// still running and hand it back.
async fn signals(shutdown: CancellationToken, hard_stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    for token in [shutdown, hard_stop] {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        token.cancel();
    }
}

//! SIGTERM and SIGINT as a cancellation token: the first asks for a clean stop, the second stops at
//! once.

use tokio_util::sync::CancellationToken;

/// The exit status of a stop cut short by a second request (128 + SIGTERM, as a shell reports it).
const INTERRUPTED: i32 = 143;

/// Cancels `stop` on the first SIGTERM or SIGINT. A second one ends the process at once: the
/// messages in hand are not acknowledged, so the broker delivers them again, and what they
/// committed is found again, not applied twice.
pub fn on_signal(stop: CancellationToken) {
    tokio::spawn(async move {
        if let Err(error) = requested().await {
            tracing::error!(error = %error, "signals cannot be received; stop the process with SIGKILL");
            return;
        }
        tracing::info!(
            "stop requested; finishing the messages in hand (ask again to stop at once)"
        );
        stop.cancel();
        if requested().await.is_ok() {
            tracing::warn!(
                "second stop request; stopping at once, messages in hand will be redelivered"
            );
            std::process::exit(INTERRUPTED);
        }
    });
}

/// Resolves on the next SIGTERM or SIGINT.
async fn requested() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}

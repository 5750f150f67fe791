//! SIGTERM and SIGINT as a cancellation token.

use tokio_util::sync::CancellationToken;

/// Cancels `stop` on the first SIGTERM or SIGINT.
pub fn on_signal(stop: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("stop requested; finishing the messages in hand");
        stop.cancel();
    });
}

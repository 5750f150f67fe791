//! Failure injection for tests. Built with `--features failpoints`, the named points below can be
//! switched on through the `FAILPOINTS` environment variable (e.g. `FAILPOINTS=chunk-after-commit=return`)
//! or `fail::cfg`; without the feature they compile to nothing.
//!
//! | point | where |
//! | --- | --- |
//! | `chunk-after-read` | a chunk read its stored customers, nothing of it is written |
//! | `chunk-before-commit` | a chunk's events are encoded, its statement (its own transaction) not sent |
//! | `chunk-after-commit` | a chunk committed, the next one not started |
//! | `batch-before-reply` | the batch is stored as completed, its reply not published |
//! | `batch-before-ack` | the reply is confirmed, the delivery not acknowledged |
//! | `relay-before-publish` | events are claimed from the outbox, not published |
//! | `relay-after-publish` | events are confirmed by the broker, not yet marked done (evaluated off the runtime's threads, so `pause` stops the relay alone) |
//! | `batch-poison` | every delivery of the batch whose id is the point's argument fails |
//! | `batch-panic` | processing the batch whose id is the point's argument panics |
//!
//! All but `chunk-after-read` (for tests that act there with `fail::cfg_callback`) and the last two
//! stop the process on the spot.

/// Ends the process at once, as `kill -9` would: no destructors, no graceful shutdown, connections
/// dropped by the kernel.
pub fn crash() -> ! {
    std::process::abort()
}

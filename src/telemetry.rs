//! Logging set-up: human-readable or JSON lines, filtered by `log.level` (or RUST_LOG).

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},sqlx=warn,lapin=warn", settings.level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests start many applications in one process) is not an error.
    let _ = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

/// Replaces the default panic hook, which prints the panic's message to stderr, with one that logs
/// where the panic happened and its message only when that is a literal: a formatted message (an
/// `expect` on an error, a `panic!` with arguments) may quote a customer's data.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            %location,
            message = literal_message(info.payload()),
            "panicked"
        );
    }));
}

/// The panic's message if it was written as a literal (it then holds no data), else a placeholder.
fn literal_message(payload: &(dyn std::any::Any + Send)) -> &'static str {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .unwrap_or("(a formatted message, withheld: it may quote data)")
}

#[cfg(test)]
mod tests {
    use super::literal_message;

    #[test]
    // `expect` on an `Err` is the point: its panic message quotes the error.
    #[allow(clippy::unnecessary_literal_unwrap)]
    fn a_formatted_panic_message_is_withheld_and_a_literal_one_kept() {
        let literal = std::panic::catch_unwind(|| panic!("a literal")).unwrap_err();
        assert_eq!(literal_message(literal.as_ref()), "a literal");
        let email = "ann@example.com";
        let formatted = std::panic::catch_unwind(|| panic!("bad {email}")).unwrap_err();
        assert!(!literal_message(formatted.as_ref()).contains(email));
        let expected: Result<(), String> = Err(email.to_owned());
        let expect = std::panic::catch_unwind(|| expected.expect("stored")).unwrap_err();
        assert!(!literal_message(expect.as_ref()).contains(email));
    }
}

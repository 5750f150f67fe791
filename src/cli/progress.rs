//! Progress of long work, on stderr: one line rewritten in place on a terminal, plain lines
//! otherwise (a log or a pipe gets every update as its own line).

use std::io::{IsTerminal, Write};

pub(crate) struct Progress {
    terminal: bool,
    /// Whether a line is open on the terminal (written without its newline).
    open: bool,
}

impl Progress {
    pub fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            open: false,
        }
    }

    /// Shows `line` as the current state of the work.
    pub fn update(&mut self, line: &str) {
        let mut err = std::io::stderr().lock();
        if self.terminal {
            // Back to the start of the line, the new text, then erase what is left of the old.
            let _ = write!(err, "\r{line}\x1b[K");
            let _ = err.flush();
            self.open = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
    }

    /// Ends the progress line, so that what follows starts on a line of its own.
    pub fn finish(&mut self) {
        if self.open {
            let _ = writeln!(std::io::stderr());
            self.open = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

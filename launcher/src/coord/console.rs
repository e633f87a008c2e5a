//! What pmrun prints: event lines, and on a terminal a live status line
//! kept at the bottom.

use std::io::{IsTerminal, Write};

pub struct Console {
    tty: bool,
    showing: bool,
}

impl Console {
    pub fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            showing: false,
        }
    }

    /// Prints an event line.
    pub fn say(&mut self, msg: &str) {
        self.clear();
        eprintln!("pmrun: {msg}");
    }

    /// Replaces the status line (terminals only).
    pub fn status(&mut self, line: &str) {
        if self.tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
            self.showing = true;
        }
    }

    pub fn clear(&mut self) {
        if self.showing {
            eprint!("\r\x1b[2K");
            self.showing = false;
        }
    }
}

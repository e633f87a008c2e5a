//! What the fabric test binaries share.

use std::io::Write;

/// Says why a test did not run; stderr is written directly so that the
/// line shows even though the test passes (libtest captures only print!).
pub fn skipped(why: &str) {
    let _ = writeln!(std::io::stderr(), "fabric test skipped: {why}");
}

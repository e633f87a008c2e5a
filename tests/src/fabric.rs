//! What the libfabric tests need to know before they run.

use std::io::Write;

/// Whether libfabric offers `provider` here (on loopback); when not, says
/// on stderr that the calling test skipped and why (libtest captures only
/// `print!`, so the line shows although the test passes).
pub fn offered(provider: &str) -> bool {
    let why = match pm_transport_fabric::providers(Some("127.0.0.1")) {
        Ok(list) if list.iter().any(|p| p == provider) => return true,
        Ok(list) => format!("libfabric offers no {provider} here ({list:?})"),
        Err(e) => e.to_string(),
    };
    let _ = writeln!(std::io::stderr(), "fabric test skipped: {why}");
    false
}

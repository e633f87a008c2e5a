//! `reset_library_signal_handlers` in a program that links libfabric: the
//! handlers its libraries installed before `main` go, the program's own and
//! ignored signals stay.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

static OWN_RAN: AtomicBool = AtomicBool::new(false);

extern "C" fn own_handler(_: libc::c_int) {
    OWN_RAN.store(true, Ordering::SeqCst);
}

fn disposition(sig: i32) -> libc::sighandler_t {
    // SAFETY: sigaction is plain old data; a null new action only reads.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(sig, std::ptr::null(), &mut old), 0);
        old.sa_sigaction
    }
}

fn library_loaded(name: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps").is_ok_and(|maps| maps.contains(name))
}

#[test]
fn library_handlers_are_reset_and_the_programs_own_are_kept() {
    if !pm_transport_fabric::AVAILABLE {
        return common::skipped("built without libfabric");
    }
    // SAFETY: own_handler only stores to an atomic (async-signal-safe);
    // SIGQUIT is not delivered to this process by anyone else.
    unsafe {
        libc::signal(
            libc::SIGQUIT,
            own_handler as *const () as libc::sighandler_t,
        );
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    // Uses libfabric, so that the linker keeps it (and what it loads).
    let _ = pm_transport_fabric::providers(None);
    let infinipath = library_loaded("libinfinipath");
    let before_term = disposition(libc::SIGTERM);

    let reset = pm_transport_fabric::reset_library_signal_handlers();

    assert_eq!(
        disposition(libc::SIGQUIT),
        own_handler as *const () as libc::sighandler_t
    );
    assert_eq!(disposition(libc::SIGHUP), libc::SIG_IGN);
    assert!(!reset.contains(&libc::SIGQUIT) && !reset.contains(&libc::SIGHUP));
    assert_eq!(disposition(libc::SIGTERM), libc::SIG_DFL);
    if infinipath {
        // Debian's libfabric brings libinfinipath, whose handlers exit(1).
        assert_ne!(
            before_term,
            libc::SIG_DFL,
            "libinfinipath's SIGTERM handler"
        );
        assert!(reset.contains(&libc::SIGTERM), "{reset:?}");
        assert!(reset.contains(&libc::SIGINT), "{reset:?}");
    } else {
        common::skipped("libinfinipath is not loaded here: no library handler to reset");
    }
    // SAFETY: raising a signal whose handler is our own.
    unsafe { libc::raise(libc::SIGQUIT) };
    assert!(OWN_RAN.load(Ordering::SeqCst));
}

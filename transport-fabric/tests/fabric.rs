//! The libfabric backend over real providers: `fi_getinfo`, then the
//! generic transport suite once per provider that offers RMA here
//! (`tcp;ofi_rxm` on loopback, `shm`). Where libfabric or a provider is
//! missing, each test says on stderr that it skipped and why, and passes.

mod common;
use common::skipped;

#[cfg(not(pm_fabric))]
#[test]
fn skipped_without_libfabric() {
    skipped("pm-transport-fabric was built without libfabric (install libfabric-dev)");
}

#[cfg(pm_fabric)]
mod with_libfabric {
    use super::skipped;
    use pm_core::transport::suite::Harness;
    use pm_core::transport::{RegionKey, TransportError};
    use pm_transport_fabric::{FabricAddr, FabricError, FabricOptions, FabricTransport, providers};
    use std::sync::{Mutex, MutexGuard, mpsc};
    use std::time::Duration;

    /// Fabric tests run one at a time: on two cores, a dozen providers'
    /// progress threads spinning at once starve the transfers under test.
    static SERIAL: Mutex<()> = Mutex::new(());

    pub struct Fabric {
        provider: &'static str,
        source: Option<&'static str>,
        _watchdog: Watchdog,
        _serial: MutexGuard<'static, ()>,
    }

    /// A test that hangs inside a provider's call cannot be ended by any
    /// deadline of ours: past `HUNG`, this aborts the test binary, naming
    /// the test, so a hang fails the run instead of stalling it.
    /// Dropping it (with the harness) disconnects the channel, which ends
    /// the watchdog's wait.
    struct Watchdog {
        _done: mpsc::Sender<()>,
    }

    const HUNG: Duration = Duration::from_secs(180);

    impl Watchdog {
        fn start() -> Self {
            let test = std::thread::current().name().unwrap_or("?").to_owned();
            let (done, finished) = mpsc::channel::<()>();
            std::thread::spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(HUNG) {
                    eprintln!("{test}: still running after {HUNG:?}, hung in libfabric; aborting");
                    std::process::abort();
                }
            });
            Self { _done: done }
        }
    }

    impl Harness for Fabric {
        type T = FabricTransport;
        fn endpoint(&self, node: &str) -> FabricTransport {
            let opts = FabricOptions {
                node: node.into(),
                source: self.source.map(str::to_owned),
                timeout: Duration::from_secs(5),
                ..FabricOptions::default()
            };
            FabricTransport::open(Some(self.provider), opts).unwrap()
        }
        fn peer(&self, t: &FabricTransport) -> FabricAddr {
            t.address()
        }
        fn shutdown(&self, t: &FabricTransport) {
            t.shutdown();
        }
        fn is_refused_key(&self, err: &TransportError, key: RegionKey) -> bool {
            // tcp;ofi_rxm (1.17) answers a request with a key it does not
            // hold by cutting the connection: the operation on it ends
            // cancelled (UnknownKey) or, when the cut wins the race, "not
            // connected"; either way an error, and the next transfer
            // connects afresh.
            let cut = matches!(err, TransportError::Data { source, .. }
                if source.kind() == std::io::ErrorKind::NotConnected);
            matches!(err, TransportError::UnknownKey { key: k, .. } if *k == key)
                || (self.provider == "tcp;ofi_rxm" && cut)
        }
        fn limitation(&self, test: &str) -> Option<String> {
            // libfabric 1.17's shm: a request naming a key the target does
            // not hold gets no completion (the initiator's deadline ends
            // it, as a timeout); and two endpoints of one process share
            // the mapping of each other's region, so closing one under the
            // other's transfers crashes the process. Between processes
            // (a_peer_killed_mid_transfer_fails_it) a dead peer is a timeout,
            // or, once its process is gone, refused before posting (a post
            // could spin forever on a lock the dead peer held).
            match (self.provider, test) {
                ("shm", "out_of_bounds_and_unknown_keys_are_refused_and_the_endpoint_goes_on") => {
                    Some("shm does not report unknown keys (they time out)".into())
                }
                ("shm", "a_dead_endpoint_fails_transfers_instead_of_hanging") => {
                    Some("shm endpoints of one process cannot outlive each other's close".into())
                }
                _ => None,
            }
        }
    }

    /// The harness for `provider`, or `None` (and a line saying so) when
    /// `fi_getinfo` does not offer it with RMA here.
    pub fn harness(provider: &'static str, source: Option<&'static str>) -> Option<Fabric> {
        match providers(source) {
            Ok(p) if p.iter().any(|p| p == provider) => {
                let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
                Some(Fabric {
                    provider,
                    source,
                    _watchdog: Watchdog::start(),
                    _serial: serial,
                })
            }
            Ok(p) => {
                skipped(&format!(
                    "provider {provider} offers no RMA here (fi_getinfo offers: {p:?})"
                ));
                None
            }
            Err(e) => {
                skipped(&format!("{e}"));
                None
            }
        }
    }

    #[test]
    fn getinfo_offers_tcp_rxm_with_rma_on_loopback() {
        let offered = providers(Some("127.0.0.1")).unwrap();
        assert!(offered.iter().any(|p| p == "tcp;ofi_rxm"), "{offered:?}");
        let t = FabricTransport::open(
            Some("tcp;ofi_rxm"),
            FabricOptions {
                source: Some("127.0.0.1".into()),
                ..FabricOptions::default()
            },
        )
        .unwrap();
        assert_eq!(t.provider(), "tcp;ofi_rxm");
        assert!(
            t.address().to_string().starts_with("127.0.0.1:"),
            "{:?}",
            t.address()
        );
    }

    #[test]
    fn an_unknown_provider_is_an_error_naming_it_and_what_is_offered() {
        let err = FabricTransport::open(Some("no-such-provider"), FabricOptions::default())
            .err()
            .expect("opened a provider that does not exist");
        assert!(matches!(err, FabricError::NoProvider { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("\"no-such-provider\""), "{msg}");
        assert!(msg.contains("tcp;ofi_rxm"), "{msg}");
    }

    #[test]
    fn no_provider_named_opens_the_best_one_with_rma() {
        let t = FabricTransport::open(None, FabricOptions::default()).unwrap();
        let offered = providers(None).unwrap();
        assert_eq!(Some(t.provider()), offered.first().map(String::as_str));
    }

    mod tcp_rxm {
        pm_core::transport_suite!(super::harness("tcp;ofi_rxm", Some("127.0.0.1")));
    }

    mod shm {
        use pm_core::transport::TransportError;
        use pm_core::transport::suite::{ChildPeer, Harness, test_name, wait};
        use pm_core::transport::{Access, LocalSlice, Region, RemoteSlice, Transport};
        use pm_transport_fabric::FabricTransport;
        use std::sync::Arc;

        pm_core::transport_suite!(super::harness("shm", None));

        /// A `shm` peer that has exited fails the next transfer at once with
        /// an error that says so, before anything is posted into its region
        /// (whose lock it may have died holding: see `liveness.rs`).
        #[test]
        fn a_transfer_to_an_exited_peer_fails_saying_it_has_exited() {
            let Some(h) = super::harness("shm", None) else {
                return;
            };
            let child_test = test_name(module_path!(), "child_endpoint");
            let mut child = ChildPeer::<FabricTransport>::spawn(&child_test);
            let me = h.endpoint("reader");
            let local = Arc::new(Region::buffer(4096, Access::ReadWrite).unwrap());
            let into = LocalSlice {
                key: me.register(local.clone()).unwrap(),
                offset: 0,
                len: 4096,
            };
            let remote = RemoteSlice {
                key: child.key,
                offset: 0,
            };
            // Resolved, and its process watched, while it lives.
            assert_eq!(wait(me.read(&child.peer, remote, into)).unwrap(), 4096);
            let mut first = [0u8; 1];
            local.copy_out(0, &mut first).unwrap();
            assert_eq!(first, [0xA5]);

            child.child.kill();
            let err = wait(me.read(&child.peer, remote, into)).unwrap_err();
            assert!(
                matches!(&err, TransportError::Connect { .. })
                    && err
                        .to_string()
                        .contains(&format!("(pid {}) has exited", child.child.id())),
                "{err}"
            );
        }
    }
}

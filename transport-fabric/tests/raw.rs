//! The raw `fi_read` baseline (`raw_read`) moves the bytes it times: the
//! sink equals the source afterwards, also with a short last read and more
//! reads than the window. Per provider that offers RMA here; where
//! libfabric or the provider is missing, each test says so on stderr and
//! passes.

mod common;
use common::skipped;

#[cfg(not(pm_fabric))]
#[test]
fn skipped_without_libfabric() {
    skipped("pm-transport-fabric was built without libfabric (install libfabric-dev)");
    let r = pm_transport_fabric::raw_read(
        None,
        &std::sync::Arc::new(
            pm_core::transport::Region::buffer(4096, pm_core::transport::Access::Read).unwrap(),
        ),
        &std::sync::Arc::new(
            pm_core::transport::Region::buffer(4096, pm_core::transport::Access::ReadWrite)
                .unwrap(),
        ),
        &pm_transport_fabric::RawReadOptions::default(),
    );
    assert!(matches!(r, Err(pm_transport_fabric::FabricError::NotBuilt)));
}

#[cfg(pm_fabric)]
mod with_libfabric {
    use super::skipped;
    use pm_core::RegionBuf;
    use pm_core::transport::{Access, Region};
    use pm_transport_fabric::{FabricError, RawReadOptions, providers, raw_read};
    use std::sync::{Arc, Mutex};

    /// One provider at a time: two cores, and each pass spins two threads.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn reads_the_source_into_the_sink(provider: &str, source: Option<&str>) {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        match providers(source) {
            Ok(p) if p.iter().any(|p| p == provider) => {}
            Ok(p) => {
                return skipped(&format!(
                    "provider {provider} offers no RMA here (fi_getinfo offers: {p:?})"
                ));
            }
            Err(e) => return skipped(&e.to_string()),
        }
        // Not a multiple of the chunk: the last read is short.
        let len = (5 << 20) + 12345;
        let mut bytes = RegionBuf::new(len).unwrap();
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i.wrapping_mul(2654435761) >> 13) as u8;
        }
        let expected = bytes.to_vec();
        let src = Arc::new(Region::from_buf(bytes, Access::Read));
        let sink = Arc::new(Region::buffer(len + 4096, Access::ReadWrite).unwrap());
        let opts = RawReadOptions {
            source: source.map(str::to_owned),
            chunk: 1 << 20,
            window: 3,
            runs: 2,
            ..RawReadOptions::default()
        };
        let report = raw_read(Some(provider), &src, &sink, &opts).unwrap();
        assert_eq!(report.provider, provider);
        assert_eq!(report.bytes, len as u64);
        assert_eq!(report.runs.len(), 2);
        let mut got = vec![0u8; len + 4096];
        sink.copy_out(0, &mut got).unwrap();
        assert!(
            got[..len] == expected[..],
            "the sink differs from the source"
        );
        assert!(
            got[len..].iter().all(|&b| b == 0),
            "bytes past the source were written"
        );
    }

    #[test]
    fn tcp_rxm_reads_the_source_into_the_sink() {
        reads_the_source_into_the_sink("tcp;ofi_rxm", Some("127.0.0.1"));
    }

    #[test]
    fn shm_reads_the_source_into_the_sink() {
        reads_the_source_into_the_sink("shm", None);
    }

    #[test]
    fn an_unknown_provider_is_an_error_naming_it() {
        let src = Arc::new(Region::buffer(4096, Access::Read).unwrap());
        let sink = Arc::new(Region::buffer(4096, Access::ReadWrite).unwrap());
        let err = raw_read(
            Some("no-such-provider"),
            &src,
            &sink,
            &RawReadOptions::default(),
        )
        .expect_err("read over a provider that does not exist");
        assert!(matches!(err, FabricError::NoProvider { .. }), "{err}");
        assert!(err.to_string().contains("\"no-such-provider\""), "{err}");
    }

    #[test]
    fn a_short_sink_is_refused() {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        if !providers(Some("127.0.0.1")).is_ok_and(|p| p.iter().any(|p| p == "tcp;ofi_rxm")) {
            return skipped("provider tcp;ofi_rxm offers no RMA here");
        }
        let src = Arc::new(Region::buffer(8192, Access::Read).unwrap());
        let sink = Arc::new(Region::buffer(4096, Access::ReadWrite).unwrap());
        let opts = RawReadOptions {
            source: Some("127.0.0.1".into()),
            ..RawReadOptions::default()
        };
        let err =
            raw_read(Some("tcp;ofi_rxm"), &src, &sink, &opts).expect_err("read past the sink");
        assert!(matches!(err, FabricError::RawRead { .. }), "{err}");
    }
}

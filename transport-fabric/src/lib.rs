//! `pm-transport-fabric`: the libfabric backend of pm-core's
//! [`Transport`](pm_core::transport::Transport) trait: one-sided `fi_read`
//! and `fi_write` over RDM endpoints (`verbs;ofi_rxm`, `cxi`, `efa` on
//! clusters; `tcp;ofi_rxm` and `shm` here, libfabric 1.17).
//!
//! * **Building without libfabric.** The build script looks for
//!   `rdma/fabric.h` under `PM_FABRIC_INCLUDE` (default `/usr/include`).
//!   Found, it generates the bindings (bindgen) and compiles the shim (cc)
//!   and the crate has its backend; missing, the crate builds *empty* with a
//!   cargo warning ([`AVAILABLE`] is false; the same names exist, but
//!   [`FabricTransport::open`] fails with an error that says how to get the
//!   backend), so `cargo build --workspace` works on a machine without
//!   `libfabric-dev`, callers need no `cfg`, and only the fabric tests skip
//!   (they say so). Headers present but
//!   broken is a build error, not a silent no-op.
//! * **Sys layer** (`sys.rs`, all of the crate's `unsafe`): bindgen over
//!   `fabric.h`, `fi_domain.h`, `fi_endpoint.h`, `fi_rma.h`, `fi_cm.h`,
//!   `fi_eq.h`, `fi_errno.h`; the static-inline calls through
//!   `shim/shim.c`. Handles close in libfabric's order; the endpoint owns
//!   every operation in flight with the memory the provider may touch
//!   (context, registration, region) until its completion is read or the
//!   endpoint is closed, so safe code cannot free memory under the NIC.
//! * **Opening.** [`FabricTransport::open`]`(provider, opts)`: `fi_getinfo`
//!   for `FI_EP_RDM`, `FI_RMA | FI_READ | FI_WRITE | FI_REMOTE_READ |
//!   FI_REMOTE_WRITE`, `FI_THREAD_SAFE`, writes delivery-complete, and
//!   `mr_mode` `FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED |
//!   FI_MR_PROV_KEY | FI_MR_ENDPOINT`, all of which we handle: every region
//!   is registered and its descriptor passed (LOCAL), mapped files and
//!   buffers are allocated memory (ALLOCATED), registrations are bound to
//!   the endpoint and enabled (ENDPOINT), the provider's key is used
//!   (PROV_KEY; else a random key of `mr_key_size` bytes is requested), and
//!   the remote address is base + offset (VIRT_ADDR) or the offset.
//!   `None` takes the first configuration `fi_getinfo` offers; a provider
//!   it does not offer is [`FabricError::NoProvider`], naming it and
//!   listing what is offered ([`providers`]).
//! * **Progress**: see `progress.rs`: a thread per endpoint, because the
//!   providers here progress only inside libfabric calls and the target of
//!   a read takes no part in it otherwise.
//! * **Keys and addresses**: a [`RegionKey`](pm_core::transport::RegionKey)
//!   packs the provider key, remote address, length and access (see
//!   `key.rs`), so initiators refuse out-of-bounds ranges and writes to
//!   read-only regions before sending, with TCP's errors; read-only regions
//!   are registered with `FI_REMOTE_READ` only, so the provider refuses
//!   forged keys too. Peers are [`FabricAddr`]s, the bytes of `fi_getname`,
//!   resolved with `fi_av_insert` on first use.
//! * **Baseline**: [`raw_read`] times a plain `fi_read` loop between two
//!   endpoints of a provider in this process, without the backend's
//!   registry, keys or deadlines (see `raw.rs`): what `pmbench replicate
//!   --transport fabric` compares the backend with.

mod addr;
#[cfg(pm_fabric)]
mod error;
#[cfg(pm_fabric)]
mod key;
#[cfg(pm_fabric)]
mod liveness;
mod options;
#[cfg(pm_fabric)]
mod progress;
mod raw;
#[cfg(pm_fabric)]
mod sys;
#[cfg(pm_fabric)]
mod transport;
#[cfg(not(pm_fabric))]
mod unavailable;

pub use addr::FabricAddr;
#[cfg(pm_fabric)]
pub use error::FabricError;
pub use options::FabricOptions;
#[cfg(pm_fabric)]
pub use raw::raw_read;
pub use raw::{RawReadOptions, RawReadReport};
#[cfg(pm_fabric)]
pub use sys::FiError;
#[cfg(pm_fabric)]
pub use transport::{FabricTransport, choose_provider, providers};
#[cfg(not(pm_fabric))]
pub use unavailable::{FabricError, FabricTransport, choose_provider, providers, raw_read};

/// Whether this build has the libfabric backend (it had libfabric's
/// headers when it was compiled).
pub const AVAILABLE: bool = cfg!(pm_fabric);

/// Undoes what libraries loaded with libfabric do to signals before `main`:
/// libinfinipath (under libfabric's `psm` provider, loaded with
/// `libfabric.so` on Debian) installs handlers for SIGINT, SIGTERM,
/// SIGSEGV, SIGBUS, SIGILL and SIGABRT that print a backtrace and
/// `exit(1)`, so a program's own SIGTERM handling (Slurm ending a job,
/// `pmrun`'s stop) never runs. Programs that link this crate call this
/// first thing in `main`, before installing their own handlers; it resets
/// handlers that a shared library installed and leaves the program's own
/// and ignored signals alone. Returns the signals reset.
pub fn reset_library_signal_handlers() -> Vec<i32> {
    #[cfg(pm_fabric)]
    {
        const SIGNALS: [i32; 9] = [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGABRT,
            libc::SIGFPE,
        ];
        sys::reset_library_signal_handlers(&SIGNALS)
    }
    #[cfg(not(pm_fabric))]
    Vec::new()
}

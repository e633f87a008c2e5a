//! Jobs whose agents replicate over libfabric (`pmrun --transport
//! fabric:PROVIDER`) on four virtual nodes, with the real `pmrun`, `pmd` and
//! `mpirun`: the agents open the provider asked for and say so in `ctl
//! status`, a node SIGKILLed (agent and ranks) is recovered from the
//! replicas that moved over the fabric, bit-exact, and a provider this
//! machine lacks is refused before anything starts, naming what it offers.
//! Where libfabric or a provider is missing, a test says so on stderr and
//! passes.

use pm_tests::Bounded;
use pm_tests::job::{Job, files_under, heat_args, node, placement, reference, relaunch_epochs};
use pm_tests::mpi::{checksum, resumed_step, text};
use std::sync::Mutex;

/// The jobs share two cores; one at a time keeps their timing sane.
static SERIAL: Mutex<()> = Mutex::new(());

/// Loses node2 of an 8-rank job replicating over `provider`; the job must
/// resume on the holders of node2's replicas and end bit-exact.
fn a_lost_node_is_recovered_from_replicas_moved_over(provider: &str) {
    if !pm_tests::fabric::offered(provider) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let reference = reference(8);
    let transport = format!("fabric:{provider}");
    let job = Job::start(
        &format!("fabric-{}", provider.replace(';', "-")),
        &[
            "-n",
            "8",
            "--local-nodes",
            "4",
            "--every",
            "10",
            "--transport",
            &transport,
        ],
        &heat_args(20),
        &[],
    );
    job.wait_for_commit(2);
    let before = job.status().unwrap();
    for n in before["nodes"].as_array().unwrap() {
        assert_eq!(n["transport"], transport.as_str(), "{before}");
    }
    let (ok, shown) = job.ctl(&["status"]);
    assert!(ok, "{shown}");
    assert!(
        shown.contains(&format!("replicas move over {transport}")),
        "{shown}"
    );
    let holders: Vec<String> = [2usize, 3]
        .iter()
        .map(|&r| before["partners"][r][0].as_str().unwrap().to_owned())
        .collect();
    job.kill_node(&before, "node2");
    let after = job.wait_for("the recovery", |s| {
        s["recoveries"].as_array().is_some_and(|r| !r.is_empty())
    });
    assert_eq!(node(&after, "node2")["health"], "dead");
    // The lost ranks went to the nodes holding their replicas.
    assert_eq!(&placement(&after)[2..4], holders.as_slice(), "{after}");
    let (ended, store) = job.finish();
    let out = &ended.output;
    assert!(ended.status.success(), "pmrun failed:\n{out}");
    assert_eq!(checksum(out).as_deref(), Some(reference.as_str()), "{out}");
    assert!(resumed_step(out).is_some_and(|s| s > 0), "{out}");
    assert!(
        relaunch_epochs(out).first().is_some_and(|&e| e >= 2),
        "{out}"
    );
    let left = files_under(store.path());
    assert!(left.is_empty(), "the job left files behind: {left:?}");
}

#[test]
fn over_tcp_rxm_a_lost_node_is_recovered_bit_exact() {
    a_lost_node_is_recovered_from_replicas_moved_over("tcp;ofi_rxm");
}

#[test]
fn over_shm_a_lost_node_is_recovered_bit_exact() {
    a_lost_node_is_recovered_from_replicas_moved_over("shm");
}

#[test]
fn a_provider_libfabric_does_not_offer_is_refused_naming_those_it_does() {
    if !pm_tests::fabric::offered("tcp;ofi_rxm") {
        return;
    }
    let store = tempfile::tempdir().unwrap();
    let out = pm_tests::job::pmrun()
        .arg("--store")
        .arg(store.path())
        .args(["-n", "2", "--local-nodes", "2"])
        .args(["--transport", "fabric:no-such-provider", "true"])
        .bounded_output()
        .unwrap();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("no provider \"no-such-provider\""), "{said}");
    assert!(said.contains("tcp;ofi_rxm"), "{said}");
    assert!(said.contains("--transport tcp"), "{said}");
    // Nothing was started, so nothing was left.
    assert!(files_under(store.path()).is_empty(), "{said}");
}

//! Generates the libfabric bindings and compiles the C shim, or, when the
//! libfabric headers are missing, builds the crate without its backend (see
//! the crate docs) and says so with a cargo warning.
//!
//! `PM_FABRIC_INCLUDE` names the directory holding `rdma/fabric.h`
//! (default `/usr/include`); pointing it at a missing directory is how the
//! "no libfabric-dev" build is tested.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pm_fabric)");
    println!("cargo::rerun-if-env-changed=PM_FABRIC_INCLUDE");
    println!("cargo::rerun-if-changed=shim/shim.h");
    println!("cargo::rerun-if-changed=shim/shim.c");
    let include = PathBuf::from(
        std::env::var_os("PM_FABRIC_INCLUDE").unwrap_or_else(|| "/usr/include".into()),
    );
    let header = include.join("rdma/fabric.h");
    println!("cargo::rerun-if-changed={}", header.display());
    if !header.is_file() {
        println!(
            "cargo::warning=libfabric headers not found ({} is missing): pm-transport-fabric is built without its backend; install libfabric-dev (Debian) or set PM_FABRIC_INCLUDE",
            header.display()
        );
        return;
    }
    if let Err(e) = generate(&include) {
        // A broken libfabric installation is an error, not a silent no-op:
        // the headers are there, so the user asked for the backend.
        eprintln!("pm-transport-fabric: {e}");
        std::process::exit(1);
    }
    println!("cargo::rustc-cfg=pm_fabric");
}

fn generate(include: &Path) -> Result<(), String> {
    cc::Build::new()
        .file("shim/shim.c")
        .include(include)
        .warnings(true)
        .try_compile("pmfabricshim")
        .map_err(|e| format!("compiling the libfabric shim failed: {e}"))?;
    println!("cargo::rustc-link-lib=fabric");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    bindgen::Builder::default()
        .header("shim/shim.h")
        .clang_arg(format!("-I{}", include.display()))
        .allowlist_function("pmf_.*|fi_getinfo|fi_freeinfo|fi_fabric|fi_strerror")
        .allowlist_type("fi_.*|fid_.*")
        .allowlist_var("FI_.*")
        .derive_default(true)
        .layout_tests(false)
        .generate()
        .map_err(|e| format!("bindgen over {}/rdma failed: {e}", include.display()))?
        .write_to_file(out.join("fabric.rs"))
        .map_err(|e| format!("writing the bindings failed: {e}"))
}

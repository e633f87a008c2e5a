//! Binds Slurm's `spank.h` with bindgen, when it is installed.
//!
//! Why our own bindings rather than the `slurm-spank` crate: that crate
//! (0.4) binds `spank_prepend_task_argv`, which Slurm 22.05 (Debian 12)
//! lacks, so it needs a shim header or a fork; and its build script fails
//! without `spank.h`, which would break `cargo build --workspace` on a
//! machine without libslurm-dev. The plugin uses a dozen functions of a
//! stable C API, so binding exactly those from the installed header is
//! small and always matches the Slurm it is loaded into (`plugin_version`
//! comes from that header too).
//!
//! Without `spank.h` (no libslurm-dev, or `PM_SLURM_INCLUDE` pointing
//! elsewhere) the crate builds without its SPANK entry points, and says so
//! with a cargo warning: the .so then is not a plugin Slurm can load.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pm_spank)");
    println!("cargo::rerun-if-env-changed=PM_SLURM_INCLUDE");
    println!("cargo::rerun-if-changed=build.rs");
    let include =
        PathBuf::from(std::env::var("PM_SLURM_INCLUDE").unwrap_or_else(|_| "/usr/include".into()));
    let header = include.join("slurm/spank.h");
    println!("cargo::rerun-if-changed={}", header.display());
    if !header.exists() {
        println!(
            "cargo::warning=pm-slurm: {} not found: building without the SPANK plugin \
             (apt-get install libslurm-dev, or set PM_SLURM_INCLUDE to the directory holding slurm/spank.h)",
            header.display()
        );
        return;
    }
    let bindings = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .clang_arg(format!("-I{}", include.display()))
        .rust_edition(bindgen::RustEdition::Edition2024)
        .allowlist_function("spank_(context|option_register|get_item|setenv|unsetenv|job_control_setenv|strerror)")
        .allowlist_function("slurm_(info|error|verbose)")
        .allowlist_type("spank_(item|context|option|err_t|t)")
        .allowlist_var("SLURM_VERSION_NUMBER|ESPANK_SUCCESS")
        .rustified_enum("spank_(item|context)")
        .layout_tests(false)
        .generate()
        .unwrap_or_else(|e| {
            panic!(
                "pm-slurm: bindgen could not read {}: {e} (bindgen needs libclang: apt-get install libclang-dev)",
                header.display()
            )
        });
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("spank.rs");
    bindings
        .write_to_file(&out)
        .unwrap_or_else(|e| panic!("pm-slurm: cannot write {}: {e}", out.display()));
    println!("cargo::rustc-cfg=pm_spank");
}

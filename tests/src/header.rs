//! Programs written exactly as `include/pm.h`'s usage example: the example's
//! lines are cut from the header and compiled inside
//! `tests/c/header_example.c.in`, so the header cannot show a pattern that
//! the tests do not run.

use crate::mpi::{build_c, repo_root};
use std::path::{Path, PathBuf};

/// The usage example of `include/pm.h`, from `MPI_Init` to `return 0;`,
/// without the comment's leading ` * `.
pub fn header_example() -> String {
    let header = std::fs::read_to_string(repo_root().join("include/pm.h")).unwrap();
    let code: Vec<&str> = header
        .lines()
        .filter_map(|l| l.strip_prefix(" *     "))
        .skip_while(|l| !l.starts_with("MPI_Init("))
        .collect();
    let end = code
        .iter()
        .position(|l| l.trim() == "return 0;")
        .expect("pm.h's example ends with `return 0;`");
    code[..=end].join("\n")
}

/// Compiles `example` (the body of `main`) into a program named `name`
/// around the template's state, compute() and print_result().
pub fn build_example(example: &str, name: &str, out_dir: &Path) -> PathBuf {
    let template =
        std::fs::read_to_string(repo_root().join("tests/c/header_example.c.in")).unwrap();
    assert!(template.contains("/* @EXAMPLE@ */"));
    let source = out_dir.join(format!("{name}.c"));
    std::fs::write(&source, template.replace("/* @EXAMPLE@ */", example)).unwrap();
    build_c(&source, out_dir)
}

/// Every `result …` line a run printed.
pub fn results(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("result "))
        .collect()
}

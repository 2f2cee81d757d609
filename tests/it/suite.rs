//! The suite's own layout: with `autotests = false`, a test file that is
//! not a module of this binary is never compiled or run. Every `.rs` file
//! of `tests/` lives in `tests/it/` and is declared in `main.rs`.

use std::collections::BTreeSet;
use std::path::Path;

/// Names of the `.rs` files directly in `dir`, without the extension.
fn rust_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn every_test_file_is_a_module_of_the_one_binary() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let outside = rust_files(&tests);
    assert!(outside.is_empty(), "tests/{{{}}}.rs: move them to tests/it/ and declare them in tests/it/main.rs", Vec::from_iter(outside).join(","));

    let main = std::fs::read_to_string(tests.join("it/main.rs")).unwrap();
    let declared: BTreeSet<String> = main.lines().filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';')).map(str::to_string).collect();
    let mut files = rust_files(&tests.join("it"));
    files.remove("main");
    let missing: Vec<&String> = files.difference(&declared).collect();
    assert!(missing.is_empty(), "tests/it/ files not declared in tests/it/main.rs (never compiled): {missing:?}");
    assert!(declared.contains("suite") && declared.contains("harness"), "{declared:?}");
}

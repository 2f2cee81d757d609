//! `scripts/quickstart.sh` end to end with the binary under test: the
//! backup, list, verify and restore of the sample database, then the seed's
//! recovery scenario 1 — `stream`, an accidental DELETE, and a
//! point-in-time restore of the one table to the second before it, whose
//! rows the script copies home. Asserts the undo on the script's output.

use std::process::Command;

/// The numbers on the first line of `out` that starts with `label` after
/// `heading`.
fn numbers_after(out: &str, heading: &str, label: &str) -> Vec<u64> {
    let rest = &out[out.find(heading).unwrap_or_else(|| panic!("no `{heading}` in:\n{out}"))..];
    let line = rest.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_else(|| panic!("no `{label}` line after `{heading}`:\n{out}"));
    line.split_whitespace().filter_map(|w| w.parse().ok()).collect()
}

#[test]
fn quickstart_undoes_an_accidental_delete_with_a_point_in_time_table_restore() {
    let bindir = std::env::var("PG_BINDIR").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/quickstart.sh"))
        .env("PGKEEP_BIN", env!("CARGO_BIN_EXE_pgkeep"))
        .env("PG_BINDIR", &bindir)
        .env_remove("QUICKSTART_KEEP")
        .output()
        .expect("run scripts/quickstart.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "quickstart failed:\n{stdout}\n{stderr}");

    // The plain restore: every table's row count equal in source and copy.
    assert!(stdout.contains("rows and fingerprints equal"), "{stdout}");
    // The undo: no cancelled orders left in production, all of them in orders_undo …
    let cancelled = numbers_after(&stdout, "Cancelled orders, in quickstart", "cancelled");
    assert!(cancelled.len() == 2 && cancelled[0] == 0 && cancelled[1] > 20_000, "{cancelled:?}\n{stdout}");
    let all = numbers_after(&stdout, "Cancelled orders, in quickstart", "all orders");
    assert_eq!(all[1] - all[0], cancelled[1], "orders_undo holds exactly the deleted rows more\n{stdout}");
    // … including the 5 inserted just before the mistake, and none of its aftermath: back home, all of them.
    let home = numbers_after(&stdout, "After copying them home", "cancelled");
    assert_eq!(home, vec![cancelled[1]], "{stdout}");
    // The restore said it replayed archived changes up to the target.
    assert!(stdout.contains("point in time") && stdout.contains(" replayed "), "no replay reported:\n{stdout}\n{stderr}");
}

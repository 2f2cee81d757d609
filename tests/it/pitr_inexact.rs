//! Point-in-time restores across changes the archive cannot reproduce
//! (issue 14 §1): never silently wrong. With `pgkeep setup` and `stream`:
//! - exact migrations (a constant fast default, an immutable one, an index,
//!   temporary tables created and dropped inside a function,
//!   a serial added to a table created in the same transaction, a type
//!   change of an empty table) are not marked, and `ADD COLUMN … DEFAULT
//!   now()` replays the value the source stored: a target after them
//!   restores every table's rows and the schema exactly;
//! - `ADD COLUMN … DEFAULT clock_timestamp()`, `gen_random_uuid()`,
//!   an identity and a serial added to tables with rows (then used as a
//!   key), `CREATE UNLOGGED TABLE` + load + `SET LOGGED`, `CREATE TABLE AS`
//!   and a table created in a DO block are each marked: a target
//!   inside the window (before the next full backup) is refused with one
//!   line naming the table, and `--accept-inexact` lists every one of them;
//! - a plain partition created by a function is created again from its
//!   bound: exact;
//! - a target after the next full backup, and `latest`, are exact;
//! - without setup, a schema change is marked when the stream sees it.
//!
//! Every comparison covers every table of the database: its rows (a hash
//! of the sorted rows) and its definition (columns, types, defaults,
//! identity, indexes and constraints).

use crate::harness;

use harness::pitr_db::{Db, mark};
use harness::streaming;
use pgkeep::replay::RecoveryTarget;

const SCHEMA: &str = "
CREATE TABLE t_plain (id int PRIMARY KEY, v int);
INSERT INTO t_plain SELECT g, g FROM generate_series(1, 200) g;
CREATE TABLE t_now (id int PRIMARY KEY, v int);
INSERT INTO t_now SELECT g, g FROM generate_series(1, 200) g;
CREATE TABLE t_clock (id int PRIMARY KEY, v int);
INSERT INTO t_clock SELECT g, g FROM generate_series(1, 200) g;
CREATE TABLE t_uuid (id int PRIMARY KEY, v int);
INSERT INTO t_uuid SELECT g, g FROM generate_series(1, 200) g;
CREATE TABLE t_ident (v text NOT NULL);
ALTER TABLE t_ident REPLICA IDENTITY FULL;
INSERT INTO t_ident SELECT 'r' || g FROM generate_series(1, 200) g ORDER BY random();
CREATE TABLE t_serial (id int PRIMARY KEY, v int);
INSERT INTO t_serial SELECT g, g FROM generate_series(1, 200) g;
CREATE TABLE events (id int, day date, v text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
CREATE TABLE events_2026_11 PARTITION OF events FOR VALUES FROM ('2026-11-01') TO ('2026-12-01');
INSERT INTO events VALUES (1, '2026-11-02', 'a');
CREATE FUNCTION make_partition(first date) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                   'events_' || to_char(first, 'YYYY_MM'), first, first + interval '1 month');
END $$;
-- Temporary tables inside a function are no schema change.
CREATE FUNCTION temp_work() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    CREATE TEMP TABLE scratch AS SELECT id FROM t_plain;
    CREATE INDEX ON scratch (id);
    SELECT count(*) INTO n FROM scratch;
    DROP TABLE scratch;
    DROP TABLE IF EXISTS never_there;
    RETURN n;
END $$;
";

/// Migrations replay reproduces exactly: none of them may be refused.
const EXACT: &[&str] = &[
    "ALTER TABLE t_plain ADD COLUMN c bigint NOT NULL DEFAULT 0, ADD COLUMN d text DEFAULT 'x'",
    "CREATE INDEX t_plain_v ON t_plain (v); UPDATE t_plain SET c = 5 WHERE id < 10",
    "CREATE TABLE fresh (v text); ALTER TABLE fresh ADD COLUMN id serial PRIMARY KEY; ALTER TABLE fresh ALTER COLUMN v TYPE varchar(20)",
    "INSERT INTO fresh (v) SELECT 'f' || g FROM generate_series(1, 20) g",
    // A fast default computed on the source: its stored value is replayed.
    "ALTER TABLE t_now ADD COLUMN at timestamptz NOT NULL DEFAULT now(), ADD COLUMN who text DEFAULT current_user; \
     INSERT INTO t_now (id, v) VALUES (1001, 1)",
    "UPDATE t_now SET v = -v WHERE id <= 5",
    "SELECT temp_work(); UPDATE t_plain SET v = v * 2 WHERE id = 3",
];

/// Migrations the archive cannot reproduce, each with the table it marks.
const INEXACT: &[(&str, &str)] = &[
    ("ALTER TABLE t_clock ADD COLUMN at timestamptz DEFAULT clock_timestamp(); UPDATE t_clock SET v = -v WHERE id <= 3", "public.t_clock"),
    ("ALTER TABLE t_uuid ADD COLUMN u uuid DEFAULT gen_random_uuid()", "public.t_uuid"),
    (
        "ALTER TABLE t_ident ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY; ALTER TABLE t_ident ADD PRIMARY KEY (id); \
         UPDATE t_ident SET v = v || '!' WHERE id IN (7, 8)",
        "public.t_ident",
    ),
    ("ALTER TABLE t_serial ADD COLUMN n serial; UPDATE t_serial SET v = n", "public.t_serial"),
    (
        "CREATE UNLOGGED TABLE t_unlogged (id int PRIMARY KEY, v text); \
         INSERT INTO t_unlogged SELECT g, 'u' || g FROM generate_series(1, 5000) g; ALTER TABLE t_unlogged SET LOGGED",
        "public.t_unlogged",
    ),
    ("INSERT INTO t_unlogged VALUES (5001, 'after')", ""),
    ("CREATE TABLE t_ctas AS SELECT id, random() AS r FROM t_now", "public.t_ctas"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inexact_changes_are_refused_inside_their_window_and_exact_outside() {
    let db = Db::new("inexact", SCHEMA).await;
    pgkeep::stream::setup::install(&db.settings, &db.name).await.unwrap_or_else(|e| panic!("setup: {}", e.user_line()));
    let running = db.stream();
    streaming::wait_for_slot(&db.client, &db.name, Some(true)).await;
    let base = db.backup().await;

    // 1. Exact migrations: no mark.
    for sql in EXACT {
        db.run(sql).await;
    }
    let (exact_time, exact_state) = mark(&db.client).await;

    // 2. Each inexact migration, then a full backup (it closes their windows).
    let mut after_first = None;
    for (sql, _) in INEXACT {
        db.run(sql).await;
        after_first.get_or_insert(mark(&db.client).await.0);
    }
    let (before_mid, _) = mark(&db.client).await;
    // A commit after that target, so the next base holds a transaction
    // committed after it and cannot serve it: the replay must cross the marks.
    db.run("UPDATE t_plain SET v = v WHERE id = 3").await;
    let mid = db.backup().await;
    db.run("UPDATE t_plain SET v = v + 1 WHERE id = 1").await;
    let (after_mid, after_mid_state) = mark(&db.client).await;

    // 3. A partition created by a function, rows in it (exact: created again
    //    from its bound); a table created in a DO block (refused); then the last full backup.
    db.run("SELECT make_partition('2026-12-01'); INSERT INTO events VALUES (2, '2026-12-05', 'b')").await;
    let (after_partition, after_partition_state) = mark(&db.client).await;
    db.run("DO $$ BEGIN EXECUTE 'CREATE TABLE made_in_do (id int PRIMARY KEY)'; END $$; INSERT INTO made_in_do VALUES (1)").await;
    let (after_do, _) = mark(&db.client).await;
    db.run("UPDATE t_plain SET v = v WHERE id = 4").await; // as above: the last base cannot serve after_do
    db.backup().await;
    db.run("UPDATE t_plain SET v = v + 1 WHERE id = 2").await;
    let (_, final_state) = mark(&db.client).await;
    // No wait: a stop archives every transaction committed before it.
    streaming::stop(running).await;

    // Exact migrations replay exactly from the first base.
    let r = db.restore_exact("exact", RecoveryTarget::Time(exact_time), &exact_state).await;
    assert_eq!(r.point_in_time.as_ref().unwrap().base_backup, base);
    assert_eq!(r.point_in_time.as_ref().unwrap().applied.fast_defaults, 2, "now() and current_user");

    // Inside the window of the first inexact change: refused, naming the table.
    let (_, refused) = db.restore("refused", RecoveryTarget::Time(after_first.unwrap()), false).await;
    let line = refused.expect_err("a target inside the window is refused").user_line();
    assert!(line.contains("public.t_clock") && line.contains("not exact") && line.contains(&mid), "{line}");
    assert!(line.contains("table rewrite (default value)"), "the reason: {line}");

    // Accepted: every inexact table is listed.
    let (_, accepted) = db.restore("accepted", RecoveryTarget::Time(before_mid), true).await;
    let report = accepted.unwrap_or_else(|e| panic!("accepted restore: {}", e.user_line()));
    let lines = report.point_in_time.as_ref().unwrap().inexact_accepted.join("\n");
    for (_, table) in INEXACT.iter().filter(|(_, t)| !t.is_empty()) {
        assert!(lines.contains(&format!("table {table} ")), "{table} is not listed as inexact:\n{lines}");
    }
    assert!(!lines.contains("t_plain") && !lines.contains("fresh"), "exact migrations are not marked:\n{lines}");

    // After the next full backup: exact, from it.
    let r = db.restore_exact("after_mid", RecoveryTarget::Time(after_mid), &after_mid_state).await;
    assert_eq!(r.point_in_time.as_ref().unwrap().base_backup, mid);

    // The partition created by a function: exact, from the middle base.
    let r = db.restore_exact("partition", RecoveryTarget::Time(after_partition), &after_partition_state).await;
    assert_eq!(r.point_in_time.as_ref().unwrap().base_backup, mid);
    // The table created in a DO block: refused, naming it.
    let (_, refused) = db.restore("do_block", RecoveryTarget::Time(after_do), false).await;
    let line = refused.expect_err("the DO block's table is refused").user_line();
    assert!(line.contains("public.made_in_do") && line.contains("inside a function"), "{line}");

    // Latest: exact.
    db.restore_exact("latest", RecoveryTarget::Latest, &final_state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_setup_a_schema_change_is_refused_until_the_next_full_backup() {
    let db = Db::new("inexact_nosetup", "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 50) g;").await;
    let running = db.stream();
    streaming::wait_for_slot(&db.client, &db.name, Some(true)).await;
    db.backup().await;
    db.run("UPDATE t SET v = 0 WHERE id = 1").await;
    let (before, before_state) = mark(&db.client).await;
    db.run("ALTER TABLE t ADD COLUMN at timestamptz DEFAULT now()").await;
    db.run("UPDATE t SET v = 1 WHERE id = 2").await;
    let (inside, _) = mark(&db.client).await;
    db.backup().await;
    db.run("UPDATE t SET v = 2 WHERE id = 3").await;
    let (_, final_state) = mark(&db.client).await;
    // No wait: a stop archives every transaction committed before it.
    streaming::stop(running).await;

    db.restore_exact("before", RecoveryTarget::Time(before), &before_state).await;
    // Inside the window: refused, naming the table. The second backup holds
    // no transaction committed after the target, but the server took it
    // after the target: it is never a base for it (a schema change it might
    // hold was not archived), so the replay from the first base must refuse.
    let (_, refused) = db.restore("inside", RecoveryTarget::Time(inside), false).await;
    let line = refused.expect_err("refused").user_line();
    assert!(line.contains("public.t") && line.contains("without captured DDL"), "{line}");
    db.restore_exact("latest", RecoveryTarget::Latest, &final_state).await;
}

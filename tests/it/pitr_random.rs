//! A seeded randomized migration workload under `pgkeep setup` + `stream`:
//! DML (inserts, updates, deletes) mixed with the migrations applications
//! run (add, drop and rename columns, defaults, type changes, indexes,
//! check constraints, new tables, partitioned tables with partitions, also
//! partitions made by a function, and functions that use temporary tables),
//! some of which the archive cannot reproduce (a type change rewrites the
//! table, and so does a serial column added to a table with rows; `DEFAULT
//! now()` is exact through the captured value),
//! and full backups now and then. After every step the source's state
//! (every table's rows and the schema) is recorded with the time; then a
//! restore to each of those times must either equal that state exactly, or
//! — exactly when an inexact migration lies between the restore's base and
//! the target — be refused naming that migration's table. Never silently
//! wrong.
//!
//! A second run of the workload has `stream` take table images (as the CLI's
//! does): with the window of every inexact step closed by its table's
//! image, every restore is exact from the first base alone.
//!
//! The seed is fixed (`PGKEEP_PITR_SEED`, default 1412) and so is the
//! number of steps (`PGKEEP_PITR_STEPS`, default 24); `scripts/pitr-random.sh`
//! runs many seeds with longer workloads.

use crate::harness;

use harness::pitr_db::{Db, State, mark};
use harness::streaming;
use pgkeep::replay::RecoveryTarget;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const SCHEMA: &str = "
CREATE TABLE t0 (id int PRIMARY KEY, v int, s text);
CREATE TABLE t1 (id int PRIMARY KEY, v int, s text);
INSERT INTO t0 SELECT g, g % 7, md5(g::text) FROM generate_series(1, 30) g;
INSERT INTO t1 SELECT g, g % 5, md5(g::text) FROM generate_series(1, 30) g;
CREATE TABLE p0 (id int, k int, v int, PRIMARY KEY (id, k)) PARTITION BY LIST (k);
CREATE TABLE p0_0 PARTITION OF p0 FOR VALUES IN (0);
CREATE TABLE p0_1 PARTITION OF p0 FOR VALUES IN (1);
INSERT INTO p0 SELECT g, g % 2, g FROM generate_series(1, 9) g;
-- Partitions made by a function, as pg_partman and many applications do.
CREATE FUNCTION add_partition(parent text, k int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES IN (%s)', parent || '_' || k, parent, k);
END $$;
-- Temporary tables inside a function are no schema change.
CREATE FUNCTION scratch_count(t regclass) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    EXECUTE format('CREATE TEMP TABLE scratch AS SELECT * FROM %s', t);
    SELECT count(*) INTO n FROM scratch;
    DROP TABLE scratch;
    RETURN n;
END $$;
";

/// What the test knows of a table.
struct Table {
    name: String,
    partitioned: bool,
    /// Added columns that may be dropped or renamed.
    extra: Vec<String>,
    /// `v` is bigint (else int).
    v_bigint: bool,
    next_id: i32,
    indexes: Vec<String>,
    /// Partition keys in use (partitioned tables).
    keys: i32,
}

/// One step of the workload: its SQL, and the table it makes inexact.
struct Step {
    sql: String,
    inexact: Option<String>,
}

struct Workload {
    rng: StdRng,
    tables: Vec<Table>,
    n: u32,
}

impl Workload {
    fn next(&mut self) -> Step {
        self.n += 1;
        let n = self.n;
        let i = self.rng.random_range(0..self.tables.len());
        let kind = self.rng.random_range(0..100u32);
        let t = &mut self.tables[i];
        let name = t.name.clone();
        let exact = |sql: String| Step { sql, inexact: None };
        if t.partitioned {
            let id = t.next_id;
            t.next_id += 3;
            if kind % 3 == 2 {
                // A new partition made by a function (exact: created again from its bound), and rows in it.
                let k = t.keys;
                t.keys += 1;
                return exact(format!("SELECT add_partition('{name}', {k}); INSERT INTO {name} VALUES ({id}, {k}, 7)"));
            }
            let k = (id as u32 % t.keys as u32) as i32;
            return exact(match kind % 3 {
                0 => format!("INSERT INTO {name} VALUES ({id}, {k}, 1), ({}, 1, 2), ({}, 0, 3)", id + 1, id + 2),
                _ => format!("UPDATE {name} SET v = v + 1 WHERE id % 3 = {}", n % 3),
            });
        }
        match kind {
            0..=24 => {
                let id = t.next_id;
                t.next_id += 5;
                exact(format!("INSERT INTO {name} (id, v, s) SELECT g, g % 11, md5(g::text) FROM generate_series({id}, {}) g", id + 4))
            }
            25..=39 => exact(format!("UPDATE {name} SET v = v + {n}, s = s || 'u' WHERE id % 4 = {}", n % 4)),
            40..=44 => exact(format!("SELECT scratch_count('{name}'); UPDATE {name} SET v = v - 1 WHERE id % 6 = {}", n % 6)),
            45..=52 => exact(format!("DELETE FROM {name} WHERE id IN (SELECT id FROM {name} ORDER BY id LIMIT 2 OFFSET {})", n % 5)),
            53..=57 => {
                let c = format!("c{n}");
                t.extra.push(c.clone());
                exact(format!("ALTER TABLE {name} ADD COLUMN {c} int DEFAULT {n}; UPDATE {name} SET {c} = {c} + 1 WHERE id % 3 = 0"))
            }
            58..=61 if !t.extra.is_empty() => {
                let c = t.extra.remove(0);
                exact(format!("ALTER TABLE {name} DROP COLUMN {c}"))
            }
            62..=65 if !t.extra.is_empty() => {
                let c = t.extra.pop().expect("not empty");
                let r = format!("r{n}");
                t.extra.push(r.clone());
                exact(format!("ALTER TABLE {name} RENAME COLUMN {c} TO {r}"))
            }
            66..=68 => exact(format!("ALTER TABLE {name} ALTER COLUMN v SET DEFAULT {n}; INSERT INTO {name} (id) VALUES ({})", {
                t.next_id += 1;
                t.next_id - 1
            })),
            69..=72 => match t.indexes.pop() {
                Some(ix) if n.is_multiple_of(2) => exact(format!("DROP INDEX {ix}")),
                other => {
                    t.indexes.extend(other);
                    let ix = format!("{name}_i{n}");
                    t.indexes.push(ix.clone());
                    exact(format!("CREATE INDEX {ix} ON {name} (v, s)"))
                }
            },
            73..=75 => exact(format!("ALTER TABLE {name} ADD CONSTRAINT {name}_chk{n} CHECK (v > -1000000000)")),
            76..=80 => {
                let new = format!("n{n}");
                self.tables.push(Table {
                    name: new.clone(),
                    partitioned: false,
                    extra: Vec::new(),
                    v_bigint: false,
                    next_id: 11,
                    indexes: Vec::new(),
                    keys: 0,
                });
                exact(format!(
                    "CREATE TABLE {new} (id int PRIMARY KEY, v int NOT NULL DEFAULT 0, s text); \
                     INSERT INTO {new} SELECT g, g, md5(g::text) FROM generate_series(1, 10) g"
                ))
            }
            81..=84 => {
                let p = format!("p{n}");
                self.tables.push(Table { name: p.clone(), partitioned: true, extra: Vec::new(), v_bigint: false, next_id: 10, indexes: Vec::new(), keys: 2 });
                exact(format!(
                    "CREATE TABLE {p} (id int, k int, v int, PRIMARY KEY (id, k)) PARTITION BY LIST (k); \
                     CREATE TABLE {p}_0 PARTITION OF {p} FOR VALUES IN (0); CREATE TABLE {p}_1 PARTITION OF {p} FOR VALUES IN (1); \
                     INSERT INTO {p} SELECT g, g % 2, g FROM generate_series(1, 9) g"
                ))
            }
            // Inexact: the table is rewritten, or existing rows read a value computed on the source.
            85..=89 => {
                t.v_bigint = !t.v_bigint;
                let ty = if t.v_bigint { "bigint" } else { "int" };
                Step { sql: format!("ALTER TABLE {name} ALTER COLUMN v TYPE {ty}"), inexact: Some(format!("public.{name}")) }
            }
            90..=94 => {
                let c = format!("at{n}");
                t.extra.push(c.clone());
                // Exact: the value the source stored for existing rows is replayed.
                exact(format!("ALTER TABLE {name} ADD COLUMN {c} timestamptz DEFAULT now()"))
            }
            95..=99 => {
                let c = format!("sn{n}");
                t.extra.push(c.clone());
                Step { sql: format!("ALTER TABLE {name} ADD COLUMN {c} serial"), inexact: Some(format!("public.{name}")) }
            }
            _ => exact(format!("UPDATE {name} SET v = v - 1 WHERE id % 5 = {}", n % 5)),
        }
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The state after a step, and what a restore to it must do.
struct Target {
    time: chrono::DateTime<chrono::Utc>,
    state: State,
    /// The table of the first inexact step after the base: the restore is refused naming it.
    refused: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_migrations_restore_exactly_or_are_refused() {
    let seed = env_or("PGKEEP_PITR_SEED", 1412);
    let steps = env_or("PGKEEP_PITR_STEPS", 24);
    let db = Db::new("pitr_random", SCHEMA).await;
    pgkeep::stream::setup::install(&db.settings, &db.name).await.unwrap_or_else(|e| panic!("setup: {}", e.user_line()));
    let running = db.stream();
    streaming::wait_for_slot(&db.client, &db.name, Some(true)).await;
    db.backup().await;
    let table = |name: &str| Table { name: name.into(), partitioned: false, extra: Vec::new(), v_bigint: false, next_id: 31, indexes: Vec::new(), keys: 0 };
    let p0 = Table { partitioned: true, next_id: 10, keys: 2, ..table("p0") };
    let mut w = Workload { rng: StdRng::seed_from_u64(seed), tables: vec![table("t0"), table("t1"), p0], n: 0 };

    // 1. The workload; the first inexact table since the newest full backup.
    let mut log = Vec::new();
    let mut targets = Vec::new();
    let mut open_window: Option<String> = None;
    for _ in 0..steps {
        let step = w.next();
        db.run(&step.sql).await;
        log.push(step.sql.clone());
        if open_window.is_none() {
            open_window = step.inexact.clone();
        }
        let (time, state) = mark(&db.client).await;
        targets.push(Target { time, state, refused: open_window.clone() });
        if w.rng.random_bool(if step.inexact.is_some() { 0.5 } else { 0.1 }) {
            // A commit between the target and the backup: the backup holds a
            // transaction committed after the target, so it cannot serve it
            // and the restore must replay across the window (or refuse).
            db.run("UPDATE t1 SET v = v WHERE id = (SELECT min(id) FROM t1)").await;
            db.backup().await;
            log.push("-- no-op update, full backup".into());
            open_window = None;
        }
    }
    // A backup the server took after a target never serves it (a schema
    // change made without setup would be in it unseen): the last target too
    // is replayed from the base before, across any open window.
    db.backup().await;
    db.run("UPDATE t0 SET v = v + 1 WHERE id % 2 = 0").await;
    let (_, final_state) = mark(&db.client).await;
    // No wait: a stop archives every transaction committed before it.
    streaming::stop(running).await;
    let context = format!("seed {seed}, workload:\n{}", log.join("\n"));
    let refused = targets.iter().filter(|t| t.refused.is_some()).count();
    eprintln!("seed {seed}: {} steps, {refused} targets inside a window\n{}", targets.len(), log.join("\n"));
    if seed == 1412 && steps == 24 {
        assert!(refused > 0 && refused < targets.len(), "the fixed workload covers both outcomes; {context}");
    }

    // 2. A restore to the time after every step: exact, or refused naming the table.
    for (i, t) in targets.iter().enumerate() {
        let suffix = format!("s{i}");
        let (name, result) = db.restore(&suffix, RecoveryTarget::Time(t.time), false).await;
        match (&t.refused, result) {
            (None, Ok(_)) => {
                let got = harness::pitr_db::state(&db.cluster.client(&name).await).await;
                assert_eq!(got.schema, t.state.schema, "schema after step {i}; {context}");
                assert_eq!(got.rows, t.state.rows, "rows after step {i}; {context}");
            }
            (Some(table), Err(e)) => {
                let line = e.user_line();
                assert!(line.contains(&format!("table {table} ")) && line.contains("not exact"), "step {i}: {line}; {context}");
            }
            (None, Err(e)) => panic!("restore after step {i} failed: {}; {context}", e.user_line()),
            (Some(table), Ok(_)) => panic!("restore after step {i} crossed the inexact change of {table} without refusing; {context}"),
        }
    }
    db.restore_exact("latest", RecoveryTarget::Latest, &final_state).await;
}

/// The same workload with `stream` taking table images (as the CLI's does):
/// after each inexact step the image of its table closes the window, so a
/// restore to the time after every step is exact from the first base alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_migrations_with_table_images_restore_exactly_from_one_base() {
    let seed = env_or("PGKEEP_PITR_SEED", 1412) + 1;
    let steps = env_or("PGKEEP_PITR_STEPS", 24);
    let db = Db::new("pitr_random_images", SCHEMA).await;
    pgkeep::stream::setup::install(&db.settings, &db.name).await.unwrap_or_else(|e| panic!("setup: {}", e.user_line()));
    let running = db.stream_with_images();
    streaming::wait_for_slot(&db.client, &db.name, Some(true)).await;
    let base = db.backup().await;
    let table = |name: &str| Table { name: name.into(), partitioned: false, extra: Vec::new(), v_bigint: false, next_id: 31, indexes: Vec::new(), keys: 0 };
    let p0 = Table { partitioned: true, next_id: 10, keys: 2, ..table("p0") };
    let mut w = Workload { rng: StdRng::seed_from_u64(seed), tables: vec![table("t0"), table("t1"), p0], n: 0 };

    let mut log = Vec::new();
    let mut targets = Vec::new();
    let mut images = 0;
    for _ in 0..steps {
        let step = w.next();
        let before = db.lsn().await;
        db.run(&step.sql).await;
        log.push(step.sql.clone());
        if let Some(table) = &step.inexact {
            db.wait_image(table, before).await;
            images += 1;
        }
        targets.push(mark(&db.client).await);
    }
    db.run("UPDATE t0 SET v = v + 1 WHERE id % 2 = 0").await;
    let (_, final_state) = mark(&db.client).await;
    streaming::stop(running).await;
    let context = format!("seed {seed}, workload:\n{}", log.join("\n"));
    if seed == 1413 && steps == 24 {
        assert!(images > 0, "the fixed workload has inexact steps; {context}");
    }
    assert_eq!(db.manifests("full").len(), 1, "no full backup but the base; {context}");

    for (i, (time, state)) in targets.iter().enumerate() {
        let (name, result) = db.restore(&format!("s{i}"), RecoveryTarget::Time(*time), false).await;
        let report = result.unwrap_or_else(|e| panic!("restore after step {i} failed: {}; {context}", e.user_line()));
        assert_eq!(report.point_in_time.as_ref().unwrap().base_backup, base);
        let got = harness::pitr_db::state(&db.cluster.client(&name).await).await;
        assert_eq!(got.schema, state.schema, "schema after step {i}; {context}");
        assert_eq!(got.rows, state.rows, "rows after step {i}; {context}");
    }
    db.restore_exact("latest", RecoveryTarget::Latest, &final_state).await;
}

//! Table images (issue 14 §1): where the archive cannot reproduce a table,
//! `pgkeep stream` copies that table alone at a known LSN, and a
//! point-in-time restore from an older base puts the copy in place there.
//! So a target after the image is exact with no new full backup, a target
//! between the change and its image is refused naming the table and the
//! window, and the archive grows by the table, not the database.
//!
//! With `pgkeep setup` (rows a DDL statement made: volatile defaults, an
//! identity added and used as the key, SET LOGGED after a load, CTAS, a
//! table made in a DO block, a column added by a function, a rewrite of a
//! partitioned table), and without it (an uncaptured ALTER TABLE, a table
//! that joined the publications late, and a definition change no archived
//! row change shows, found in the catalog). Every comparison covers every
//! table's rows and the schema. A stream killed while taking an image takes
//! it again when restarted (and its `--metrics-addr` endpoint shows it).

use crate::harness;

use harness::pitr_db::{Db, State, mark};
use harness::streaming;
use pgkeep::replay::RecoveryTarget;

const SCHEMA: &str = "
CREATE TABLE t_plain (id int PRIMARY KEY, v int);
INSERT INTO t_plain SELECT g, g FROM generate_series(1, 300) g;
CREATE TABLE t_clock (id int PRIMARY KEY, v int);
INSERT INTO t_clock SELECT g, g FROM generate_series(1, 300) g;
CREATE TABLE t_ident (v text NOT NULL);
ALTER TABLE t_ident REPLICA IDENTITY FULL;
INSERT INTO t_ident SELECT 'r' || g FROM generate_series(1, 300) g ORDER BY random();
CREATE TABLE child (id int PRIMARY KEY, clock_id int REFERENCES t_clock (id));
INSERT INTO child SELECT g, g FROM generate_series(1, 50) g;
CREATE TABLE events (id int, day date, v text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
CREATE TABLE events_a PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2026-07-01');
CREATE TABLE events_b PARTITION OF events FOR VALUES FROM ('2026-07-01') TO ('2027-01-01');
INSERT INTO events SELECT g, DATE '2026-01-01' + g, 'e' || g FROM generate_series(1, 300) g;
CREATE FUNCTION widen() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'ALTER TABLE t_plain ADD COLUMN w int';
    UPDATE t_plain SET w = id * 7;
END $$;
";

/// Migrations the archive cannot reproduce, each with the table its image
/// is of and a change to that table after the image.
const MIGRATIONS: &[(&str, &str, &str)] = &[
    // A rewrite with a volatile default, on a table a foreign key references.
    (
        "ALTER TABLE t_clock ADD COLUMN at timestamptz DEFAULT clock_timestamp(), ADD COLUMN u uuid DEFAULT gen_random_uuid()",
        "public.t_clock",
        "UPDATE t_clock SET v = 0 WHERE id = 9",
    ),
    // An identity added to rows in no particular order, then the key.
    (
        "ALTER TABLE t_ident ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY; ALTER TABLE t_ident ADD PRIMARY KEY (id); \
         UPDATE t_ident SET v = v || '!' WHERE id IN (7, 8)",
        "public.t_ident",
        "UPDATE t_ident SET v = v || '?' WHERE id = 9; DELETE FROM t_ident WHERE id = 10",
    ),
    (
        "CREATE UNLOGGED TABLE t_unlogged (id int PRIMARY KEY, v text); \
         INSERT INTO t_unlogged SELECT g, 'u' || g FROM generate_series(1, 3000) g; ALTER TABLE t_unlogged SET LOGGED",
        "public.t_unlogged",
        "DELETE FROM t_unlogged WHERE id < 100",
    ),
    ("CREATE TABLE t_ctas AS SELECT id, random() AS r FROM t_plain", "public.t_ctas", "INSERT INTO t_ctas VALUES (-1, 0.5)"),
    (
        "DO $$ BEGIN EXECUTE 'CREATE TABLE made_in_do (id int PRIMARY KEY, v text)'; END $$; INSERT INTO made_in_do VALUES (1, 'a')",
        "public.made_in_do",
        "UPDATE made_in_do SET v = 'b' WHERE id = 1",
    ),
    // A rewrite of a partitioned table: every partition's rows.
    ("ALTER TABLE events ADD COLUMN at timestamptz DEFAULT clock_timestamp()", "public.events_b", "UPDATE events SET v = 'x' WHERE id IN (1, 299)"),
    // A column added by a function: its definition too comes from the image.
    ("SELECT widen()", "public.t_plain", "UPDATE t_plain SET w = 0 WHERE id = 5"),
];

/// A change inside each window (after the migration, before its image),
/// and after the image, a change to the migrated table itself.
async fn step(db: &Db, (sql, table, after_image): (&str, &str, &str), n: usize) -> (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>, State) {
    let before = db.lsn().await;
    db.run(sql).await;
    db.run(&format!("UPDATE child SET id = id WHERE id = {}", n + 1)).await;
    let (inside, _) = mark(&db.client).await;
    db.run(&format!("INSERT INTO child VALUES ({}, NULL)", 1000 + n)).await;
    let image = db.wait_image(table, before).await;
    assert!(image["tables"].as_array().is_some_and(|t| t.len() == 1), "one table: {image}");
    db.run(after_image).await;
    let (after, state) = mark(&db.client).await;
    (inside, after, state)
}

/// A commit after the last target (so the archive reaches it by the
/// server's clock), archived before the stream stops.
async fn settle(db: &Db, sql: &str) {
    db.run(sql).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
}

/// A database of [`SCHEMA`] with `pgkeep setup`, a stream taking table
/// images, and a base backup after its slot is ready.
async fn with_setup(prefix: &str) -> (Db, streaming::Running, String) {
    let db = Db::new(prefix, SCHEMA).await;
    pgkeep::stream::setup::install(&db.settings, &db.name).await.unwrap_or_else(|e| panic!("setup: {}", e.user_line()));
    let running = db.stream_with_images();
    streaming::wait_for_slot(&db.client, &db.name, Some(true)).await;
    let base = db.backup().await;
    (db, running, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_setup_each_inexact_migration_is_exact_from_its_table_image() {
    let (db, running, base) = with_setup("images").await;

    let mut points = Vec::new();
    for (n, m) in MIGRATIONS.iter().enumerate() {
        points.push((m.1, step(&db, *m, n).await));
    }
    db.run("UPDATE t_clock SET v = -v WHERE id < 20; DELETE FROM child WHERE id = 3").await;
    let (_, final_state) = mark(&db.client).await;
    settle(&db, "UPDATE t_clock SET v = v WHERE id = 1").await;
    let report = streaming::stop(running).await;
    let fulls = db.manifests("full");
    assert_eq!(fulls.len(), 1, "only the base is a full backup: the images cost a table each");
    assert!(report.auto_backups.taken.is_empty() && report.auto_backups.images.len() >= MIGRATIONS.len(), "{:?}", report.auto_backups);
    for image in db.manifests("table-image") {
        assert!(image["stats"]["rows"].as_u64().unwrap() <= 3000, "an image holds its table only: {}", image["stats"]);
    }
    // `list` shows images and the table of each.
    let listed = pgkeep::commands::list::run(&db.settings).await.unwrap();
    assert!(
        listed.iter().any(|b| b.kind == "table image" && b.image_of.as_deref().is_some_and(|t| t.starts_with("public.t_clock at LSN"))),
        "{:?}",
        listed.iter().map(|b| (&b.kind, &b.image_of)).collect::<Vec<_>>()
    );
    // An image is never restored alone.
    let id: pgkeep::repo::layout::BackupId = serde_json::from_value(db.manifests("table-image")[0]["backup_id"].clone()).unwrap();
    let opts = pgkeep::commands::restore::RestoreOptions {
        target_db: Some(format!("{}_alone", db.name)),
        yes: true,
        ..pgkeep::commands::restore::RestoreOptions::new(pgkeep::restore::source::BackupSelector::Id(id.clone()))
    };
    let alone = pgkeep::commands::restore::run(&db.settings, &opts).await.expect_err("an image alone is refused").user_line();
    assert!(alone.contains(&id.to_string()) && alone.contains("table image"), "{alone}");

    // After each image: exact from the one base, every image before it put in place.
    for (i, (table, (_, after, state))) in points.iter().enumerate() {
        let r = db.restore_exact(&format!("after_{i}"), RecoveryTarget::Time(*after), state).await;
        let pit = r.point_in_time.as_ref().unwrap();
        assert_eq!(pit.base_backup, base);
        let short = table.trim_start_matches("public.");
        assert!(pit.table_images.iter().any(|l| l.contains(short)), "{table}: {:?}", pit.table_images);
        assert!(pit.inexact_accepted.is_empty());
    }
    // Inside a window: refused, naming the table, the reason and the image.
    let (table, (inside, _, _)) = &points[0];
    let (_, refused) = db.restore("inside", RecoveryTarget::Time(*inside), false).await;
    let line = refused.expect_err("a target inside the window is refused").user_line();
    assert!(line.contains(table) && line.contains("not exact") && line.contains("table image"), "{line}");
    // Accepted: restored, with the table named as a warning.
    let (_, accepted) = db.restore("accepted", RecoveryTarget::Time(*inside), true).await;
    let accepted = accepted.unwrap_or_else(|e| panic!("accepted: {}", e.user_line()));
    assert!(accepted.point_in_time.as_ref().unwrap().inexact_accepted.iter().any(|l| l.contains(table)));
    // Latest: exact.
    db.restore_exact("latest", RecoveryTarget::Latest, &final_state).await;

    // `verify` of the base reads back the images a restore of it would use;
    // a damaged one fails, named.
    let verify = || streaming::pgkeep_cli(db.cluster, &db.name, &db.repo()).args(["verify", &base]).output().unwrap();
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("table image(s) after it read back"), "{text}");
    let image = db.manifests("table-image").into_iter().find(|m| m["stats"]["rows"].as_u64() > Some(0)).unwrap();
    let id = image["backup_id"].as_str().unwrap().to_string();
    let pack = image["objects"].as_array().unwrap().iter().map(|o| o["key"].as_str().unwrap()).find(|k| k.starts_with("data/")).unwrap().to_string();
    let path = db.repo().join("backups").join(&id).join(&pack);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains(&id), "a damaged image fails verify, named: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_setup_uncaptured_changes_and_late_tables_are_exact_from_their_images() {
    let db = Db::new("images_nosetup", "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 80) g;").await;
    let running = db.stream_with_images();
    streaming::wait_for_slot(&db.client, &db.name, Some(true)).await;
    let base = db.backup().await;
    db.run("UPDATE t SET v = 0 WHERE id = 1").await;

    // An uncaptured ALTER with a default computed on the source.
    let before = db.lsn().await;
    db.run("ALTER TABLE t ADD COLUMN at timestamptz DEFAULT now(), ALTER COLUMN v TYPE bigint").await;
    db.run("UPDATE t SET v = 1 WHERE id = 2").await;
    db.wait_image("public.t", before).await;
    db.run("UPDATE t SET v = 2 WHERE id = 3").await;
    let (after_alter, after_alter_state) = mark(&db.client).await;

    // A table the publications learn of late: created and loaded without
    // setup. It can have existed since the check before the one that finds
    // it (up to two check intervals, here 1 s each): wait those out, so the
    // target before it is not in its window.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let before = db.lsn().await;
    db.run("CREATE TABLE late (id int PRIMARY KEY, v text); INSERT INTO late SELECT g, 'l' || g FROM generate_series(1, 500) g").await;
    db.wait_image("public.late", before).await;
    db.run("UPDATE late SET v = 'changed' WHERE id = 7").await;
    let (after_late, after_late_state) = mark(&db.client).await;

    // A definition change with no row change after it: only the catalog shows it.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let before = db.lsn().await;
    db.run("ALTER TABLE late ADD COLUMN z int NOT NULL DEFAULT 5; CREATE INDEX late_z ON late (z)").await;
    db.wait_image("public.late", before).await;
    let (after_unseen, after_unseen_state) = mark(&db.client).await;
    settle(&db, "UPDATE t SET v = v WHERE id = 1").await;
    let _ = streaming::stop(running).await;
    assert_eq!(db.manifests("full").len(), 1, "no full backup was needed");

    let r = db.restore_exact("after_alter", RecoveryTarget::Time(after_alter), &after_alter_state).await;
    assert_eq!(r.point_in_time.as_ref().unwrap().base_backup, base);
    let r = db.restore_exact("after_late", RecoveryTarget::Time(after_late), &after_late_state).await;
    assert_eq!(r.point_in_time.as_ref().unwrap().base_backup, base);
    let r = db.restore_exact("after_unseen", RecoveryTarget::Time(after_unseen), &after_unseen_state).await;
    assert_eq!(r.point_in_time.as_ref().unwrap().base_backup, base);
    db.restore_exact("latest", RecoveryTarget::Latest, &after_unseen_state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_killed_while_taking_an_image_takes_it_again_when_restarted() {
    let db = Db::new("images_kill", SCHEMA).await;
    pgkeep::stream::setup::install(&db.settings, &db.name).await.unwrap_or_else(|e| panic!("setup: {}", e.user_line()));
    // The slot, and a base the archive continues.
    let first = db.stream_with_images();
    streaming::wait_for_slot(&db.client, &db.name, Some(true)).await;
    let base = db.backup().await;
    settle(&db, "UPDATE t_plain SET v = v WHERE id = 1").await;
    streaming::stop(first).await;

    // The CLI's stream, aborting (as kill -9) just before an image's manifest.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let cli = |failpoint: &str| {
        streaming::pgkeep_cli(db.cluster, &db.name, &db.repo())
            .args(["-q", "stream", "--segment-seconds", "1", "--slot", &db.name, "--publication", &db.name, "--metrics-addr", &metrics_addr])
            .env("PGKEEP_FAILPOINT", failpoint)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut killed = cli("image.before_manifest");
    streaming::wait_for_slot(&db.client, &db.name, Some(true)).await;
    db.run(MIGRATIONS[0].0).await;
    db.run("UPDATE t_plain SET v = -v WHERE id = 7").await;
    let status = tokio::task::spawn_blocking(move || killed.wait().unwrap()).await.unwrap();
    assert!(!status.success(), "the stream aborted at the failpoint: {status:?}");
    let journal = || {
        std::fs::read_dir(db.repo().join("stream-state"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".images-pending.json"))
    };
    assert!(journal(), "the image asked for is recorded before it is taken");
    assert!(db.manifests("table-image").is_empty(), "the unfinished image is invisible");

    // Restarted: the image is taken, and the journal emptied.
    streaming::wait_for_slot(&db.client, &db.name, Some(false)).await;
    let mut again = cli("");
    db.wait_image("public.t_clock", pgkeep::repo::layout::Lsn(0)).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while journal() {
        assert!(tokio::time::Instant::now() < deadline, "the journal is removed once the image is taken");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    db.run(MIGRATIONS[0].2).await;
    let (after, state) = mark(&db.client).await;
    db.run("UPDATE t_plain SET v = v WHERE id = 2").await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    // The metrics endpoint: the image, the durable position, the segments stored.
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(&metrics_addr).unwrap();
        write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text
    };
    let text = get("/metrics");
    let value =
        |series: &str| -> f64 { text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or_else(|| panic!("{series} in\n{text}")) };
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(value("pgkeep_stream_table_images_total") >= 1.0 && value("pgkeep_stream_durable_lsn") > 0.0, "{text}");
    assert!(text.lines().any(|l| l.starts_with("pgkeep_stream_segments_stored_total{repository=") && !l.ends_with(" 0")), "{text}");
    assert!(value("pgkeep_last_full_backup_age_seconds") >= 0.0, "the base is known: {text}");
    assert!(get("/").starts_with("HTTP/1.1 404"));
    // A second stream on a taken address fails at start, naming it.
    let out =
        streaming::pgkeep_cli(db.cluster, &db.name, &db.repo()).args(["stream", "--slot", "other_slot", "--metrics-addr", &metrics_addr]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&metrics_addr), "{err}");
    unsafe { libc::kill(again.id() as i32, libc::SIGTERM) };
    assert!(tokio::task::spawn_blocking(move || again.wait().unwrap()).await.unwrap().success());
    let r = db.restore_exact("after", RecoveryTarget::Time(after), &state).await;
    assert_eq!(r.point_in_time.as_ref().unwrap().base_backup, base);
    assert!(!r.point_in_time.as_ref().unwrap().table_images.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_renamed_before_its_image_gets_a_full_backup_instead() {
    let (db, running, base) = with_setup("images_renamed").await;
    // The rewrite marks t_clock; by the time its image is taken the name is gone.
    db.run("ALTER TABLE t_clock ADD COLUMN at timestamptz DEFAULT clock_timestamp(); ALTER TABLE t_clock RENAME TO t_renamed").await;
    db.run("UPDATE t_renamed SET v = 0 WHERE id = 1").await;
    let (inside, _) = mark(&db.client).await;
    db.run("UPDATE t_plain SET v = v WHERE id = 1").await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
    while db.manifests("full").len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no full backup replaced the image");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(db.manifests("table-image").is_empty(), "no image of a table that is gone: {:?}", db.manifests("table-image"));
    db.run("UPDATE t_renamed SET v = 1 WHERE id = 2").await;
    let (after, state) = mark(&db.client).await;
    settle(&db, "UPDATE t_plain SET v = v WHERE id = 2").await;
    streaming::stop(running).await;

    // Inside the window: refused (the renamed table's rows are not the source's).
    let (_, refused) = db.restore("inside", RecoveryTarget::Time(inside), false).await;
    let line = refused.expect_err("refused").user_line();
    assert!(line.contains("public.t_clock") && line.contains("not exact"), "{line}");
    // After the full backup: exact, from it.
    let r = db.restore_exact("after", RecoveryTarget::Time(after), &state).await;
    assert_ne!(r.point_in_time.as_ref().unwrap().base_backup, base);
}

//! A table the streaming role cannot put into its publication (owned by a
//! role it is not a member of, as the platform's tables are on a managed
//! service) has none of its changes archived. A point-in-time restore past
//! that point must refuse it by name, before touching anything, never leave
//! it silently at its base-backup state; `--table` of the other tables and
//! `--accept-inexact` still work. Once the table can be published, the
//! stream adds it, takes an image of it, and targets after the image are
//! exact again from a base inside the window; targets inside the window
//! stay refused. An incremental backup while the table is not archived is
//! a full backup instead.

use crate::harness;

use std::time::Duration;

use harness::pitr_db::{Db, mark, state};
use harness::streaming;
use pgkeep::commands::restore::{self, RestoreOptions};
use pgkeep::replay::RecoveryTarget;
use pgkeep::restore::source::BackupSelector;
use pgkeep::secret::Secret;
use pgkeep::stream::StreamOptions;

/// The windows the stream recorded, as JSON (empty when none yet).
fn windows(db: &Db) -> Vec<serde_json::Value> {
    let dir = db.repo().join("stream-state");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".unarchived.json"))
        .filter_map(|e| serde_json::from_slice::<Vec<serde_json::Value>>(&std::fs::read(e.path()).ok()?).ok())
        .flatten()
        .collect()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn database_exists(db: &Db, name: &str) -> bool {
    db.client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await.unwrap().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_the_stream_cannot_publish_is_refused_by_name_until_an_image_brings_it_back() {
    let n = std::process::id();
    let (streamer, other) = (format!("streamer_{n}"), format!("platform_owner_{n}"));
    let db = Db::new("unarchived", "").await;
    db.cluster.create_role(&streamer, "stream-pass", "REPLICATION").await;
    db.cluster.execute("postgres", &format!("CREATE ROLE {other} NOLOGIN")).await;
    db.cluster
        .execute(
            &db.name,
            &format!(
                "GRANT CREATE ON DATABASE {d} TO {streamer};
                 CREATE TABLE mine (id int PRIMARY KEY, v int);
                 CREATE TABLE theirs (id int PRIMARY KEY, v int);
                 INSERT INTO mine SELECT g, g FROM generate_series(1, 100) g;
                 INSERT INTO theirs SELECT g, g FROM generate_series(1, 100) g;
                 ALTER TABLE mine OWNER TO {streamer};
                 ALTER TABLE theirs OWNER TO {other};
                 GRANT SELECT ON theirs TO {streamer};",
                d = db.name
            ),
        )
        .await;
    // The stream runs as the role that owns `mine` only.
    let mut as_streamer = db.settings.clone();
    as_streamer.db.user = streamer.clone();
    as_streamer.db.password = Some(Secret::new("stream-pass"));
    let auto_backup = pgkeep::stream::autobackup::AutoBackupOptions { on_schema_change: true, ..Default::default() };
    // The default slot and publication, as `backup --incremental` uses them.
    let slot = pgkeep::stream::default_name(&db.name);
    let running = streaming::start(
        &as_streamer,
        StreamOptions { segment_seconds: 1, publication_check: Duration::from_secs(1), auto_backup, ..StreamOptions::new(&slot, &slot) },
    );
    streaming::wait_for_slot(&db.client, &slot, Some(true)).await;
    let base = db.backup().await;
    let at_base = state(&db.client).await;
    // The publication has `mine`, not `theirs`; the stream records `theirs` as not archived.
    let published: Vec<String> =
        db.client.query("SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1", &[&slot]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(published, vec!["mine".to_string()]);
    wait_for("the unarchived record", || windows(&db).iter().any(|w| w["name"] == "theirs" && w["until"].is_null())).await;
    let w = windows(&db);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0]["reason"].as_str().unwrap().contains("must be owner"), "{w:?}");
    // `pgkeep check` alerts on it.
    let check = pgkeep::commands::check::run(&db.settings, &Default::default()).await.unwrap();
    let alert = check.findings.iter().find(|f| f.check == "unarchived").expect("an unarchived finding");
    assert!(!alert.ok && alert.message.contains("public.theirs") && alert.message.contains("must be owner"), "{}", check.render());

    db.run("UPDATE mine SET v = -1 WHERE id = 1; UPDATE theirs SET v = -1 WHERE id = 1").await;
    db.run("DELETE FROM theirs WHERE id = 2; INSERT INTO mine VALUES (101, 101)").await;
    let (inside, inside_state) = mark(&db.client).await;
    db.run("UPDATE mine SET v = v WHERE id = 3").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // 1. Refused by name, before anything: no database is created.
    for (suffix, target) in [("refused_time", Some(RecoveryTarget::Time(inside))), ("refused_latest", None)] {
        let name = format!("{}_{suffix}", db.name);
        let opts = RestoreOptions { target_db: Some(name.clone()), yes: true, point_in_time: target, ..RestoreOptions::new(BackupSelector::Latest) };
        let e = restore::run(&db.settings, &opts).await.expect_err("a target past an unarchived table must be refused");
        let line = e.user_line();
        assert!(line.contains("public.theirs") && line.contains("not archived") && line.contains("must be owner"), "{suffix}: {line}");
        assert!(!line.contains("public.mine"), "{line}");
        assert!(!database_exists(&db, &name).await, "{suffix}: the refusal came after a database was created");
    }

    // An incremental backup now could not be restored: a full backup instead.
    let incr = pgkeep::commands::incremental::run(&db.settings, &pgkeep::commands::backup::BackupOptions::default())
        .await
        .unwrap_or_else(|e| panic!("backup --incremental: {}", e.user_line()));
    assert_eq!(incr.manifest.kind, pgkeep::repo::layout::BackupKind::Full, "an incremental lacking public.theirs must not be written");
    let second_base = incr.manifest.backup_id.to_string();

    // 2. The other tables alone are exact.
    let name = format!("{}_only_mine", db.name);
    let opts = RestoreOptions {
        target_db: Some(name.clone()),
        yes: true,
        point_in_time: Some(RecoveryTarget::Time(inside)),
        tables: vec!["public.mine".into()],
        ..RestoreOptions::new(BackupSelector::Latest)
    };
    let r = restore::run(&db.settings, &opts).await.unwrap_or_else(|e| panic!("--table public.mine: {}", e.user_line()));
    assert_eq!(r.point_in_time.as_ref().unwrap().base_backup, base);
    let got = state(&db.cluster.client(&name).await).await;
    assert_eq!(got.rows["public.mine"], inside_state.rows["public.mine"]);

    // 3. Accepted: restored, `theirs` as the base has it, with the warning.
    let (name, r) = db.restore("accepted", RecoveryTarget::Time(inside), true).await;
    let r = r.unwrap_or_else(|e| panic!("--accept-inexact: {}", e.user_line()));
    let pit = r.point_in_time.as_ref().unwrap();
    assert!(pit.inexact_accepted.iter().any(|l| l.contains("public.theirs") && l.contains("not archived")), "{:?}", pit.inexact_accepted);
    let got = state(&db.cluster.client(&name).await).await;
    assert_eq!(got.rows["public.mine"], inside_state.rows["public.mine"]);
    assert_eq!(got.rows["public.theirs"], at_base.rows["public.theirs"]);
    assert_ne!(got.rows["public.theirs"], inside_state.rows["public.theirs"], "the test must change the unarchived table");

    // 4. The streaming role may publish it now: added at the next check, the window
    // closes, and an image of the table brings it back.
    let before = db.lsn().await;
    db.cluster.execute("postgres", &format!("GRANT {other} TO {streamer}")).await;
    db.wait_image("public.theirs", before).await;
    wait_for("the window to close", || windows(&db).iter().all(|w| !w["until"].is_null())).await;
    let check = pgkeep::commands::check::run(&db.settings, &Default::default()).await.unwrap();
    assert!(check.findings.iter().filter(|f| f.check == "unarchived").all(|f| f.ok), "{}", check.render());
    db.run("UPDATE theirs SET v = -3 WHERE id = 3; UPDATE mine SET v = -3 WHERE id = 3").await;
    let (after, after_state) = mark(&db.client).await;
    db.run("UPDATE mine SET v = v WHERE id = 4").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = streaming::stop(running).await;

    let r = db.restore_exact("after_image", RecoveryTarget::Time(after), &after_state).await;
    // From the newest base before the target (inside the window too), through the image.
    assert_eq!(r.point_in_time.as_ref().unwrap().base_backup, second_base);
    assert!(r.point_in_time.as_ref().unwrap().table_images.iter().any(|l| l.contains("theirs")), "{:?}", r.point_in_time.as_ref().unwrap().table_images);
    let (_, r) = db.restore("inside_again", RecoveryTarget::Time(inside), false).await;
    let line = r.expect_err("the window stays refused").user_line();
    assert!(line.contains("public.theirs") && line.contains("not archived"), "{line}");
}

/// A table without a replica identity is in the insert-only publication: its
/// UPDATE and DELETE are not archived. The stream sees them in the server's
/// statistics and takes an image of the table: a target between the change
/// and the image is refused by name, a target after it is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_to_a_table_without_replica_identity_are_refused_until_its_image_then_exact() {
    let db = Db::new(
        "nokey_writes",
        "CREATE TABLE logs (id int, v text); INSERT INTO logs SELECT g, 'l' || g FROM generate_series(1, 200) g;
         CREATE TABLE k (id int PRIMARY KEY, v int); INSERT INTO k VALUES (1, 1);",
    )
    .await;
    let running = db.stream_with_images();
    streaming::wait_for_slot(&db.client, &db.name, Some(true)).await;
    let base = db.backup().await;
    // Inserts alone are archived: exact.
    db.run("INSERT INTO logs VALUES (300, 'only inserted'); UPDATE k SET v = 2").await;
    let (inserts, inserts_state) = mark(&db.client).await;
    // The stream's first statistics reading is its baseline; give it a check or two.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = db.lsn().await;
    db.run("UPDATE logs SET v = 'changed' WHERE id <= 10; DELETE FROM logs WHERE id > 190 AND id < 300; INSERT INTO logs VALUES (500, 'new')").await;
    db.run("UPDATE k SET v = 3").await;
    let (inside, _) = mark(&db.client).await;
    let image = db.wait_image("public.logs", before).await;
    assert!(image["image"]["covers"].to_string().contains("no replica identity"), "{image}");
    db.run("INSERT INTO logs VALUES (501, 'after the image'); UPDATE k SET v = 4").await;
    let (after, after_state) = mark(&db.client).await;
    db.run("UPDATE k SET v = v").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = streaming::stop(running).await;

    let r = db.restore_exact("after", RecoveryTarget::Time(after), &after_state).await;
    let pit = r.point_in_time.as_ref().unwrap();
    assert_eq!(pit.base_backup, base);
    assert_eq!(pit.table_images.len(), 1, "the image is put in place once: {:?}", pit.table_images);
    db.restore_exact("latest", RecoveryTarget::Latest, &after_state).await;
    let (_, r) = db.restore("inside", RecoveryTarget::Time(inside), false).await;
    let line = r.expect_err("a target between the update and the image must be refused").user_line();
    assert!(line.contains("public.logs") && line.contains("no replica identity"), "{line}");
    // Before the update only inserts happened; the cover is conservative (the statistics
    // lag), so that target may be refused too, but never restored wrongly.
    let (name, r) = db.restore("inserts", RecoveryTarget::Time(inserts), false).await;
    match r {
        Ok(_) => assert_eq!(state(&db.cluster.client(&name).await).await, inserts_state),
        Err(e) => assert!(e.user_line().contains("public.logs"), "{}", e.user_line()),
    }
}

/// Changes made while no stream runs: an UPDATE of a table without a replica
/// identity, and a definition change without captured DDL. The next run
/// compares the tables with what the last run's checks saw (kept in the
/// repository), takes an image of each, and a replay across them is exact
/// after the images and refused before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_no_stream_ran_are_found_by_the_next_run() {
    let db = Db::new(
        "while_stopped",
        "CREATE TABLE logs (id int, v text); INSERT INTO logs SELECT g, 'l' || g FROM generate_series(1, 100) g;
         CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 100) g;",
    )
    .await;
    let running = db.stream_with_images();
    streaming::wait_for_slot(&db.client, &db.name, Some(true)).await;
    let base = db.backup().await;
    db.run("INSERT INTO logs VALUES (101, 'archived'); UPDATE t SET v = 0 WHERE id = 1").await;
    // A few checks, so the state it keeps has seen both tables.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let _ = streaming::stop(running).await;
    assert!(db.repo().join("stream-state").read_dir().unwrap().flatten().any(|e| e.file_name().to_string_lossy().ends_with(".watch.json")));

    // While no stream runs.
    let before = db.lsn().await;
    db.run("UPDATE logs SET v = 'changed while stopped' WHERE id <= 5").await;
    db.run("ALTER TABLE t ADD COLUMN w int DEFAULT 7").await;
    let (stopped, _) = mark(&db.client).await;
    // Let the statistics reach the server's counters.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let running = db.stream_with_images();
    db.wait_image("public.logs", before).await;
    db.wait_image("public.t", before).await;
    db.run("UPDATE t SET v = -1 WHERE id = 2; INSERT INTO logs VALUES (102, 'after')").await;
    let (after, after_state) = mark(&db.client).await;
    db.run("UPDATE t SET v = v WHERE id = 3").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = streaming::stop(running).await;

    let r = db.restore_exact("after", RecoveryTarget::Time(after), &after_state).await;
    assert_eq!(r.point_in_time.as_ref().unwrap().base_backup, base);
    let (_, r) = db.restore("stopped", RecoveryTarget::Time(stopped), false).await;
    let line = r.expect_err("a target between the changes and their images must be refused").user_line();
    assert!(line.contains("public.logs") || line.contains("public.t"), "{line}");
}

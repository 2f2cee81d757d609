//! `pgkeep stream` with its publications, `pgkeep setup`'s DDL capture,
//! sequence samples and automatic full backups, against the shared
//! cluster (each test has its own database, slot and publications):
//! - a table without replica identity is in the insert-only publication:
//!   its inserts are archived, UPDATE/DELETE on it keep working, and once
//!   it has a primary key it moves to the main publication at restart;
//! - a slot older than the insert-only publication streams the main one
//!   until its position passes the publication's creation, then both;
//! - tables created while streaming are archived: by the periodic check
//!   without setup, in their creating transaction with it;
//! - with setup, an ALTER TABLE yields a `pgkeep.ddl` message in its
//!   transaction, a string of several commands one message, and no
//!   automatic backup; setup is idempotent, `--remove` cleans up, and a
//!   role that is not a superuser gets one line naming what is missing;
//! - sequences appear in segment metadata at least at the values used;
//! - an ALTER TABLE without setup makes the stream take a full backup;
//! - a stop right after commits archives them; a write made once the slot
//!   is ready is archived while another transaction delays its creation.
//!
//! Segments are read with `segment::decode` and `pgoutput::decode`.

use crate::harness;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use harness::backup_check::settings;
use harness::postgres::PgCluster;
use harness::streaming;
use pgkeep::config::{RepoSpec, Settings};
use pgkeep::replication::pgoutput::{self, Oid, PgOutputMessage};
use pgkeep::repo::catalog::{self, CatalogEntry};
use pgkeep::stream::autobackup::AutoBackupOptions;
use pgkeep::stream::ddl::{DDL_PREFIX, DdlMessage};
use pgkeep::stream::segment::{self, ChangeSegment};
use pgkeep::stream::{StreamOptions, StreamReport};

const WAIT: Duration = Duration::from_secs(90);

struct Db {
    cluster: &'static PgCluster,
    name: String,
    _dir: tempfile::TempDir,
    repo: PathBuf,
    settings: Settings,
    client: tokio_postgres::Client,
}

impl Db {
    async fn new(prefix: &str, schema: &str) -> Db {
        let cluster = PgCluster::shared();
        let name = cluster.fresh_db(prefix).await;
        cluster.execute(&name, schema).await;
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        let settings = settings(cluster.superuser_settings(&name), vec![RepoSpec::Local(repo.clone())]);
        let client = cluster.client(&name).await;
        Db { cluster, name, _dir: dir, repo, settings, client }
    }

    /// Slot and publication are named after the database (slots are cluster-wide).
    fn options(&self) -> StreamOptions {
        StreamOptions { segment_seconds: 1, publication_check: Duration::from_secs(1), ..StreamOptions::new(&self.name, &self.name) }
    }

    fn insert_only(&self) -> String {
        format!("{}_insert_only", self.name)
    }

    async fn published(&self, publication: &str) -> Vec<String> {
        self.client
            .query("SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1", &[&publication])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Wait until `publication` lists `table`.
    async fn wait_published(&self, publication: &str, table: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.published(publication).await.iter().any(|t| t == table) {
            assert!(tokio::time::Instant::now() < deadline, "{table} never joined {publication}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait until the stream's slot is created (writes from now on are
    /// decoded, see `streaming::SLOT_READY`) and in use.
    async fn wait_slot_active(&self) {
        streaming::wait_for_slot(&self.client, &self.name, Some(true)).await
    }

    async fn archive(&self) -> Archive {
        let storage = pgkeep::storage::open(&RepoSpec::Local(self.repo.clone())).await.unwrap();
        let mut segments = Vec::new();
        for meta in storage.list("changes/").await.unwrap() {
            let bytes = storage.get(&meta.key, None).await.unwrap();
            segments.push(segment::decode(&bytes, &meta.key).unwrap());
        }
        Archive { segments }
    }

    /// Wait until the archive satisfies `done`.
    async fn wait_archive(&self, what: &str, done: impl Fn(&Archive) -> bool) -> Archive {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let archive = self.archive().await;
            if done(&archive) {
                return archive;
            }
            assert!(tokio::time::Instant::now() < deadline, "never archived: {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn install_setup(&self) {
        let report = pgkeep::stream::setup::install(&self.settings, &self.name).await.unwrap_or_else(|e| panic!("setup: {}", e.user_line()));
        assert!(report.messages_streamed);
    }
}

fn start(settings: &Settings, opts: StreamOptions) -> streaming::Running {
    streaming::start(settings, opts)
}

async fn stop(running: streaming::Running) -> StreamReport {
    streaming::stop(running).await
}

/// Decoded segments of one repository, in key (LSN) order.
struct Archive {
    segments: Vec<ChangeSegment>,
}

impl Archive {
    /// Every archived transaction, decoded.
    fn transactions(&self) -> Vec<Vec<PgOutputMessage>> {
        self.segments.iter().flat_map(|s| &s.transactions).map(|t| t.messages.iter().map(|m| pgoutput::decode(m).unwrap()).collect()).collect()
    }

    /// Relation names by oid, from schema records and inline Relation messages.
    fn relations(&self) -> HashMap<Oid, String> {
        let mut out = HashMap::new();
        let schema = self.segments.iter().flat_map(|s| &s.schema).map(|m| pgoutput::decode(m).unwrap());
        for m in schema.chain(self.transactions().into_iter().flatten()) {
            if let PgOutputMessage::Relation(r) = m {
                out.insert(r.id, r.name);
            }
        }
        out
    }

    /// (inserts, updates, deletes) archived for `table`.
    fn changes_of(&self, table: &str) -> (usize, usize, usize) {
        let names = self.relations();
        let is = |oid: &Oid| names.get(oid).is_some_and(|n| n == table);
        let mut counts = (0, 0, 0);
        for m in self.transactions().into_iter().flatten() {
            match m {
                PgOutputMessage::Insert(i) if is(&i.relation_id) => counts.0 += 1,
                PgOutputMessage::Update(u) if is(&u.relation_id) => counts.1 += 1,
                PgOutputMessage::Delete(d) if is(&d.relation_id) => counts.2 += 1,
                _ => {}
            }
        }
        counts
    }

    /// The captured DDL messages of each transaction that has any.
    fn ddl_by_transaction(&self) -> Vec<Vec<DdlMessage>> {
        self.transactions()
            .into_iter()
            .map(|t| {
                t.into_iter()
                    .filter_map(|m| match m {
                        PgOutputMessage::Message(m) if m.transactional && m.prefix == DDL_PREFIX => {
                            Some(DdlMessage::parse(&m.content).expect("readable DDL message"))
                        }
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|d| !d.is_empty())
            .collect()
    }

    fn ddl(&self) -> Vec<DdlMessage> {
        self.ddl_by_transaction().into_iter().flatten().collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_only_publication_archives_inserts_and_keeps_update_and_delete_working() {
    let db = Db::new("insonly", "CREATE TABLE items (id int PRIMARY KEY, v text); CREATE TABLE loose (a int, b text);").await;
    let running = start(&db.settings, db.options());
    db.wait_slot_active().await;
    assert_eq!(db.published(&db.name).await, ["items"]);
    assert_eq!(db.published(&db.insert_only()).await, ["loose"]);
    db.client.batch_execute("INSERT INTO loose VALUES (1, 'x'), (2, 'y'); INSERT INTO items VALUES (1, 'a')").await.unwrap();
    assert_eq!(db.client.execute("UPDATE loose SET b = 'z' WHERE a = 1", &[]).await.unwrap(), 1);
    assert_eq!(db.client.execute("DELETE FROM loose WHERE a = 2", &[]).await.unwrap(), 1);
    db.client.batch_execute("INSERT INTO items VALUES (2, 'b')").await.unwrap();
    let archive = db.wait_archive("both items rows", |a| a.changes_of("items").0 == 2).await;
    assert_eq!(archive.changes_of("loose"), (2, 0, 0), "inserts only");
    let report = stop(running).await;
    assert_eq!(report.tables_without_identity, [r#""public"."loose""#]);

    // With a primary key, the next start moves it to the main publication.
    db.client.batch_execute("ALTER TABLE loose ADD PRIMARY KEY (a)").await.unwrap();
    let running = start(&db.settings, db.options());
    db.wait_slot_active().await;
    assert_eq!(db.published(&db.name).await, ["items", "loose"]);
    assert!(db.published(&db.insert_only()).await.is_empty());
    db.client.batch_execute("UPDATE loose SET b = 'w' WHERE a = 1; DELETE FROM loose WHERE a = 1").await.unwrap();
    db.wait_archive("the update and delete", |a| a.changes_of("loose") == (2, 1, 1)).await;
    let report = stop(running).await;
    assert!(report.tables_without_identity.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_older_than_the_insert_only_publication_streams_it_once_past_its_creation() {
    let db = Db::new("upgrade", "CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE loose (a int);").await;
    // An archive made before the insert-only publication existed.
    let running = start(&db.settings, db.options());
    db.wait_slot_active().await;
    stop(running).await;
    db.client.batch_execute(&format!("DROP PUBLICATION \"{}\"", db.insert_only())).await.unwrap();
    db.client.batch_execute("INSERT INTO items VALUES (1); INSERT INTO loose VALUES (1)").await.unwrap();

    // The restart recreates the insert-only publication, newer than the
    // slot's position: pgoutput would refuse it there.
    let running = start(&db.settings, db.options());
    db.wait_slot_active().await;
    db.wait_archive("the change made before the restart", |a| a.changes_of("items").0 == 1).await;
    // A segment past the publication's creation; then both are streamed.
    db.client.batch_execute("INSERT INTO items VALUES (2)").await.unwrap();
    db.wait_archive("the second row", |a| a.changes_of("items").0 == 2).await;
    db.client.batch_execute("INSERT INTO loose VALUES (2)").await.unwrap();
    let archive = db.wait_archive("the new insert into loose", |a| a.changes_of("loose").0 == 1).await;
    assert_eq!(archive.changes_of("items").0, 2);
    stop(running).await;

    // The same when someone else made the publication anew: pgoutput's
    // refusal is noticed and the stream carries on the same way.
    db.client.batch_execute(&format!("DROP PUBLICATION \"{}\"; INSERT INTO items VALUES (3)", db.insert_only())).await.unwrap();
    db.client.batch_execute(&format!("CREATE PUBLICATION \"{}\" FOR TABLE loose WITH (publish = 'insert, truncate')", db.insert_only())).await.unwrap();
    let running = start(&db.settings, db.options());
    db.wait_archive("the change made before the restart", |a| a.changes_of("items").0 == 3).await;
    db.client.batch_execute("INSERT INTO items VALUES (4)").await.unwrap();
    db.wait_archive("the fourth row", |a| a.changes_of("items").0 == 4).await;
    db.client.batch_execute("INSERT INTO loose VALUES (3)").await.unwrap();
    db.wait_archive("the third insert into loose", |a| a.changes_of("loose").0 == 2).await;
    let report = stop(running).await;
    assert_eq!(report.reconnects, 0, "the refusal is no connection failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_may_not_change_publications_still_streams_and_setup_adds_new_tables() {
    // The documented production set-up: the owner made the publication, the
    // stream's role only replicates and reads.
    let db = Db::new("plainrole", "CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE unlisted (id int PRIMARY KEY);").await;
    db.client.batch_execute(&format!("CREATE PUBLICATION \"{}\" FOR TABLE items", db.name)).await.unwrap();
    let role = format!("{}_streamer", db.name);
    db.cluster.create_role(&role, "pw-streamer", "REPLICATION").await;
    db.client.batch_execute(&format!("GRANT pg_read_all_data TO \"{role}\"")).await.unwrap();
    let mut settings = db.settings.clone();
    settings.db.user = role.clone();
    settings.db.password = Some(pgkeep::config::Secret::new("pw-streamer"));

    let running = start(&settings, db.options());
    db.wait_slot_active().await;
    // No insert-only publication (no CREATE on the database), `unlisted`
    // left where it is (not the publication's owner): streaming goes on.
    assert!(db.published(&db.insert_only()).await.is_empty());
    db.install_setup().await;
    db.client.batch_execute("CREATE TABLE born (id int PRIMARY KEY); INSERT INTO born VALUES (1); INSERT INTO items VALUES (1)").await.unwrap();
    let archive = db.wait_archive("rows of items and the new table", |a| a.changes_of("items").0 == 1 && a.changes_of("born").0 == 1).await;
    assert_eq!(archive.ddl().len(), 1);
    assert_eq!(db.published(&db.name).await, ["born", "items"]);
    let report = stop(running).await;
    assert!(report.tables_without_identity.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_right_after_the_slot_is_ready_is_archived_while_another_transaction_delays_its_creation() {
    // On a busy cluster the slot is listed, and active, while its creation
    // still waits for running transactions: a write then is never decoded.
    let db = Db::new("slotready", "CREATE TABLE items (id int PRIMARY KEY);").await;
    let holder = db.cluster.client(&db.name).await;
    holder.batch_execute("BEGIN; SELECT pg_current_xact_id()").await.unwrap();
    let started = tokio::time::Instant::now();
    let running = start(&db.settings, db.options());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        holder.batch_execute("COMMIT").await.unwrap();
    });
    db.wait_slot_active().await;
    assert!(started.elapsed() >= Duration::from_secs(2), "the slot was ready before the running transaction ended");
    db.client.batch_execute("INSERT INTO items VALUES (1)").await.unwrap();
    db.wait_archive("the row written once the slot was ready", |a| a.changes_of("items").0 == 1).await;
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_right_after_commits_archives_them() {
    let db = Db::new("stopflush", "CREATE TABLE items (id int PRIMARY KEY);").await;
    // No segment closes by age: the stop stores the last one.
    let opts = StreamOptions { segment_seconds: 600, ..db.options() };
    let running = start(&db.settings, opts);
    db.wait_slot_active().await;
    for i in 1..=3 {
        db.client.batch_execute(&format!("INSERT INTO items VALUES ({i})")).await.unwrap();
    }
    let report = stop(running).await;
    assert_eq!(report.totals.transactions, 3, "{:?}", report.totals);
    assert_eq!(db.archive().await.changes_of("items"), (3, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_created_while_streaming_are_archived_without_setup() {
    let db = Db::new("latetables", "CREATE TABLE items (id int PRIMARY KEY);").await;
    let running = start(&db.settings, db.options());
    db.wait_slot_active().await;
    db.client.batch_execute("CREATE TABLE later (id int PRIMARY KEY, v text); CREATE TABLE later_loose (v text)").await.unwrap();
    db.wait_published(&db.name, "later").await;
    db.wait_published(&db.insert_only(), "later_loose").await;
    db.client.batch_execute("INSERT INTO later VALUES (1, 'a'); UPDATE later SET v = 'b'; INSERT INTO later_loose VALUES ('x')").await.unwrap();
    db.wait_archive("rows of the new tables", |a| a.changes_of("later") == (1, 1, 0) && a.changes_of("later_loose").0 == 1).await;
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_setup_a_new_table_is_archived_from_its_creating_transaction() {
    let db = Db::new("setupnew", "CREATE TABLE items (id int PRIMARY KEY);").await;
    db.install_setup().await;
    // No periodic check during the test: the trigger alone must do it.
    let opts = StreamOptions { publication_check: Duration::from_secs(3600), ..db.options() };
    let running = start(&db.settings, opts);
    db.wait_slot_active().await;
    db.client
        .batch_execute(
            "BEGIN; CREATE TABLE fresh (id int PRIMARY KEY, v text); INSERT INTO fresh VALUES (1, 'a'), (2, 'b'); COMMIT; \
             CREATE TABLE fresh_loose AS SELECT 'x'::text AS v; INSERT INTO fresh_loose VALUES ('y');",
        )
        .await
        .unwrap();
    assert_eq!(db.published(&db.insert_only()).await, ["fresh_loose"]);
    let archive = db.wait_archive("rows of the new tables", |a| a.changes_of("fresh").0 == 2 && a.changes_of("fresh_loose").0 >= 1).await;
    let tags: Vec<String> = archive.ddl().into_iter().map(|d| d.tag).collect();
    assert_eq!(tags, ["CREATE TABLE", "CREATE TABLE AS"]);
    // The rows travel in the transaction that created the table, after its DDL message.
    let first = archive.transactions().into_iter().find(|t| t.iter().any(|m| matches!(m, PgOutputMessage::Message(_)))).unwrap();
    let kinds: Vec<&str> = first
        .iter()
        .map(|m| match m {
            PgOutputMessage::Message(m) if m.prefix == DDL_PREFIX => "M",
            // The capture's per-command message (pgkeep.command) follows it.
            PgOutputMessage::Message(_) => "C",
            PgOutputMessage::Insert(_) => "I",
            _ => "",
        })
        .filter(|k| !k.is_empty())
        .collect();
    assert_eq!(kinds, ["M", "C", "I", "I"]);
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_setup_an_alter_table_is_archived_as_a_ddl_message_and_needs_no_backup() {
    let db = Db::new("setupalter", "CREATE TABLE items (id int PRIMARY KEY, v text);").await;
    let owner = format!("{}_owner", db.name);
    db.client
        .batch_execute(&format!("CREATE ROLE \"{owner}\"; GRANT ALL ON SCHEMA public TO \"{owner}\"; ALTER TABLE items OWNER TO \"{owner}\""))
        .await
        .unwrap();
    db.install_setup().await;
    let opts = StreamOptions { auto_backup: AutoBackupOptions { on_schema_change: true, ..Default::default() }, ..db.options() };
    let running = start(&db.settings, opts);
    db.wait_slot_active().await;
    db.client.batch_execute("INSERT INTO items VALUES (1, 'a')").await.unwrap();
    db.wait_archive("the first row", |a| a.changes_of("items").0 == 1).await;
    let alter = "ALTER TABLE items ADD COLUMN extra int";
    db.client.batch_execute(&format!("SET search_path = public, pg_temp; SET ROLE \"{owner}\"")).await.unwrap();
    db.client.batch_execute(alter).await.unwrap();
    db.client.batch_execute("RESET ROLE; INSERT INTO items VALUES (2, 'b', 3)").await.unwrap();
    let archive = db.wait_archive("the row after the ALTER", |a| a.changes_of("items").0 == 2).await;
    let ddl = archive.ddl();
    assert_eq!(ddl.len(), 1, "{ddl:?}");
    assert_eq!((ddl[0].sql.as_str(), ddl[0].tag.as_str(), ddl[0].role.as_str()), (alter, "ALTER TABLE", owner.as_str()));
    assert_eq!(ddl[0].search_path, "public, pg_temp");
    // The new definition came with its DDL: no backup was needed.
    let report = stop(running).await;
    assert!(report.auto_backups.taken.is_empty() && report.auto_backups.failed == 0, "{:?}", report.auto_backups);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_setup_a_string_of_several_commands_emits_one_message() {
    let db = Db::new("setupmulti", "CREATE TABLE items (id int PRIMARY KEY);").await;
    db.install_setup().await;
    let running = start(&db.settings, db.options());
    db.wait_slot_active().await;
    let batch = "CREATE TABLE m1 (id int PRIMARY KEY); CREATE TABLE m2 (id int); ALTER TABLE m1 ADD x int; INSERT INTO m1 VALUES (1, 2)";
    db.client.batch_execute(batch).await.unwrap();
    // pgkeep's own publication changes inside the trigger are not captured.
    db.client.batch_execute("ALTER TABLE m2 ADD PRIMARY KEY (id)").await.unwrap();
    let archive = db.wait_archive("both transactions", |a| a.ddl_by_transaction().len() == 2).await;
    let per_txn = archive.ddl_by_transaction();
    assert_eq!(per_txn[0].len(), 1, "{per_txn:?}");
    assert_eq!((per_txn[0][0].sql.as_str(), per_txn[0][0].tag.as_str()), (batch, "CREATE TABLE"));
    assert_eq!(per_txn[1].len(), 1, "{per_txn:?}");
    assert_eq!(archive.changes_of("m1").0, 1);
    // m2 gained a primary key: the trigger moved it to the main publication.
    assert_eq!(db.published(&db.name).await, ["items", "m1", "m2"]);
    assert!(db.published(&db.insert_only()).await.is_empty());
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_is_idempotent_removable_and_names_missing_privileges() {
    let db = Db::new("setupadmin", "CREATE TABLE items (id int PRIMARY KEY);").await;
    db.install_setup().await;
    db.install_setup().await;
    assert_eq!(event_triggers(&db.client).await, 31, "pgkeep_ddl, then pgkeep_ddl_start, pgkeep_drop and pgkeep_rewrite");
    let removed = pgkeep::stream::setup::remove(&db.settings).await.unwrap();
    assert_eq!(removed, ["event trigger pgkeep_ddl", "schema pgkeep"]);
    assert_eq!(event_triggers(&db.client).await, 0);
    assert!(pgkeep::stream::setup::remove(&db.settings).await.unwrap().is_empty());
    // DDL keeps working without it.
    db.client.batch_execute("ALTER TABLE items ADD v text").await.unwrap();

    let role = format!("{}_plain", db.name);
    db.cluster.create_role(&role, "pw-plain", "").await;
    db.client.batch_execute(&format!("GRANT CREATE ON DATABASE \"{}\" TO \"{role}\"", db.name)).await.unwrap();
    let mut plain = db.settings.clone();
    plain.db.user = role.clone();
    plain.db.password = Some(pgkeep::config::Secret::new("pw-plain"));
    let e = pgkeep::stream::setup::install(&plain, &db.name).await.unwrap_err();
    assert_eq!(e.kind(), pgkeep::ErrorKind::Config);
    let line = e.user_line();
    assert!(line.contains(&db.name) && line.contains("superuser") && !line.contains('\n'), "{line}");
    assert_eq!(event_triggers(&db.client).await, 0);
}

async fn event_triggers(client: &tokio_postgres::Client) -> i64 {
    client.query_one("SELECT count(*) FROM pg_event_trigger WHERE evtname = 'pgkeep_ddl'", &[]).await.unwrap().get::<_, i64>(0)
        + client
            .query_one("SELECT count(*) FROM pg_event_trigger WHERE evtname IN ('pgkeep_ddl_start', 'pgkeep_drop', 'pgkeep_rewrite')", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            * 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_are_sampled_into_segment_metadata() {
    let db = Db::new("seqs", "CREATE TABLE items (id bigserial PRIMARY KEY, v text); CREATE SEQUENCE other START 100;").await;
    let running = start(&db.settings, db.options());
    db.wait_slot_active().await;
    db.client.batch_execute("INSERT INTO items (v) SELECT 'x' FROM generate_series(1, 25)").await.unwrap();
    let other: i64 = db.client.query_one("SELECT nextval('other')", &[]).await.unwrap().get(0);
    db.client.batch_execute("INSERT INTO items (v) VALUES ('last')").await.unwrap();
    let archive = db.wait_archive("26 rows", |a| a.changes_of("items").0 == 26).await;
    stop(running).await;
    let last = archive.segments.iter().rev().find(|s| s.meta.transactions > 0).unwrap();
    let sample = |name: &str| last.meta.sequences.iter().find(|s| s.schema == "public" && s.name == name).cloned();
    let items = sample("items_id_seq").expect("items_id_seq sampled");
    assert!(items.is_called && items.last_value >= 26, "{items:?}");
    let other_sample = sample("other").expect("other sampled");
    assert!(other_sample.is_called && other_sample.last_value >= other, "{other_sample:?}");
    // Every segment with transactions carries samples.
    assert!(archive.segments.iter().filter(|s| s.meta.transactions > 0).all(|s| !s.meta.sequences.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncaptured_alter_table_makes_the_stream_take_a_table_image() {
    let db = Db::new("uncaptured", "CREATE TABLE items (id int PRIMARY KEY, v text);").await;
    let opts = StreamOptions { auto_backup: AutoBackupOptions { on_schema_change: true, ..Default::default() }, ..db.options() };
    let running = start(&db.settings, opts);
    db.wait_slot_active().await;
    db.client.batch_execute("INSERT INTO items VALUES (1, 'a')").await.unwrap();
    db.wait_archive("the first row", |a| a.changes_of("items").0 == 1).await;
    db.client.batch_execute("ALTER TABLE items ADD COLUMN extra int; INSERT INTO items VALUES (2, 'b', 3)").await.unwrap();
    let archive = db.wait_archive("the row after the ALTER", |a| a.changes_of("items").0 == 2).await;
    assert!(archive.ddl().is_empty());
    // The image (of that table alone) starts after the stream received the changed definition.
    let change_lsn = archive
        .transactions()
        .last()
        .and_then(|t| match t.last() {
            Some(PgOutputMessage::Commit(c)) => Some(c.end_lsn),
            _ => None,
        })
        .unwrap();

    let storage = pgkeep::storage::open(&RepoSpec::Local(db.repo.clone())).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let manifest = loop {
        let found = catalog::list_backups(storage.as_ref()).await.unwrap().into_iter().find_map(|e| match e {
            CatalogEntry::Valid(m) if m.kind == pgkeep::repo::layout::BackupKind::TableImage => Some(m),
            _ => None,
        });
        if let Some(m) = found {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "no table image was taken");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(manifest.database, db.name);
    assert!(manifest.snapshot.consistent_lsn >= change_lsn, "{} < {change_lsn}", manifest.snapshot.consistent_lsn);
    let image = manifest.image.as_ref().expect("image section");
    assert_eq!((image.schema.as_str(), image.name.as_str()), ("public", "items"));
    assert_eq!(manifest.tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["items"], "that table alone");
    let report = stop(running).await;
    assert_eq!(report.auto_backups.images, [manifest.backup_id.to_string()]);
    assert!(report.auto_backups.taken.is_empty(), "no full backup: {:?}", report.auto_backups);
}

/// Every way the application can take a table's replica identity away; each
/// table's UPDATE and DELETE must keep working at once (same transaction).
const IDENTITY_SCHEMA: &str = "CREATE COLLATION ident_coll FROM \"C\"; \
    CREATE TABLE by_index (id int NOT NULL, v text); CREATE UNIQUE INDEX by_index_u ON by_index (id); \
    ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_u; \
    CREATE TABLE by_pkey (id int PRIMARY KEY, v text); \
    CREATE TABLE by_nothing (id int PRIMARY KEY, v text); \
    CREATE TABLE by_cascade (k text COLLATE ident_coll NOT NULL, v text); CREATE UNIQUE INDEX by_cascade_u ON by_cascade (k); \
    ALTER TABLE by_cascade REPLICA IDENTITY USING INDEX by_cascade_u; \
    CREATE TABLE by_default (id int NOT NULL, v text); CREATE UNIQUE INDEX by_default_u ON by_default (id); \
    ALTER TABLE by_default REPLICA IDENTITY USING INDEX by_default_u; \
    CREATE TABLE goes_unlogged (id int PRIMARY KEY, v text); \
    CREATE TABLE by_concurrently (id int NOT NULL, v text); CREATE UNIQUE INDEX by_concurrently_u ON by_concurrently (id); \
    ALTER TABLE by_concurrently REPLICA IDENTITY USING INDEX by_concurrently_u; INSERT INTO by_concurrently VALUES (1, 'a'); \
    INSERT INTO by_index VALUES (1, 'a'); INSERT INTO by_pkey VALUES (1, 'a'); INSERT INTO by_nothing VALUES (1, 'a'), (2, 'b'); \
    INSERT INTO by_cascade VALUES ('k', 'a'); INSERT INTO by_default VALUES (1, 'a'); INSERT INTO goes_unlogged VALUES (1, 'a');";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_setup_losing_the_replica_identity_never_breaks_update_or_delete() {
    let db = Db::new("identloss", IDENTITY_SCHEMA).await;
    db.install_setup().await;
    // No periodic check: the event trigger alone must do it.
    let opts = StreamOptions { publication_check: Duration::from_secs(3600), ..db.options() };
    let running = start(&db.settings, opts);
    db.wait_slot_active().await;
    assert_eq!(db.published(&db.name).await, ["by_cascade", "by_concurrently", "by_default", "by_index", "by_nothing", "by_pkey", "goes_unlogged"]);
    // DROP INDEX CONCURRENTLY runs outside a transaction block: the next statement must work.
    db.client.batch_execute("DROP INDEX CONCURRENTLY by_concurrently_u").await.unwrap();
    db.client.batch_execute("UPDATE by_concurrently SET v = 'b'").await.unwrap();

    // Each in one transaction with the write that would fail.
    for (ddl, write) in [
        ("DROP INDEX by_index_u", "UPDATE by_index SET v = 'b'"),
        ("ALTER TABLE by_pkey DROP CONSTRAINT by_pkey_pkey", "DELETE FROM by_pkey"),
        ("ALTER TABLE by_nothing REPLICA IDENTITY NOTHING", "UPDATE by_nothing SET v = 'c' WHERE id = 1"),
        ("DROP COLLATION ident_coll CASCADE", "UPDATE by_cascade SET v = 'b'"),
        ("ALTER TABLE by_default REPLICA IDENTITY DEFAULT", "DELETE FROM by_default"),
    ] {
        db.client
            .batch_execute(&format!("BEGIN; {ddl}; {write}; COMMIT"))
            .await
            .unwrap_or_else(|e| panic!("{ddl}; {write}: {}", pgkeep::pg::error_message(&e)));
    }
    // And later, in their own transactions.
    db.client.batch_execute("DELETE FROM by_index; UPDATE by_nothing SET v = 'd'; DELETE FROM by_cascade").await.unwrap();
    assert_eq!(db.published(&db.name).await, ["goes_unlogged"]);
    assert_eq!(db.published(&db.insert_only()).await, ["by_cascade", "by_concurrently", "by_default", "by_index", "by_nothing", "by_pkey"]);

    // SET UNLOGGED, refused by PostgreSQL on a published table, works: the table leaves the publications.
    db.client.batch_execute("ALTER TABLE goes_unlogged SET UNLOGGED; UPDATE goes_unlogged SET v = 'b'").await.unwrap();
    assert!(db.published(&db.name).await.is_empty());
    // SET LOGGED puts it back (ALTER TABLE placement of the capture).
    db.client.batch_execute("ALTER TABLE goes_unlogged SET LOGGED").await.unwrap();
    assert_eq!(db.published(&db.name).await, ["goes_unlogged"]);

    // Inserts into the moved tables are still archived.
    db.client.batch_execute("INSERT INTO by_pkey VALUES (7, 'x')").await.unwrap();
    db.wait_archive("the insert after the move", |a| a.changes_of("by_pkey") == (1, 0, 0)).await;
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_setup_the_stream_moves_a_table_that_lost_its_identity_within_seconds() {
    let db = Db::new(
        "identnosetup",
        "CREATE TABLE t (id int NOT NULL, v text); CREATE UNIQUE INDEX t_u ON t (id); \
        ALTER TABLE t REPLICA IDENTITY USING INDEX t_u; INSERT INTO t VALUES (1, 'a');",
    )
    .await;
    // The default publication check.
    let opts = StreamOptions { segment_seconds: 1, ..StreamOptions::new(&db.name, &db.name) };
    assert_eq!(opts.publication_check, Duration::from_secs(5));
    let running = start(&db.settings, opts);
    db.wait_slot_active().await;
    assert_eq!(db.published(&db.name).await, ["t"]);
    db.client.batch_execute("DROP INDEX t_u").await.unwrap();
    let dropped = tokio::time::Instant::now();
    db.wait_published(&db.insert_only(), "t").await;
    assert!(dropped.elapsed() < Duration::from_secs(12), "moved after {:?}", dropped.elapsed());
    assert!(db.published(&db.name).await.is_empty());
    db.client.batch_execute("UPDATE t SET v = 'b'; DELETE FROM t").await.unwrap();
    stop(running).await;
}

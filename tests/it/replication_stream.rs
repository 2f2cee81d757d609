//! `ReplicationConnection::start_logical_replication` and the pgoutput
//! decoder against a real cluster: a workload of inserts, an update that
//! leaves a TOASTed column unchanged, `REPLICA IDENTITY FULL` updates and
//! deletes, a cascading truncate and a logical message, decoded in order;
//! keepalives with reply requests answered; the slot's `confirmed_flush_lsn`
//! following our status update; leaving the stream to drop the slot; and
//! server errors at and after the start leaving the connection usable; and
//! on a server speaking German, the decisions on a busy slot, a missing
//! publication and a taken database name read the SQLSTATE, not the words.
//!
//! With `PGKEEP_WRITE_FUZZ_SEEDS=1` the main test also writes the small
//! payloads it receives to `fuzz/corpus/pgoutput_decode/`.

use crate::harness;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use harness::postgres::{PgCluster, PgOptions, quote_ident};
use pgkeep::ErrorKind;
use pgkeep::replication::pgoutput::{self, OldTuple, PgOutputMessage, TupleValue};
use pgkeep::replication::{LogicalStream, ReplicationConnection, StreamEvent};
use pgkeep::repo::layout::Lsn;

/// The bound on every wait: a bug fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(30);

/// Schema and publications, created before the slot.
const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('calm', 'busy');
CREATE TABLE items (id int PRIMARY KEY, note text, big text);
ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE item_notes (item_id int REFERENCES items (id), body text);
CREATE TABLE audit (a int, b text, m mood);
ALTER TABLE audit REPLICA IDENTITY FULL;
CREATE PUBLICATION p FOR ALL TABLES;
CREATE PUBLICATION "It's ""odd"", really" FOR TABLE items;
"#;

/// One transaction per entry.
const WORKLOAD: [&str; 6] = [
    "INSERT INTO items VALUES (1, 'first', repeat('x', 100000)), (2, 'second', 'small')",
    "UPDATE items SET note = 'changed' WHERE id = 1",
    "BEGIN; \
     INSERT INTO audit VALUES (10, 'before', 'calm'); \
     UPDATE audit SET b = 'after' WHERE a = 10; \
     DELETE FROM audit; \
     COMMIT",
    "DELETE FROM items WHERE id = 2",
    "TRUNCATE items RESTART IDENTITY CASCADE",
    "SELECT pg_logical_emit_message(true, 'pgkeep', 'hello')",
];

/// What the workload decodes to, one line per message (see [`describe`]).
const EXPECTED: &[&str] = &[
    "Begin",
    "Relation public.items d [id int4 key, note text, big text]",
    "Insert items [1, first, text(100000 bytes)]",
    "Insert items [2, second, small]",
    "Commit",
    "Begin",
    "Update items new [1, changed, UNCHANGED-TOAST]",
    "Commit",
    "Begin",
    "Type public.mood",
    "Relation public.audit f [a int4 key, b text key, m mood key]",
    "Insert audit [10, before, calm]",
    "Update audit old-full [10, before, calm] new [10, after, calm]",
    "Delete audit old-full [10, after, calm]",
    "Commit",
    "Begin",
    "Delete items old-key [2, NULL, NULL]",
    "Commit",
    "Begin",
    // TRUNCATE gives items a new relfilenode; the invalidation makes
    // pgoutput send its Relation again.
    "Relation public.items d [id int4 key, note text, big text]",
    "Relation public.item_notes d [item_id int4, body text]",
    "Truncate cascade restart-identity [items, item_notes]",
    "Commit",
    "Begin",
    "Message transactional pgkeep: hello",
    "Commit",
];

/// `fut`, or a panic naming `what` after [`WAIT`].
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?}: {what}"),
    }
}

async fn connect(cluster: &PgCluster, dbname: &str) -> ReplicationConnection {
    let db = cluster.superuser_settings(dbname);
    bounded("replication connect", ReplicationConnection::connect(&db)).await.unwrap_or_else(|e| panic!("replication connect: {}", e.user_line()))
}

/// The slot's `confirmed_flush_lsn`.
async fn confirmed_flush(client: &tokio_postgres::Client, slot: &str) -> Lsn {
    let row = client.query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.unwrap();
    row.get::<_, String>(0).parse().unwrap()
}

/// A column value for [`EXPECTED`]: text up to 32 bytes as itself, longer
/// text by its length.
fn value(v: &TupleValue) -> String {
    match v {
        TupleValue::Null => "NULL".into(),
        TupleValue::UnchangedToast => "UNCHANGED-TOAST".into(),
        TupleValue::Text(t) if t.len() <= 32 => String::from_utf8_lossy(t).into_owned(),
        TupleValue::Text(t) => format!("text({} bytes)", t.len()),
        TupleValue::Binary(b) => format!("binary({} bytes)", b.len()),
    }
}

fn tuple(values: &[TupleValue]) -> String {
    let values: Vec<String> = values.iter().map(value).collect();
    format!("[{}]", values.join(", "))
}

fn old(old: &OldTuple) -> String {
    match old {
        OldTuple::Key(values) => format!("old-key {}", tuple(values)),
        OldTuple::Full(values) => format!("old-full {}", tuple(values)),
    }
}

/// One line per message, relations and types by name (`names` maps oids
/// to names as Relation and Type messages arrive).
fn describe(message: &PgOutputMessage, names: &mut HashMap<u32, String>) -> String {
    let name = |names: &HashMap<u32, String>, id: &u32| names.get(id).cloned().unwrap_or_else(|| format!("oid {id}"));
    match message {
        PgOutputMessage::Begin(_) => "Begin".into(),
        PgOutputMessage::Commit(_) => "Commit".into(),
        PgOutputMessage::Origin(o) => format!("Origin {}", o.name),
        PgOutputMessage::Type(t) => {
            names.insert(t.id, t.name.clone());
            format!("Type {}.{}", t.namespace, t.name)
        }
        PgOutputMessage::Relation(r) => {
            names.insert(r.id, r.name.clone());
            let columns: Vec<String> = r
                .columns
                .iter()
                .map(|c| {
                    let type_name = match c.type_oid {
                        23 => "int4".to_string(),
                        25 => "text".to_string(),
                        oid => name(names, &oid),
                    };
                    let key = if c.is_key() { " key" } else { "" };
                    format!("{} {type_name}{key}", c.name)
                })
                .collect();
            let identity = match r.replica_identity {
                pgoutput::ReplicaIdentity::Default => "d",
                pgoutput::ReplicaIdentity::Nothing => "n",
                pgoutput::ReplicaIdentity::Full => "f",
                pgoutput::ReplicaIdentity::Index => "i",
            };
            format!("Relation {}.{} {identity} [{}]", r.namespace, r.name, columns.join(", "))
        }
        PgOutputMessage::Insert(i) => {
            format!("Insert {} {}", name(names, &i.relation_id), tuple(&i.new_tuple))
        }
        PgOutputMessage::Update(u) => {
            let old = u.old.as_ref().map(|o| format!("{} ", old(o))).unwrap_or_default();
            format!("Update {} {old}new {}", name(names, &u.relation_id), tuple(&u.new_tuple))
        }
        PgOutputMessage::Delete(d) => {
            format!("Delete {} {}", name(names, &d.relation_id), old(&d.old))
        }
        PgOutputMessage::Truncate(t) => {
            let mut flags = String::new();
            if t.cascade() {
                flags.push_str(" cascade");
            }
            if t.restart_identity() {
                flags.push_str(" restart-identity");
            }
            let relations: Vec<String> = t.relation_ids.iter().map(|id| name(names, id)).collect();
            format!("Truncate{flags} [{}]", relations.join(", "))
        }
        PgOutputMessage::Message(m) => {
            format!("Message {} {}: {}", if m.transactional { "transactional" } else { "non-transactional" }, m.prefix, String::from_utf8_lossy(&m.content))
        }
    }
}

/// What the first phase of streaming saw.
#[derive(Default)]
struct Received {
    messages: Vec<PgOutputMessage>,
    payloads: Vec<bytes::Bytes>,
    reply_requests: usize,
}

impl Received {
    fn commits(&self) -> usize {
        self.messages.iter().filter(|m| matches!(m, PgOutputMessage::Commit(_))).count()
    }
}

/// Read events until `commits` transactions arrived and the server asked
/// for a reply at least once; reply to every request with `confirmed`.
async fn receive(stream: &mut LogicalStream<'_>, commits: usize, confirmed: Lsn) -> Received {
    let mut received = Received::default();
    while received.commits() < commits || received.reply_requests == 0 {
        let event = stream.next_event().await.unwrap_or_else(|e| panic!("{}", e.user_line()));
        match event {
            StreamEvent::XLogData { data, .. } => {
                let message = pgoutput::decode_shared(&data).unwrap_or_else(|e| panic!("undecodable payload {data:?}: {e}"));
                received.messages.push(message);
                received.payloads.push(data);
            }
            StreamEvent::Keepalive { reply_requested: true, .. } => {
                received.reply_requests += 1;
                stream.send_status(confirmed, confirmed, confirmed, false).await.unwrap();
            }
            StreamEvent::Keepalive { .. } => {}
            StreamEvent::End => panic!("the server ended the stream"),
        }
    }
    received
}

/// Transactions are Begin … Commit with the Begin's final LSN equal to the
/// Commit's LSN, commits in increasing LSN order, recent commit times.
/// Returns the last Commit's end LSN.
fn check_transactions(messages: &[PgOutputMessage]) -> Lsn {
    let now = chrono::Utc::now();
    let mut open = None;
    let mut last_commit = Lsn(0);
    let mut last_end = Lsn(0);
    for message in messages {
        match message {
            PgOutputMessage::Begin(begin) => {
                assert!(open.is_none(), "Begin inside a transaction");
                assert_ne!(begin.xid, 0);
                open = Some(begin.clone());
            }
            PgOutputMessage::Commit(commit) => {
                let begin = open.take().expect("Commit without Begin");
                assert_eq!(begin.final_lsn, commit.commit_lsn);
                assert_eq!(begin.commit_time, commit.commit_time);
                assert!(commit.commit_lsn > last_commit, "commit LSNs must increase");
                assert!(commit.end_lsn > commit.commit_lsn);
                let at = commit.commit_time.to_utc().expect("a finite commit time");
                assert!((now - at).num_minutes().abs() < 10, "commit time {at}");
                last_commit = commit.commit_lsn;
                last_end = commit.end_lsn;
            }
            _ => assert!(open.is_some(), "{} outside a transaction", message.name()),
        }
    }
    assert!(open.is_none(), "unfinished transaction");
    last_end
}

/// Write payloads up to 4 KiB as fuzz seeds, one file per message kind and size.
fn write_fuzz_seeds(received: &Received) {
    if std::env::var_os("PGKEEP_WRITE_FUZZ_SEEDS").is_none() {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/pgoutput_decode");
    std::fs::create_dir_all(&dir).unwrap();
    for (message, payload) in received.messages.iter().zip(&received.payloads) {
        if payload.len() <= 4096 {
            let name = format!("{}-{}", message.name().to_lowercase(), payload.len());
            std::fs::write(dir.join(name), payload).unwrap();
        }
    }
}

#[tokio::test]
async fn workload_is_streamed_decoded_and_confirmed() {
    let cluster = PgCluster::shared();
    let dbname = cluster.fresh_db("repl_stream").await;
    // Keepalives ask for a reply after half of this without one.
    cluster.execute("postgres", &format!("ALTER DATABASE {} SET wal_sender_timeout = '3s'", quote_ident(&dbname))).await;
    cluster.execute(&dbname, SCHEMA).await;
    let client = cluster.client(&dbname).await;
    let oid = |table: &'static str| {
        let client = &client;
        async move {
            let row = client.query_one("SELECT $1::text::regclass::oid", &[&table]).await.unwrap();
            row.get::<_, u32>(0)
        }
    };
    let (items, item_notes, audit) = (oid("items").await, oid("item_notes").await, oid("audit").await);

    // 1. A permanent slot, then the workload it must hold on to.
    let slot = "pgkeep_stream_test";
    let mut conn = connect(cluster, &dbname).await;
    let created = bounded("create slot", conn.create_logical_slot(slot, false, false)).await.unwrap();
    for sql in WORKLOAD {
        client.batch_execute(sql).await.unwrap();
    }

    // 2. Stream from the consistent point until every transaction is in
    //    and a keepalive asked for a reply (answered with "nothing stored").
    let start = created.consistent_point;
    let publications = ["p", "It's \"odd\", really"];
    let mut stream =
        bounded("START_REPLICATION", conn.start_logical_replication(slot, start, &publications, true)).await.unwrap_or_else(|e| panic!("{}", e.user_line()));
    let received = bounded("the workload and a reply request", receive(&mut stream, WORKLOAD.len(), start)).await;
    write_fuzz_seeds(&received);

    // 3. The exact messages, in order.
    let mut names = HashMap::new();
    let lines: Vec<String> = received.messages.iter().map(|m| describe(m, &mut names)).collect();
    assert_eq!(lines, EXPECTED);
    for (id, table) in [(items, "items"), (item_notes, "item_notes"), (audit, "audit")] {
        assert_eq!(names.get(&id).map(String::as_str), Some(table));
    }
    let last_end = check_transactions(&received.messages);
    let big = received.messages.iter().find_map(|m| match m {
        PgOutputMessage::Insert(i) => Some(i.new_tuple[2].clone()),
        _ => None,
    });
    assert_eq!(big, Some(TupleValue::Text("x".repeat(100_000).into())));
    assert!(received.reply_requests >= 1);

    // 4. Confirm the last transaction; the slot follows. Keep serving the
    //    stream while polling, dropping `next_event` on every tick.
    stream.send_status(last_end, last_end, last_end, false).await.unwrap();
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    bounded("confirmed_flush_lsn to advance", async {
        loop {
            tokio::select! {
                event = stream.next_event() => match event.unwrap() {
                    StreamEvent::Keepalive { reply_requested: true, .. } => {
                        stream.send_status(last_end, last_end, last_end, false).await.unwrap();
                    }
                    StreamEvent::Keepalive { .. } => {}
                    other => panic!("unexpected {other:?}"),
                },
                _ = poll.tick() => {
                    if confirmed_flush(&client, slot).await == last_end {
                        break;
                    }
                }
            }
        }
    })
    .await;

    // 5. Leave the stream; the connection runs commands again.
    bounded("finish", stream.finish()).await.unwrap();
    bounded("drop slot", conn.drop_slot(slot, false)).await.unwrap();
    let left: i64 = client.query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.unwrap().get(0);
    assert_eq!(left, 0);
    bounded("close", conn.close()).await.unwrap();
}

#[tokio::test]
async fn unknown_slot_fails_at_start_and_the_connection_stays_usable() {
    let cluster = PgCluster::shared();
    let dbname = cluster.fresh_db("repl_stream_noslot").await;
    let mut conn = connect(cluster, &dbname).await;
    let err = match bounded("START_REPLICATION", conn.start_logical_replication("pgkeep_no_such_slot", Lsn(0), &["p"], false)).await {
        Ok(_) => panic!("streaming from a missing slot started"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::Database, "{}", err.user_line());
    assert!(err.user_line().contains("pgkeep_no_such_slot"), "{}", err.user_line());
    let id = bounded("IDENTIFY_SYSTEM", conn.identify_system()).await.unwrap();
    assert_eq!(id.dbname.as_deref(), Some(dbname.as_str()));
}

#[tokio::test]
async fn server_error_while_streaming_ends_the_stream_and_finish_recovers() {
    let cluster = PgCluster::shared();
    let dbname = cluster.fresh_db("repl_stream_nopub").await;
    cluster.execute(&dbname, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let mut conn = connect(cluster, &dbname).await;
    if conn.server_version_num() >= 180_000 {
        // PostgreSQL 18 skips missing publications with a warning.
        return;
    }
    let slot = "pgkeep_stream_nopub";
    // Permanent: the server drops a temporary slot on any error.
    let created = bounded("create slot", conn.create_logical_slot(slot, false, false)).await.unwrap();
    cluster.execute(&dbname, "INSERT INTO t VALUES (1)").await;
    let mut stream = bounded("START_REPLICATION", conn.start_logical_replication(slot, created.consistent_point, &["missing_pub"], false)).await.unwrap();
    // pgoutput looks the publication up when the first change arrives.
    let err = bounded("the server error", async {
        loop {
            match stream.next_event().await {
                Ok(StreamEvent::End) => panic!("the stream ended without an error"),
                Ok(_) => {}
                Err(e) => break e,
            }
        }
    })
    .await;
    assert_eq!(err.kind(), ErrorKind::Database, "{}", err.user_line());
    assert!(err.user_line().contains("missing_pub"), "{}", err.user_line());
    assert!(stream.next_event().await.is_err(), "a failed stream stays failed");
    bounded("finish", stream.finish()).await.unwrap();
    bounded("drop slot", conn.drop_slot(slot, false)).await.unwrap();
}

/// A server speaking German (`LANGUAGE=de` for its processes and
/// `lc_messages = 'C.UTF-8'` for the role, which gettext needs no generated
/// locale for): the decisions pgkeep takes on server errors read the
/// SQLSTATE, so they come out the same whatever the wording.
#[tokio::test]
async fn decisions_on_server_errors_hold_when_the_server_speaks_german() {
    // Its own cluster: the role setting would change every other test's messages.
    let cluster = PgCluster::start_with(PgOptions { server_env: vec![("LANGUAGE".into(), "de".into())], ..PgOptions::default() });
    let dbname = cluster.fresh_db("repl_german").await;
    let db = cluster.superuser_settings(&dbname);
    cluster.execute("postgres", &format!("ALTER ROLE {} SET lc_messages = 'C.UTF-8'", quote_ident(&db.user))).await;
    cluster.execute(&dbname, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let client = cluster.client(&dbname).await;
    let german = client.batch_execute("SELECT * FROM no_such_table").await.unwrap_err();
    let text = german.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
    assert!(text.contains("existiert nicht"), "the server does not speak German (are the postgres-{}.mo translations installed?): {text}", cluster.major());

    // 1. A database name taken (42P04): a restore tries the next name.
    let taken = pgkeep::restore::target::create_database(&db, &dbname, None).await.unwrap_err();
    assert_eq!(taken.sqlstate(), Some("42P04"), "{}", taken.user_line());
    assert!(!taken.user_line().contains("already exists"), "{}", taken.user_line());
    assert!(pgkeep::restore::target::is_name_taken(&taken));

    // 2. A slot another walsender holds (55006): `stream` waits and reconnects.
    let slot = "pgkeep_german";
    let mut holder = connect(&cluster, &dbname).await;
    let created = bounded("create slot", holder.create_logical_slot(slot, false, false)).await.unwrap();
    let missing = "pgkeep_german_pub";
    let mut stream = bounded("START_REPLICATION", holder.start_logical_replication(slot, created.consistent_point, &[missing], false)).await.unwrap();
    let mut second = connect(&cluster, &dbname).await;
    let busy = match bounded("second START_REPLICATION", second.start_logical_replication(slot, created.consistent_point, &[missing], false)).await {
        Ok(_) => panic!("two walsenders stream from one slot"),
        Err(e) => e,
    };
    assert_eq!(busy.kind(), ErrorKind::Database, "{}", busy.user_line());
    assert_eq!(busy.sqlstate(), Some("55006"), "{}", busy.user_line());
    assert!(!busy.user_line().contains("is active for PID"), "{}", busy.user_line());
    assert!(pgkeep::stream::slot::is_slot_in_use(&busy));
    assert!(!pgkeep::stream::publication::is_missing_publication(&busy, missing));

    // 3. A publication missing at the decoded position (42704, PostgreSQL
    //    before 18; 18 skips it with a warning): `stream` resubscribes.
    if cluster.major() < 18 {
        cluster.execute(&dbname, "INSERT INTO t VALUES (1)").await;
        let gone = bounded("the server error", async {
            loop {
                match stream.next_event().await {
                    Ok(StreamEvent::End) => panic!("the stream ended without an error"),
                    Ok(_) => {}
                    Err(e) => break e,
                }
            }
        })
        .await;
        assert_eq!(gone.sqlstate(), Some("42704"), "{}", gone.user_line());
        assert!(!gone.user_line().contains("does not exist"), "{}", gone.user_line());
        assert!(pgkeep::stream::publication::is_missing_publication(&gone, missing));
        // The name must be the whole identifier: not a prefix of it.
        assert!(!pgkeep::stream::publication::is_missing_publication(&gone, "pgkeep_german"));
        assert!(!pgkeep::stream::slot::is_slot_in_use(&gone));
    }
    bounded("finish", stream.finish()).await.unwrap();
    bounded("drop slot", holder.drop_slot(slot, true)).await.unwrap();
}

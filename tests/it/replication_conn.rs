//! `pgkeep::replication::ReplicationConnection` against real PostgreSQL
//! clusters: startup and `IDENTIFY_SYSTEM`, logical slots with an exported
//! snapshot that really isolates, permanent slots, SCRAM with and without
//! the REPLICATION attribute, TLS with SCRAM-SHA-256-PLUS, bad input (wrong
//! password, closed port, invalid slot name, `wal_level=replica`), and
//! cancelling a slot creation that waits for a running transaction.

use crate::harness;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use harness::assert_error::{assert_error, assert_hint, fails_within};
use harness::postgres::{PgCluster, PgOptions, TlsMode, WalLevel};
use pgkeep::config::{DbSettings, Secret, SslMode};
use pgkeep::replication::{AuthMethod, ReplicationConnection};
use pgkeep::repo::layout::Lsn;
use pgkeep::{Error, ErrorKind};

/// How long a failing connect or a cancelled command may take.
const FAIL_FAST: Duration = Duration::from_secs(5);

/// TLS required (`hostssl` only); the certificate names `localhost` and `127.0.0.1`.
fn hostssl_cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| PgCluster::start_with(PgOptions { tls: Some(TlsMode::Required), ..PgOptions::default() }))
}

async fn connect(db: &DbSettings) -> ReplicationConnection {
    match ReplicationConnection::connect(db).await {
        Ok(conn) => conn,
        Err(e) => panic!("replication connect to {}: {}", db.display_target(), e.user_line()),
    }
}

/// Connect, expecting failure within [`FAIL_FAST`].
async fn connect_err(db: &DbSettings) -> Error {
    let what = format!("replication connect to {}", db.display_target());
    fails_within(FAIL_FAST, what, ReplicationConnection::connect(db)).await
}

/// Names of the replication slots that exist on `cluster`.
async fn slot_names(cluster: &PgCluster) -> Vec<String> {
    cluster.client("postgres").await.query("SELECT slot_name::text FROM pg_replication_slots ORDER BY 1", &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

/// Wait up to [`FAIL_FAST`] for `slot` to disappear (the walsender drops
/// temporary slots as it exits, just after the socket closes).
async fn wait_until_slot_gone(cluster: &PgCluster, slot: &str) {
    let started = Instant::now();
    while slot_names(cluster).await.iter().any(|s| s == slot) {
        assert!(started.elapsed() < FAIL_FAST, "slot {slot} still exists after {FAIL_FAST:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn identify_system_matches_the_control_file() {
    let cluster = PgCluster::shared();
    let dbname = cluster.fresh_db("repl_identify").await;
    let db = cluster.superuser_settings(&dbname);
    let mut conn = connect(&db).await;
    assert!(!conn.is_tls());
    assert_eq!(conn.auth_method(), AuthMethod::ScramSha256);

    let id = conn.identify_system().await.expect("IDENTIFY_SYSTEM");
    let client = cluster.client(&dbname).await;
    let row = client
        .query_one(
            "SELECT system_identifier::text, current_setting('server_version_num')::int4, \
                    pg_current_wal_lsn()::text \
             FROM pg_control_system()",
            &[],
        )
        .await
        .unwrap();
    assert!(!id.systemid.is_empty());
    assert_eq!(id.systemid, row.get::<_, String>(0));
    assert_eq!(id.timeline, 1);
    assert_eq!(id.dbname.as_deref(), Some(dbname.as_str()));
    let now: Lsn = row.get::<_, String>(2).parse().unwrap();
    assert!(id.xlogpos > Lsn(0) && id.xlogpos <= now, "{} vs {now}", id.xlogpos);
    assert_eq!(conn.server_version_num(), row.get::<_, i32>(1) as u32);

    // The walsender is ours: its pid, application_name and backend type.
    let row = client.query_one("SELECT application_name, backend_type FROM pg_stat_activity WHERE pid = $1", &[&conn.backend_pid()]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "pgkeep");
    assert_eq!(row.get::<_, String>(1), "walsender");

    // SQL works on a replication=database connection, NULLs included; an
    // error leaves the connection usable.
    let rows = conn.simple_query("SELECT 'a', NULL::text UNION ALL SELECT 'b', 'c'").await.unwrap();
    assert_eq!(rows, vec![vec![Some("a".to_string()), None], vec![Some("b".to_string()), Some("c".to_string())]]);
    let err = conn.simple_query("SELECT 1/0").await.unwrap_err();
    assert_error(&err, ErrorKind::Database, &db, &["division by zero", "SQLSTATE 22012", &dbname]);
    let again = conn.query_response("SELECT 42 AS answer").await.unwrap();
    assert_eq!(again.columns, vec!["answer".to_string()]);
    assert_eq!(again.command_tags, vec!["SELECT 1".to_string()]);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn exported_snapshot_hides_later_commits() {
    let cluster = PgCluster::shared();
    let dbname = cluster.fresh_db("repl_snapshot").await;
    cluster.execute(&dbname, "CREATE TABLE t (id int); INSERT INTO t VALUES (1);").await;
    let db = cluster.superuser_settings(&dbname);
    let mut conn = connect(&db).await;
    let slot = conn.create_logical_slot("pgkeep_snapshot_test", true, true).await.expect("create temporary slot");
    assert_eq!(slot.slot_name, "pgkeep_snapshot_test");
    assert_eq!(slot.output_plugin, "pgoutput");
    let snapshot = slot.snapshot_name.clone().expect("an exported snapshot");

    // A third connection commits a row after the slot exists.
    cluster.execute(&dbname, "INSERT INTO t VALUES (2)").await;

    // A regular connection importing the snapshot does not see it.
    let reader = pgkeep::pg::connect(&db).await.expect("regular connection").client;
    reader.batch_execute(&format!("BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snapshot}'")).await.expect("import the exported snapshot");
    let seen: i64 = reader.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(seen, 1, "the snapshot sees only rows committed before the slot");
    reader.batch_execute("COMMIT").await.unwrap();
    let now: i64 = reader.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(now, 2);

    // The slot is listed, temporary, held by our walsender, while we live.
    let row = cluster
        .client("postgres")
        .await
        .query_one(
            "SELECT temporary, plugin::text, database::text, active_pid, confirmed_flush_lsn::text \
             FROM pg_replication_slots WHERE slot_name = 'pgkeep_snapshot_test'",
            &[],
        )
        .await
        .expect("the slot is listed");
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, String>(1), "pgoutput");
    assert_eq!(row.get::<_, String>(2), dbname);
    assert_eq!(row.get::<_, Option<i32>>(3), Some(conn.backend_pid()));
    let confirmed: Lsn = row.get::<_, String>(4).parse().unwrap();
    assert_eq!(confirmed, slot.consistent_point);

    conn.close().await.unwrap();
    wait_until_slot_gone(cluster, "pgkeep_snapshot_test").await;
}

#[tokio::test]
async fn permanent_slot_is_created_and_dropped() {
    let cluster = PgCluster::shared();
    let dbname = cluster.fresh_db("repl_permanent").await;
    let db = cluster.superuser_settings(&dbname);
    let mut conn = connect(&db).await;
    let slot = conn.create_logical_slot("pgkeep_permanent_test", false, false).await.expect("create permanent slot");
    assert_eq!(slot.snapshot_name, None, "no snapshot asked for");

    let client = cluster.client("postgres").await;
    let temporary: bool =
        client.query_one("SELECT temporary FROM pg_replication_slots WHERE slot_name = 'pgkeep_permanent_test'", &[]).await.expect("the slot is listed").get(0);
    assert!(!temporary);

    // The same name again: a Database error naming the slot.
    let err = conn.create_logical_slot("pgkeep_permanent_test", false, false).await.unwrap_err();
    assert_error(&err, ErrorKind::Database, &db, &["pgkeep_permanent_test", "already exists", "42710"]);

    conn.drop_slot("pgkeep_permanent_test", false).await.expect("drop slot");
    assert!(!slot_names(cluster).await.iter().any(|s| s == "pgkeep_permanent_test"));
    let err = conn.drop_slot("pgkeep_permanent_test", true).await.unwrap_err();
    assert_error(&err, ErrorKind::Database, &db, &["pgkeep_permanent_test", "42704"]);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn scram_role_needs_the_replication_attribute() {
    let cluster = PgCluster::shared();
    let dbname = cluster.fresh_db("repl_roles").await;
    let base = cluster.superuser_settings(&dbname);

    cluster.create_role("repl_backup", "repl-role-pw-4821", "REPLICATION").await;
    cluster.execute(&dbname, &format!("GRANT CONNECT ON DATABASE {dbname} TO repl_backup")).await;
    let db = DbSettings { user: "repl_backup".into(), password: Some(Secret::new("repl-role-pw-4821")), ..base.clone() };
    let mut conn = connect(&db).await;
    assert_eq!(conn.auth_method(), AuthMethod::ScramSha256);
    let id = conn.identify_system().await.unwrap();
    assert_eq!(id.dbname.as_deref(), Some(dbname.as_str()));
    let slot = conn.create_logical_slot("pgkeep_role_test", true, true).await.unwrap();
    assert!(slot.snapshot_name.is_some());
    conn.close().await.unwrap();

    cluster.create_role("no_repl", "no-repl-pw-7730", "").await;
    let db = DbSettings { user: "no_repl".into(), password: Some(Secret::new("no-repl-pw-7730")), ..base };
    let err = connect_err(&db).await;
    assert_error(&err, ErrorKind::Auth, &db, &["no_repl", &dbname, "replication"]);
    assert_hint(&err, "ALTER ROLE no_repl REPLICATION");

    // A regular connection (the backup's COPY reader) needs no REPLICATION;
    // without CONNECT it fails naming the database, with no replication hint.
    let mut conn = ReplicationConnection::connect_regular(&db).await.unwrap_or_else(|e| panic!("{}", e.user_line()));
    assert_eq!(conn.simple_query("SELECT 1").await.unwrap()[0][0].as_deref(), Some("1"));
    conn.close().await.unwrap();
    cluster.execute(&dbname, &format!("REVOKE CONNECT ON DATABASE {dbname} FROM PUBLIC")).await;
    let err = fails_within(FAIL_FAST, "regular connect without CONNECT", ReplicationConnection::connect_regular(&db)).await;
    assert!(err.user_line().contains(&dbname), "{}", err.user_line());
    assert!(!err.user_line().contains("replication") && !err.user_line().contains("REPLICATION"), "{}", err.user_line());
}

#[tokio::test]
async fn wrong_password_and_closed_port() {
    let cluster = PgCluster::shared();
    let db = DbSettings { password: Some(Secret::new("definitely-wrong-pw-3317")), ..cluster.superuser_settings("postgres") };
    let err = connect_err(&db).await;
    let server = format!("127.0.0.1:{}", cluster.port());
    assert_error(&err, ErrorKind::Auth, &db, &["password authentication failed", "postgres", &server]);
    assert_hint(&err, "PGPASSWORD");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let db = DbSettings { port, ..cluster.superuser_settings("postgres") };
    let err = connect_err(&db).await;
    assert_error(&err, ErrorKind::Connect, &db, &["connection refused", &format!("127.0.0.1:{port}")]);
}

#[tokio::test]
async fn unix_socket_connection_uses_no_tls() {
    let cluster = PgCluster::shared();
    let db = DbSettings {
        host: cluster.socket_dir().display().to_string(),
        password: None,
        // Unix sockets ignore sslmode, as in libpq; pg_hba trusts them.
        sslmode: SslMode::VerifyFull,
        ..cluster.superuser_settings("postgres")
    };
    let mut conn = connect(&db).await;
    assert!(!conn.is_tls());
    assert_eq!(conn.auth_method(), AuthMethod::Trust);
    let rows = conn.simple_query("SELECT inet_server_addr() IS NULL").await.unwrap();
    assert_eq!(rows, vec![vec![Some("t".to_string())]]);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn tls_modes_and_scram_channel_binding() {
    let cluster = hostssl_cluster();
    let ca = cluster.ca_cert_path().unwrap().to_path_buf();
    let tls_db = |sslmode, ca: Option<std::path::PathBuf>| DbSettings { sslmode, sslrootcert: ca, ..cluster.superuser_settings("postgres") };

    // verify-full against the cluster's CA: TLS, and SCRAM bound to the channel.
    let db = tls_db(SslMode::VerifyFull, Some(ca.clone()));
    let mut conn = connect(&db).await;
    assert!(conn.is_tls());
    assert_eq!(conn.auth_method(), AuthMethod::ScramSha256Plus);
    let ssl: bool = cluster.client("postgres").await.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = $1", &[&conn.backend_pid()]).await.unwrap().get(0);
    assert!(ssl, "pg_stat_ssl says the walsender's connection is not encrypted");
    conn.identify_system().await.unwrap();

    // The cancel request goes over TLS too (plain TCP is refused here).
    let token = conn.cancel_token();
    let started = Instant::now();
    let canceller = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        ReplicationConnection::cancel(&token, &db).await
    };
    let (slept, cancelled) = tokio::join!(conn.simple_query("SELECT pg_sleep(30)"), canceller);
    cancelled.expect("send the cancel request over TLS");
    let err = slept.expect_err("pg_sleep should have been cancelled");
    assert_error(&err, ErrorKind::Database, &db, &["57014"]);
    assert!(started.elapsed() < FAIL_FAST, "cancel took {:?}", started.elapsed());
    conn.close().await.unwrap();

    // require: no verification, still TLS.
    let conn = connect(&tls_db(SslMode::Require, None)).await;
    assert!(conn.is_tls());
    conn.close().await.unwrap();

    // disable against a hostssl-only server.
    let db = tls_db(SslMode::Disable, None);
    let err = connect_err(&db).await;
    assert_error(&err, ErrorKind::Tls, &db, &["unencrypted", "sslmode=disable"]);

    // verify-full against the wrong CA.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-ca.crt");
    harness::postgres::TestCa::generate("some other CA").write_cert(&other);
    let db = tls_db(SslMode::VerifyFull, Some(other));
    let err = connect_err(&db).await;
    assert_error(&err, ErrorKind::Tls, &db, &["not signed by a CA", "other-ca.crt"]);

    // The cluster without TLS: prefer falls back to plain, require refuses.
    let plain = PgCluster::shared();
    let db = DbSettings { sslmode: SslMode::Prefer, ..plain.superuser_settings("postgres") };
    let conn = connect(&db).await;
    assert!(!conn.is_tls());
    conn.close().await.unwrap();
    let db = DbSettings { sslmode: SslMode::Require, ..plain.superuser_settings("postgres") };
    let err = connect_err(&db).await;
    assert_error(&err, ErrorKind::Tls, &db, &["does not support TLS", "sslmode=require"]);
}

#[tokio::test]
async fn invalid_slot_name_is_rejected_before_the_server() {
    let err = pgkeep::replication::validate_slot_name("Bad-Name").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("Bad-Name"), "{}", err.message());

    let cluster = PgCluster::shared();
    let db = cluster.superuser_settings("postgres");
    let mut conn = connect(&db).await;
    let err = conn.create_logical_slot("Bad-Name", true, true).await.unwrap_err();
    assert_error(&err, ErrorKind::Config, &db, &["Bad-Name", "lower-case letters"]);
    let err = conn.drop_slot("x\"; DROP", false).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    // Nothing was sent: the connection is idle and usable, and no such slot exists.
    conn.identify_system().await.expect("connection still usable");
    assert!(!slot_names(cluster).await.iter().any(|s| s.eq_ignore_ascii_case("bad-name")));
    conn.close().await.unwrap();
}

#[tokio::test]
async fn replica_wal_level_refuses_logical_slots() {
    let cluster = PgCluster::start_with(PgOptions { wal_level: WalLevel::Replica, ..PgOptions::default() });
    let db = cluster.superuser_settings("postgres");
    let mut conn = connect(&db).await;
    let err = conn.create_logical_slot("pgkeep_replica_test", true, true).await.unwrap_err();
    assert_error(&err, ErrorKind::Database, &db, &["wal_level", "pgkeep_replica_test"]);
    assert_hint(&err, "wal_level = logical");
    conn.identify_system().await.expect("connection still usable");
    conn.close().await.unwrap();
}

#[tokio::test]
async fn slot_creation_waiting_for_a_transaction_can_be_cancelled() {
    // Its own cluster: the open transaction would stall slot creation in
    // every other test on a shared one.
    let cluster = PgCluster::start();
    let db = cluster.superuser_settings("postgres");

    // 1. A transaction with an xid stays open.
    let blocker = cluster.client("postgres").await;
    blocker.batch_execute("BEGIN").await.unwrap();
    blocker.query_one("SELECT txid_current()", &[]).await.unwrap();

    // 2. Dropping the future gives up, and leaves that connection unusable.
    let mut abandoned = connect(&db).await;
    let timed_out = tokio::time::timeout(Duration::from_millis(700), abandoned.create_logical_slot("pgkeep_abandoned", true, true)).await;
    assert!(timed_out.is_err(), "slot creation did not wait for the open transaction");
    let err = abandoned.identify_system().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{}", err.user_line());
    assert!(err.message().contains("unusable"), "{}", err.message());
    abandoned.close().await.unwrap();

    // 3. A cancel request from elsewhere ends the wait with 57014.
    let mut conn = connect(&db).await;
    let token = conn.cancel_token();
    assert_eq!(token.process_id, conn.backend_pid());
    let started = Instant::now();
    let canceller = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        ReplicationConnection::cancel(&token, &db).await
    };
    // Bounded, so that a cancel that does not work fails instead of hanging.
    let (created, cancelled) = tokio::time::timeout(FAIL_FAST, async { tokio::join!(conn.create_logical_slot("pgkeep_cancel_test", true, true), canceller) })
        .await
        .expect("the cancel request did not end the slot creation");
    let elapsed = started.elapsed();
    cancelled.expect("send the cancel request");
    let err = created.expect_err("slot creation should have been cancelled");
    assert_error(&err, ErrorKind::Database, &db, &["57014", "pgkeep_cancel_test"]);
    assert!(elapsed < FAIL_FAST, "cancel took {elapsed:?}");

    // 4. Commit the blocker; the cancelled connection is usable again.
    blocker.batch_execute("COMMIT").await.unwrap();
    let slot = conn.create_logical_slot("pgkeep_cancel_test", true, true).await.expect("create the slot once nothing blocks it");
    assert!(slot.snapshot_name.is_some());
    conn.close().await.unwrap();
}

/// A regular connection of pgkeep's client (TLS verify-full, SCRAM) reads
/// `COPY … TO STDOUT` in pieces: a 5 MB row arrives in socket-sized pieces,
/// never whole, and the bytes equal what the server sends; an error in the
/// middle of a COPY comes back with its SQLSTATE, and the connection stays
/// usable; walsender commands are not available on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regular_connection_reads_copy_out_in_pieces() {
    let cluster = hostssl_cluster();
    let db =
        DbSettings { sslmode: SslMode::VerifyFull, sslrootcert: Some(cluster.ca_cert_path().unwrap().to_path_buf()), ..cluster.superuser_settings("postgres") };
    let mut conn = ReplicationConnection::connect_regular(&db).await.unwrap_or_else(|e| panic!("{}", e.user_line()));
    assert!(conn.is_tls());
    assert_eq!(conn.auth_method(), AuthMethod::ScramSha256Plus);

    let sql = "COPY (SELECT i, CASE WHEN i = 2 THEN repeat('x', 5000000) ELSE 'a\tb' END FROM generate_series(1, 3) i) TO STDOUT";
    let mut reader = conn.copy_out(sql, "copy a test query").await.unwrap();
    let (mut all, mut largest, mut pieces) = (Vec::new(), 0, 0);
    let mut batch = bytes::BytesMut::new();
    loop {
        let more = reader.read_into(&mut batch, 64 * 1024).await.unwrap();
        largest = largest.max(batch.len());
        pieces += 1;
        all.extend_from_slice(&batch.split());
        if !more {
            break;
        }
    }
    let expected = format!("1\ta\\tb\n2\t{}\n3\ta\\tb\n", "x".repeat(5_000_000));
    assert!(all == expected.as_bytes(), "COPY bytes differ ({} of {} bytes)", all.len(), expected.len());
    assert!(largest <= 64 * 1024, "a piece of {largest} bytes");
    assert!(pieces > 70, "{pieces} pieces");

    // An error mid-copy (division by zero on the third row): SQLSTATE-classified, connection usable.
    let failing = "COPY (SELECT 1 / (2 - i), repeat('y', 100000) FROM generate_series(1, 3) i) TO STDOUT";
    let mut reader = conn.copy_out(failing, "copy a failing query").await.unwrap();
    let err = loop {
        match reader.read_into(&mut batch, 4096).await {
            Ok(true) => batch.clear(),
            Ok(false) => panic!("the COPY should fail"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::Database, "{}", err.user_line());
    assert!(err.user_line().contains("copy a failing query"), "{}", err.user_line());
    let rows = conn.simple_query("SELECT 41 + 1").await.unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("42"));
    assert!(conn.identify_system().await.is_err(), "a regular backend runs no walsender commands");
}

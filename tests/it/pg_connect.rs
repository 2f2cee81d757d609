//! `pgkeep::pg::connect` against real PostgreSQL clusters: password
//! authentication, every sslmode against TLS and non-TLS servers, and bad
//! input (wrong password, unknown database or user, closed port, silent
//! server, TLS mismatches), each a one-line error of the right kind that
//! names the server and never the password, returned within seconds.

use crate::harness;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use harness::assert_error::{assert_error, assert_hint, fails_within};
use harness::postgres::{PgCluster, PgOptions, TestCa, TlsMode};
use pgkeep::config::{DbSettings, Secret, SslMode};
use pgkeep::{Error, ErrorKind};

/// How long a failing connect may take in these tests.
const FAIL_FAST: Duration = Duration::from_secs(5);

/// TLS offered (plain TCP allowed too); the certificate names `localhost` and `127.0.0.1`.
fn tls_cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| PgCluster::start_with(PgOptions { tls: Some(TlsMode::Offered), ..PgOptions::default() }))
}

/// TLS required (`hostssl` only); the certificate names only `localhost`.
fn hostssl_cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| PgCluster::start_with(PgOptions { tls: Some(TlsMode::Required), cert_names: vec!["localhost".to_string()], ..PgOptions::default() }))
}

/// A CA that signed nothing the clusters use, written to a temporary file.
fn unrelated_ca() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other-ca.crt");
    TestCa::generate("some other CA").write_cert(&path);
    (dir, path)
}

fn tls_settings(cluster: &PgCluster, host: &str, sslmode: SslMode, ca: Option<PathBuf>) -> DbSettings {
    DbSettings { host: host.to_string(), sslmode, sslrootcert: ca, ..cluster.superuser_settings("postgres") }
}

/// Connect and run `SELECT ssl FROM pg_stat_ssl` for our backend.
async fn connect_and_check_ssl(db: &DbSettings) -> Result<bool, Error> {
    let conn = pgkeep::pg::connect(db).await?;
    let row = conn.client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.expect("pg_stat_ssl query");
    Ok(row.get(0))
}

/// Connect, expecting failure within [`FAIL_FAST`].
async fn connect_err(db: &DbSettings) -> Error {
    let what = format!("connect to {}", db.display_target());
    fails_within(FAIL_FAST, what, pgkeep::pg::connect(db)).await
}

#[tokio::test]
async fn password_auth_and_select_1() {
    let cluster = PgCluster::shared();
    let dbname = cluster.fresh_db("connect_ok").await;
    let db = cluster.superuser_settings(&dbname);
    let conn = pgkeep::pg::connect(&db).await.expect("connect");
    let row = conn.client.query_one("SELECT 1::int4, current_database(), current_setting('application_name')", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(row.get::<_, String>(1), dbname);
    assert_eq!(row.get::<_, String>(2), "pgkeep");
}

#[tokio::test]
async fn shared_cluster_has_logical_wal_level() {
    let client = PgCluster::shared().client("postgres").await;
    let row = client.query_one("SHOW wal_level", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "logical");
}

#[tokio::test]
async fn replica_wal_level_option() {
    let cluster = PgCluster::start_with(PgOptions { wal_level: harness::postgres::WalLevel::Replica, ..PgOptions::default() });
    let row = cluster.client("postgres").await.query_one("SHOW wal_level", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "replica");
    let data = cluster.data_dir();
    drop(cluster);
    assert!(!data.exists(), "dropping a cluster removes its directory");
}

#[tokio::test]
async fn unix_socket_connection() {
    let cluster = PgCluster::shared();
    let db = DbSettings {
        host: cluster.socket_dir().display().to_string(),
        password: None,
        // Unix sockets ignore sslmode, as in libpq.
        sslmode: SslMode::VerifyFull,
        ..cluster.superuser_settings("postgres")
    };
    let conn = pgkeep::pg::connect(&db).await.expect("connect over the Unix socket");
    let row = conn.client.query_one("SELECT inet_server_addr() IS NULL", &[]).await.unwrap();
    assert!(row.get::<_, bool>(0), "expected a Unix-socket session");
}

#[tokio::test]
async fn wrong_password_is_an_auth_error() {
    let cluster = PgCluster::shared();
    let db = DbSettings { password: Some(Secret::new("definitely-wrong-pw-91")), ..cluster.superuser_settings("postgres") };
    let err = connect_err(&db).await;
    let server = format!("127.0.0.1:{}", cluster.port());
    assert_error(&err, ErrorKind::Auth, &db, &["password authentication failed", "postgres", &server]);
    assert_hint(&err, "PGPASSWORD");
}

#[tokio::test]
async fn missing_password_is_an_auth_error() {
    let cluster = PgCluster::shared();
    let db = DbSettings { password: None, ..cluster.superuser_settings("postgres") };
    let err = connect_err(&db).await;
    let server = format!("127.0.0.1:{}", cluster.port());
    assert_error(&err, ErrorKind::Auth, &db, &["password", "postgres", &server]);
}

#[tokio::test]
async fn unknown_database_is_a_database_error() {
    let cluster = PgCluster::shared();
    let db = cluster.superuser_settings("no_such_database_42");
    let err = connect_err(&db).await;
    let server = format!("127.0.0.1:{}", cluster.port());
    assert_error(&err, ErrorKind::Database, &db, &["no_such_database_42", "does not exist", &server]);
}

#[tokio::test]
async fn unknown_user_is_an_auth_error() {
    let cluster = PgCluster::shared();
    let db = DbSettings { user: "no_such_role_42".to_string(), ..cluster.superuser_settings("postgres") };
    let err = connect_err(&db).await;
    let server = format!("127.0.0.1:{}", cluster.port());
    assert_error(&err, ErrorKind::Auth, &db, &["no_such_role_42", &server]);
}

#[tokio::test]
async fn closed_port_is_connection_refused() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let db = DbSettings { port, connect_timeout: Duration::from_secs(3), ..PgCluster::shared().superuser_settings("postgres") };
    let err = connect_err(&db).await;
    let server = format!("127.0.0.1:{port}");
    assert_error(&err, ErrorKind::Connect, &db, &["cannot connect to PostgreSQL at", &server, "connection refused"]);
    assert_hint(&err, "DB_HOST");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn silent_server_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accept connections and never answer, keeping the sockets open.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let db = DbSettings { port, connect_timeout: Duration::from_secs(1), ..PgCluster::shared().superuser_settings("postgres") };
    let err = connect_err(&db).await;
    let server = format!("127.0.0.1:{port}");
    assert_error(&err, ErrorKind::Connect, &db, &[&server, "timed out (no answer within 1s)"]);
    silent.abort();
}

#[tokio::test]
async fn unresolvable_host_is_a_connect_error() {
    let db = DbSettings {
        host: "pgkeep-no-such-host.invalid".to_string(),
        connect_timeout: Duration::from_secs(3),
        ..PgCluster::shared().superuser_settings("postgres")
    };
    let err = connect_err(&db).await;
    assert_error(&err, ErrorKind::Connect, &db, &["pgkeep-no-such-host.invalid"]);
}

#[tokio::test]
async fn require_against_a_server_without_tls() {
    let cluster = PgCluster::shared();
    let db = DbSettings { sslmode: SslMode::Require, ..cluster.superuser_settings("postgres") };
    let err = connect_err(&db).await;
    let server = format!("127.0.0.1:{}", cluster.port());
    assert_error(&err, ErrorKind::Tls, &db, &[&server, "does not support TLS but sslmode=require"]);
}

#[tokio::test]
async fn disable_against_a_hostssl_only_server() {
    let cluster = hostssl_cluster();
    let db = DbSettings { sslmode: SslMode::Disable, ..cluster.superuser_settings("postgres") };
    let err = connect_err(&db).await;
    let server = format!("127.0.0.1:{}", cluster.port());
    assert_error(&err, ErrorKind::Tls, &db, &[&server, "unencrypted", "sslmode=disable"]);
    assert_hint(&err, "sslmode=require");
}

#[tokio::test]
async fn verify_full_with_the_cluster_ca() {
    let cluster = tls_cluster();
    let ca = cluster.ca_cert_path().unwrap().to_path_buf();
    let by_name = tls_settings(cluster, "localhost", SslMode::VerifyFull, Some(ca.clone()));
    assert!(connect_and_check_ssl(&by_name).await.expect("verify-full via localhost"));
    let by_ip = tls_settings(cluster, "127.0.0.1", SslMode::VerifyFull, Some(ca));
    assert!(connect_and_check_ssl(&by_ip).await.expect("verify-full via the IP SAN"));
}

#[tokio::test]
async fn verify_full_with_another_ca_fails() {
    let cluster = tls_cluster();
    let (_dir, other_ca) = unrelated_ca();
    for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
        let db = tls_settings(cluster, "localhost", mode, Some(other_ca.clone()));
        let err = connect_err(&db).await;
        let server = format!("localhost:{}", cluster.port());
        assert_error(&err, ErrorKind::Tls, &db, &[&server, "not signed by a CA", "other-ca.crt"]);
    }
}

#[tokio::test]
async fn verify_ca_ignores_the_host_name_but_verify_full_does_not() {
    let cluster = hostssl_cluster();
    let ca = cluster.ca_cert_path().unwrap().to_path_buf();
    // The certificate only names `localhost`.
    let verify_ca = tls_settings(cluster, "127.0.0.1", SslMode::VerifyCa, Some(ca.clone()));
    assert!(connect_and_check_ssl(&verify_ca).await.expect("verify-ca via 127.0.0.1"));
    let verify_full = tls_settings(cluster, "127.0.0.1", SslMode::VerifyFull, Some(ca.clone()));
    let err = connect_err(&verify_full).await;
    let server = format!("127.0.0.1:{}", cluster.port());
    assert_error(&err, ErrorKind::Tls, &verify_full, &[&server, "not valid for host name 127.0.0.1", "(it names localhost)"]);
    assert_hint(&err, "verify-ca");
    let by_name = tls_settings(cluster, "localhost", SslMode::VerifyFull, Some(ca));
    assert!(connect_and_check_ssl(&by_name).await.expect("verify-full via localhost"));
}

#[tokio::test]
async fn require_without_a_ca_encrypts() {
    for cluster in [tls_cluster(), hostssl_cluster()] {
        let db = tls_settings(cluster, "127.0.0.1", SslMode::Require, None);
        assert!(connect_and_check_ssl(&db).await.expect("require"));
    }
}

#[tokio::test]
async fn prefer_uses_tls_when_offered() {
    let with_tls = tls_settings(tls_cluster(), "127.0.0.1", SslMode::Prefer, None);
    assert!(connect_and_check_ssl(&with_tls).await.expect("prefer on a TLS server"));
    let plain = DbSettings { sslmode: SslMode::Prefer, ..PgCluster::shared().superuser_settings("postgres") };
    assert!(!connect_and_check_ssl(&plain).await.expect("prefer on a plain server"));
}

#[tokio::test]
async fn missing_root_file_is_a_config_error() {
    let missing = PathBuf::from("/nonexistent/pgkeep/root.crt");
    let db = tls_settings(tls_cluster(), "localhost", SslMode::VerifyFull, Some(missing));
    let err = connect_err(&db).await;
    assert_error(&err, ErrorKind::Config, &db, &["/nonexistent/pgkeep/root.crt"]);
}

/// With TLS, SCRAM uses channel binding (SCRAM-SHA-256-PLUS): a connection
/// that insists on it succeeds only if our stream reports the certificate hash.
#[tokio::test]
async fn scram_uses_channel_binding_over_tls() {
    let cluster = tls_cluster();
    let db = tls_settings(cluster, "127.0.0.1", SslMode::Require, None);
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(cluster.port())
        .user(&db.user)
        .password(db.password.as_ref().unwrap().expose())
        .dbname("postgres")
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .channel_binding(tokio_postgres::config::ChannelBinding::Require);
    let tls = pgkeep::pg::RustlsConnector::new(&db).unwrap();
    let (client, connection) = config.connect(tls).await.expect("SCRAM-SHA-256-PLUS");
    tokio::spawn(connection);
    let row = client.query_one("SELECT 1::int4", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
}

#[tokio::test]
async fn query_errors_name_the_operation_and_database() {
    let cluster = PgCluster::shared();
    let dbname = cluster.fresh_db("query_errors").await;
    let db = cluster.superuser_settings(&dbname);
    let conn = pgkeep::pg::connect(&db).await.unwrap();
    let err = conn.client.simple_query("SELECT * FROM no_such_table_7").await.unwrap_err();
    let err = pgkeep::pg::classify_pg_error(err, &db, "list tables");
    let target = format!("127.0.0.1:{}/{dbname}", cluster.port());
    assert_error(&err, ErrorKind::Database, &db, &["cannot list tables on", &target, "no_such_table_7", "42P01"]);
}

#[tokio::test]
async fn terminated_session_is_a_retryable_connect_error() {
    let cluster = PgCluster::shared();
    let db = cluster.superuser_settings("postgres");
    let victim = pgkeep::pg::connect(&db).await.unwrap();
    let pid: i32 = victim.client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let killer = cluster.client("postgres").await;
    killer.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
    // The driver task ends once the server closes the socket.
    tokio::time::timeout(Duration::from_secs(5), victim.driver).await.expect("driver ended").unwrap();
    let err = victim.client.simple_query("SELECT 1").await.unwrap_err();
    let err = pgkeep::pg::classify_pg_error(err, &db, "read the catalog");
    assert_error(&err, ErrorKind::Connect, &db, &["read the catalog", &format!("127.0.0.1:{}", cluster.port())]);
    assert!(err.is_retryable());
}

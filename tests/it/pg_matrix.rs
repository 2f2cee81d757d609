//! The cross-version subset: run on every major from 14 to 18 by
//! `scripts/test.sh` (`PGKEEP_TEST_PG_MAJOR=<major>`; the default run uses
//! the default server, 15). pgkeep always runs with the newest installed
//! pg_dump, as on a mixed fleet, so a restore into 14–16 also proves that
//! pg_dump 17+'s settings those servers lack are left out.
//! - backup and restore fidelity: schema dump and every table equal;
//! - stream + point-in-time restore to `latest`, DDL captured through
//!   logical messages included; the stream's slot is a failover slot on 17+
//!   and `check` says so;
//! - a restore by a role with only LOGIN CREATEDB (not a superuser) that
//!   owns the database's objects;
//! - owners as a non-superuser can reach them: on 16+ a role that can SET
//!   ROLE an owner without inheriting its privileges, and one that inherits
//!   them without SET; on 14 and 15 a NOINHERIT member. Objects go to the
//!   owner, else to the nearest role inheriting its privileges that the
//!   restoring role can give them to, else to the restoring role.

use crate::harness;

use std::time::Duration;

use harness::backup_check::settings;
use harness::postgres::{PgCluster, newest_client_bindir, quote_ident};
use harness::streaming;
use harness::versions::{FIXTURE, pgkeep, run_ok, schema_dump, table_hashes};
use pgkeep::config::RepoSpec;
use pgkeep::stream::StreamOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_keep_schema_and_data_with_the_newest_pg_dump() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("mx_fidelity").await;
    cluster.execute(&db, FIXTURE).await;
    let repo = tempfile::tempdir().unwrap();

    run_ok(pgkeep(cluster, &db, repo.path()).arg("backup"), "backup");
    let target = format!("{db}_copy");
    let out = run_ok(pgkeep(cluster, &db, repo.path()).args(["restore", "latest", "--target-db", &target, "--yes"]), "restore");

    assert_eq!(schema_dump(cluster, &db), schema_dump(cluster, &target), "schema dumps differ on PostgreSQL {}", cluster.major());
    let (source, restored) = (cluster.client(&db).await, cluster.client(&target).await);
    assert_eq!(table_hashes(&source).await, table_hashes(&restored).await);
    let next: i64 = restored.query_one("SELECT nextval('counter')", &[]).await.unwrap().get(0);
    assert_eq!(next, 101, "the sequence was set");
    let mv: i64 = restored.query_one("SELECT count(*) FROM mv_counts", &[]).await.unwrap().get(0);
    assert_eq!(mv, 7, "the materialized view was refreshed");
    // pg_dump 17+ writes `SET transaction_timeout`; servers before 17 do not have it.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let left_out = newest_client_bindir().0 >= 17 && cluster.major() < 17;
    assert_eq!(stderr.contains("transaction_timeout"), left_out, "PostgreSQL {}:\n{stderr}", cluster.major());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_and_point_in_time_restore_to_latest() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("mx_pitr").await;
    cluster.execute(&db, FIXTURE).await;
    cluster.execute(&db, "CREATE TABLE accounts (id int PRIMARY KEY, balance int, doc text); INSERT INTO accounts SELECT g, 100, NULL FROM generate_series(1, 100) g; UPDATE accounts SET doc = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 1500) g) WHERE id = 1; \
         ALTER TABLE measurements_2025 REPLICA IDENTITY FULL; ALTER TABLE measurements_2026 REPLICA IDENTITY FULL;").await;
    let repo = tempfile::tempdir().unwrap();
    // DDL capture: its statements reach the stream as logical decoding messages.
    run_ok(pgkeep(cluster, &db, repo.path()).arg("setup"), "setup");
    let slot = format!("pgkeep_{db}");
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().to_path_buf())]);
    let running = streaming::start(&s, StreamOptions { segment_seconds: 1, ..StreamOptions::new(&slot, &slot) });
    let client = cluster.client(&db).await;
    streaming::wait_for_slot(&client, &slot, Some(true)).await;
    run_ok(pgkeep(cluster, &db, repo.path()).arg("backup"), "backup");

    for sql in [
        "UPDATE accounts SET balance = balance - 5 WHERE id = 1", // the TOASTed doc is unchanged
        "DELETE FROM accounts WHERE id BETWEEN 50 AND 60; INSERT INTO accounts VALUES (500, 1, 'new')",
        "UPDATE accounts SET id = 600 WHERE id = 2",
        "INSERT INTO measurements VALUES ('c9', '2026-06-01', 1); UPDATE measurements SET at = '2026-01-02' WHERE v = 3",
        "ALTER TABLE accounts ADD COLUMN note text DEFAULT 'n'",
        "UPDATE accounts SET note = 'after ddl' WHERE id = 3",
        "TRUNCATE no_pk; INSERT INTO no_pk VALUES (7, 'x')",
        "INSERT INTO everything (t, m) VALUES ('streamed', 'ok')",
    ] {
        client.batch_execute(&format!("BEGIN; {sql}; COMMIT")).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let end: String = client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    // Wait until the stream has confirmed everything, then stop it. WAL
    // that other tests write into the shared cluster after this database's
    // last commit is confirmed only by the stream's idle heartbeat (after
    // `HEARTBEAT_INTERVAL`), so the wait allows for one.
    let deadline = tokio::time::Instant::now() + streaming::WAIT + pgkeep::stream::archiver::HEARTBEAT_INTERVAL;
    loop {
        let done: bool = client
            .query_one("SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2", &[&end, &slot])
            .await
            .unwrap()
            .get(0);
        if done {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the stream never confirmed {end}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = streaming::stop(running).await;
    assert!(report.totals.transactions >= 8, "{report:?}");

    // 17+: the slot is a failover slot, and `check` says whether it is.
    let failover: Option<bool> =
        client.query_one("SELECT (to_jsonb(s) ->> 'failover')::bool FROM pg_replication_slots s WHERE slot_name = $1", &[&slot]).await.unwrap().get(0);
    let check = pgkeep(cluster, &db, repo.path()).arg("check").output().unwrap();
    let check_out = String::from_utf8_lossy(&check.stdout);
    if cluster.major() >= 17 {
        assert_eq!(failover, Some(true), "PostgreSQL {}", cluster.major());
        assert!(check_out.contains(&format!("slot {slot}")) && check_out.contains("failover yes, synchronized no"), "{check_out}");
    } else {
        assert_eq!(failover, None, "no failover column before 17");
        assert!(check_out.contains(&format!("slot {slot}")) && !check_out.contains("failover"), "{check_out}");
    }

    let target = format!("{db}_latest");
    let out = run_ok(
        pgkeep(cluster, &db, repo.path()).args(["restore", "latest", "--target-db", &target, "--target-time", "latest", "--yes"]),
        "restore --target-time latest",
    );
    let restored = cluster.client(&target).await;
    assert_eq!(table_hashes(&client).await, table_hashes(&restored).await, "PostgreSQL {}: {}", cluster.major(), String::from_utf8_lossy(&out.stdout));
    let note: String = restored.query_one("SELECT note FROM accounts WHERE id = 3", &[]).await.unwrap().get(0);
    assert_eq!(note, "after ddl", "the captured ALTER TABLE was replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_by_a_role_with_createdb_but_not_superuser() {
    let cluster = PgCluster::shared();
    let role = format!("mx_owner_{}", std::process::id());
    cluster.create_role(&role, "owner-pw", "CREATEDB").await;
    let db = format!("mx_owned_{}", std::process::id());
    cluster.execute("postgres", &format!("CREATE DATABASE {} OWNER {}", quote_ident(&db), quote_ident(&role))).await;
    // Every object is created (and owned) by the role.
    cluster.execute(&db, &format!("SET ROLE {}; {FIXTURE}", quote_ident(&role))).await;
    let repo = tempfile::tempdir().unwrap();
    run_ok(pgkeep(cluster, &db, repo.path()).arg("backup"), "backup");

    let target = format!("{db}_restored");
    run_ok(
        pgkeep(cluster, &db, repo.path()).env("DB_USER", &role).env("DB_PASSWORD", "owner-pw").args(["restore", "latest", "--target-db", &target, "--yes"]),
        "restore as a CREATEDB role",
    );
    assert_eq!(schema_dump(cluster, &db), schema_dump(cluster, &target));
    let restored = cluster.client(&target).await;
    assert_eq!(table_hashes(&cluster.client(&db).await).await, table_hashes(&restored).await);
    let owners: Vec<String> = restored
        .query("SELECT DISTINCT pg_get_userbyid(relowner)::text FROM pg_class WHERE relnamespace = 'public'::regnamespace", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(owners, vec![role.clone()], "objects owned by the restoring role");
    let super_: bool = restored.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role]).await.unwrap().get(0);
    assert!(!super_);
}

/// What `role` owns in `db`: `schema app`, `app.items`, `app.notes` in that order.
async fn app_owners(cluster: &PgCluster, db: &str) -> Vec<String> {
    let c = cluster.client(db).await;
    let sql = "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'app' \
               UNION ALL SELECT relowner::regrole::text FROM pg_class WHERE oid = 'app.items'::regclass \
               UNION ALL SELECT relowner::regrole::text FROM pg_class WHERE oid = 'app.notes'::regclass";
    c.query(sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_follow_what_the_restoring_role_can_become_and_inherit() {
    let cluster = PgCluster::shared();
    let pg16 = cluster.major() >= 16;
    let db = cluster.fresh_db("mx_roles").await;
    let (owner, dev, other) = (format!("{db}_owner"), format!("{db}_dev"), format!("{db}_other"));
    // dev inherits owner's privileges; on 16+ it may not SET ROLE owner (so neither may its members).
    let dev_grant = if pg16 { "WITH INHERIT TRUE, SET FALSE" } else { "" };
    cluster
        .execute(
            "postgres",
            &format!("CREATE ROLE {owner} NOLOGIN; CREATE ROLE {dev} NOLOGIN; CREATE ROLE {other} NOLOGIN; GRANT {owner} TO {dev} {dev_grant};"),
        )
        .await;
    cluster
        .execute(
            &db,
            &format!(
                "CREATE SCHEMA app AUTHORIZATION {owner};
                 GRANT USAGE, CREATE ON SCHEMA app TO {other};
                 SET ROLE {owner};
                 CREATE TABLE app.items (id int PRIMARY KEY, name text NOT NULL);
                 CREATE INDEX items_name ON app.items (name);
                 INSERT INTO app.items SELECT g, 'item ' || g FROM generate_series(1, 200) g;
                 RESET ROLE;
                 SET ROLE {other};
                 CREATE TABLE app.notes (id int PRIMARY KEY, body text);
                 INSERT INTO app.notes SELECT g, 'note ' || g FROM generate_series(1, 50) g;
                 ALTER DEFAULT PRIVILEGES FOR ROLE {other} IN SCHEMA app GRANT SELECT ON TABLES TO {dev};
                 RESET ROLE;"
            ),
        )
        .await;
    let repo = tempfile::tempdir().unwrap();
    run_ok(pgkeep(cluster, &db, repo.path()).arg("backup"), "backup");
    let source = table_hashes(&cluster.client(&db).await).await;
    let restore_as = |role: &str, target: &str| {
        let out = run_ok(
            pgkeep(cluster, &db, repo.path()).env("DB_USER", role).env("DB_PASSWORD", "restorer-pw").args([
                "restore",
                "latest",
                "--target-db",
                target,
                "--yes",
            ]),
            &format!("restore as {role}"),
        );
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let default_acls = async |target: &str| -> i64 {
        let c = cluster.client(target).await;
        c.query_one(&format!("SELECT count(*) FROM pg_default_acl WHERE defaclrole = '{other}'::regrole"), &[]).await.unwrap().get(0)
    };

    // A role that can become `other` without its privileges: on 16+ SET without INHERIT, before a
    // NOINHERIT member. Giving it the table would leave the restore unable to load it: the table stays
    // the restoring role's. `owner`'s objects go to dev on 16+ (it inherits owner's privileges and the
    // role can become it); before, a NOINHERIT role holds no one's privileges: its own.
    let set_only = format!("{db}_set");
    let (attrs, other_grant) = if pg16 { ("", "WITH INHERIT FALSE, SET TRUE") } else { ("NOINHERIT", "") };
    cluster.create_role(&set_only, "restorer-pw", &format!("CREATEDB {attrs}")).await;
    cluster.execute("postgres", &format!("GRANT {other} TO {set_only} {other_grant}; GRANT {dev} TO {set_only};")).await;
    let target = format!("{db}_as_set");
    let out = restore_as(&set_only, &target);
    assert_eq!(table_hashes(&cluster.client(&target).await).await, source, "tables restored as {set_only}");
    let to_owner = if pg16 { dev.clone() } else { set_only.clone() };
    assert_eq!(app_owners(cluster, &target).await, vec![to_owner.clone(), to_owner.clone(), set_only.clone()], "owners after a restore as {set_only}");
    // One warning names each original owner and the role its objects went to.
    assert!(out.contains(&format!("2 object(s) of {owner} owned by {to_owner} (SCHEMA app, TABLE app.items)")), "{out}");
    assert!(out.contains(&format!("1 object(s) of {other} owned by {set_only} (TABLE app.notes)")), "{out}");
    // ALTER DEFAULT PRIVILEGES FOR ROLE needs the role's privileges on 16+, membership before.
    assert_eq!(default_acls(&target).await, if pg16 { 0 } else { 1 });
    assert_eq!(out.contains("default privileges not restored"), pg16, "{out}");

    if pg16 {
        // Inheriting `other`'s privileges without SET: it cannot give the table to `other`, but sets
        // its default privileges.
        let inherit_only = format!("{db}_inh");
        cluster.create_role(&inherit_only, "restorer-pw", "CREATEDB").await;
        cluster.execute("postgres", &format!("GRANT {other} TO {inherit_only} WITH INHERIT TRUE, SET FALSE; GRANT {dev} TO {inherit_only};")).await;
        let target = format!("{db}_as_inh");
        let out = restore_as(&inherit_only, &target);
        assert_eq!(table_hashes(&cluster.client(&target).await).await, source, "tables restored as {inherit_only}");
        assert_eq!(app_owners(cluster, &target).await, vec![dev.clone(), dev.clone(), inherit_only.clone()]);
        assert!(out.contains(&format!("1 object(s) of {other} owned by {inherit_only} (TABLE app.notes)")), "{out}");
        assert_eq!(default_acls(&target).await, 1, "default privileges of {other} restored");
        assert!(!out.contains("default privileges not restored"), "{out}");
    }
}

/// A swap as a role that may become the database's owner without holding its
/// privileges (16+: a grant `WITH INHERIT FALSE, SET TRUE`): closing,
/// renaming and reopening the databases run as the owner, so the restore
/// swaps in and the old database is kept. (Before 16 only a NOINHERIT role
/// can do that, and such a role does not even hold the privileges of
/// `pg_database_owner` in the temporary database it creates: the matrix runs
/// this on 16, 17 and 18.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_runs_as_the_owner_the_restoring_role_can_become() {
    let cluster = PgCluster::shared();
    if cluster.major() < 16 {
        return;
    }
    let db = cluster.fresh_db("mx_swap").await;
    let (owner, swapper) = (format!("{db}_dbo"), format!("{db}_swapper"));
    cluster.execute("postgres", &format!("CREATE ROLE {owner} NOLOGIN CREATEDB; ALTER DATABASE {db} OWNER TO {owner}")).await;
    cluster.create_role(&swapper, "swapper-pw", "CREATEDB").await;
    cluster.execute("postgres", &format!("GRANT {owner} TO {swapper} WITH INHERIT FALSE, SET TRUE")).await;
    cluster
        .execute(
            &db,
            &format!(
                "GRANT CREATE ON SCHEMA public TO {owner};
                 SET ROLE {owner};
                 CREATE TABLE accounts (id int PRIMARY KEY, balance numeric NOT NULL);
                 INSERT INTO accounts SELECT g, g * 10 FROM generate_series(1, 300) g;
                 GRANT SELECT ON accounts TO {swapper};
                 RESET ROLE;"
            ),
        )
        .await;
    let repo = tempfile::tempdir().unwrap();
    run_ok(pgkeep(cluster, &db, repo.path()).arg("backup"), "backup");
    let source = table_hashes(&cluster.client(&db).await).await;
    cluster.execute(&db, "DELETE FROM accounts WHERE id > 100").await;

    // The role cannot rename the owner's database with its own privileges.
    let c = cluster.client("postgres").await;
    c.batch_execute(&format!("SET ROLE {swapper}")).await.unwrap();
    let e = c.batch_execute(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", quote_ident(&db))).await.unwrap_err();
    assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    drop(c);

    run_ok(
        pgkeep(cluster, &db, repo.path()).env("DB_USER", &swapper).env("DB_PASSWORD", "swapper-pw").args(["restore", "latest", "--yes"]),
        &format!("restore with swap as {swapper}"),
    );
    assert_eq!(table_hashes(&cluster.client(&db).await).await, source, "the restored database is swapped in");
    let admin = cluster.client("postgres").await;
    let kept: i64 = cluster.client(&format!("{db}_old")).await.query_one("SELECT count(*) FROM accounts", &[]).await.unwrap().get(0);
    assert_eq!(kept, 100, "the replaced database is kept as {db}_old");
    let owner_now: String = admin.query_one("SELECT datdba::regrole::text FROM pg_database WHERE datname = $1", &[&db]).await.unwrap().get(0);
    assert_eq!(owner_now, owner, "the database keeps its owner");
}

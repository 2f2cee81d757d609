//! The seed's whole workflow as a managed service's customer role, through
//! the `pgkeep` binary on real PostgreSQL: on a Supabase-shaped database
//! (harness::supabase) as its non-superuser `customer` role, which may not
//! set `session_replication_role` — backup, `stream`, a point-in-time
//! restore into a new database, a restore over the database with its swap
//! and pre-restore backup, and rollback; and the same with an RDS-like
//! master user (member of an `rds_superuser`-like role that was granted
//! `SET ON PARAMETER session_replication_role`). Every table must equal the
//! source; the schema must equal it apart from owners.

use crate::harness;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use harness::postgres::{PgCluster, bindir};
use harness::streaming;
use harness::supabase::{self, CUSTOMER, CUSTOMER_PASSWORD};

/// The binary configured through the seed's variables, connecting as `user`.
fn pgkeep(cluster: &PgCluster, db: &str, repo: &Path, user: &str, password: &str) -> Command {
    let mut cmd = streaming::pgkeep_cli(cluster, db, repo);
    cmd.env("DB_USER", user).env("DB_PASSWORD", password).env("PGKEEP_JOBS", "2");
    cmd
}

/// Run to completion; stdout and stderr together; panics unless it succeeded.
fn ok(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

fn failed(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{what} should have failed:\n{text}");
    text
}

/// Content hash of each table (`schema.name`), as the superuser sees it.
async fn hashes(cluster: &PgCluster, db: &str, tables: &[&str]) -> Vec<String> {
    let client = cluster.client(db).await;
    let mut out = Vec::new();
    for t in tables {
        let sql = format!("SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {t} t");
        out.push(format!("{t} {}", client.query_one(&sql, &[]).await.unwrap().get::<_, String>(0)));
    }
    out
}

/// `pg_dump --schema-only --no-owner` of `db`: statements only (no comments, blank lines or psql guards).
fn schema(cluster: &PgCluster, db: &str) -> Vec<String> {
    let s = cluster.superuser_settings(db);
    let out = Command::new(bindir().join("pg_dump"))
        .args(["-h", &s.host, "-p", &s.port.to_string(), "-U", &s.user, "--schema-only", "--no-owner", db])
        .env("PGPASSWORD", s.password.as_ref().unwrap().expose())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("--") && !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .map(str::to_string)
        .collect()
}

/// Start `pgkeep stream` as `user`; returns once its slot is active.
async fn stream(cluster: &PgCluster, db: &str, repo: &Path, user: &str, password: &str, slot: &str, publication: &str) -> Child {
    let child = pgkeep(cluster, db, repo, user, password)
        .args(["stream", "--slot", slot, "--publication", publication, "--segment-seconds", "1", "--no-auto-full-backup"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    streaming::wait_for_slot(&cluster.client(db).await, slot, Some(true)).await;
    child
}

fn stop(child: Child) -> String {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "stream:\n{text}");
    text
}

async fn now(cluster: &PgCluster, db: &str) -> String {
    tokio::time::sleep(Duration::from_millis(50)).await;
    let client = cluster.client(db).await;
    let t: chrono::DateTime<chrono::Utc> = client.query_one("SELECT clock_timestamp()", &[]).await.unwrap().get(0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    t.to_rfc3339()
}

/// Trigger states and foreign keys of `db`: what the replay suspends must be back.
async fn triggers_and_keys(cluster: &PgCluster, db: &str) -> Vec<String> {
    let client = cluster.client(db).await;
    let rows = client
        .query(
            "SELECT tgrelid::regclass::text || ' ' || tgname || ' ' || tgenabled::text FROM pg_trigger WHERE NOT tgisinternal \
             UNION ALL SELECT conrelid::regclass::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'f' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Changes after the base backup, of every kind the fixture's triggers and keys care about.
const WORKLOAD: &[&str] = &[
    // A new user: the trigger on auth.users fills profiles (on the source only; the replay must not run it).
    "INSERT INTO auth.users (id, aud, email, raw_user_meta_data) VALUES ('00000000-0000-0000-0000-0000000000aa', 'authenticated', 'new@example.com', '{\"username\": \"newbie\"}')",
    // profiles_touch sets updated_at on the source; the archive carries that value.
    "UPDATE public.profiles SET avatar_url = 'a.png' WHERE username IN ('user1', 'newbie')",
    // Children before parents and parents before children, in one transaction.
    "INSERT INTO public.messages (profile_id, body) VALUES ('00000000-0000-0000-0000-0000000000aa', 'first'); \
     INSERT INTO public.todos (user_id, task) VALUES ('00000000-0000-0000-0000-0000000000aa', 'write the docs')",
    "DELETE FROM public.todos WHERE user_id IN (SELECT id FROM auth.users WHERE email = 'user2@example.com'); \
     DELETE FROM public.messages WHERE profile_id IN (SELECT id FROM auth.users WHERE email = 'user2@example.com'); \
     DELETE FROM auth.users WHERE email = 'user2@example.com'",
    "DELETE FROM storage.objects WHERE bucket_id = 'docs' AND name LIKE 'file1%'; UPDATE storage.buckets SET public = true WHERE id = 'docs'",
    "INSERT INTO auth.refresh_tokens (token, user_id, revoked) VALUES ('late', '3', false); UPDATE public.todos SET is_complete = true WHERE id % 2 = 0",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supabase_customer_role_runs_the_whole_workflow() {
    let w = Workflow::start().await;
    // 1. Stream and back up as the customer, then change things.
    let source = w.back_up_and_change().await;
    // 2. Point in time into new databases; the schema every restore must have.
    let expected = w.point_in_time_into_new_databases(&source).await;
    // 3. Disaster recovery into a new project, and what is refused there.
    w.restore_into_new_projects(&source).await;
    // 4. --no-owner: everything belongs to the restoring role.
    w.without_owners().await;
    // 5. Over the database itself: pre-restore backup, temporary database, swap; then rollback.
    w.over_the_database(&source, &expected).await;
}

/// The customer's workflow: a Supabase-shaped database and a repository.
struct Workflow {
    cluster: PgCluster,
    db: String,
    repo: tempfile::TempDir,
}

/// The source as step 1 left it.
struct Source {
    /// Table hashes at the backup.
    at_backup: Vec<String>,
    /// After each transaction of [`WORKLOAD`]: the time, and the table hashes.
    marks: Vec<(String, Vec<String>)>,
    /// Its schema at the end.
    schema: Vec<String>,
    /// Its triggers and foreign keys at the end.
    triggers: Vec<String>,
}

impl Workflow {
    /// The cluster with the platform's roles and a populated database.
    async fn start() -> Workflow {
        let cluster = PgCluster::start();
        supabase::create_roles(&cluster).await;
        let db = cluster.fresh_db("sb").await;
        supabase::populate(&cluster, &db).await;
        // The stream's publication: pgkeep would create one as the owner of every table; the
        // platform's tables are not the customer's, so the platform (superuser) makes it.
        let tables = supabase::TABLES.join(", ");
        cluster.execute(&db, &format!("CREATE PUBLICATION pgkeep_sb FOR TABLE {tables}")).await;
        let repo = tempfile::tempdir().unwrap();

        // The customer may not set session_replication_role: replay must do without it.
        let c = cluster.client(&db).await;
        c.batch_execute(&format!("SET ROLE {CUSTOMER}")).await.unwrap();
        let e = c.batch_execute("SET session_replication_role = replica").await.unwrap_err();
        assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE));
        drop(c);
        Workflow { cluster, db, repo }
    }

    /// The binary as the customer, configured for database `d`.
    fn as_customer(&self, d: &str) -> Command {
        pgkeep(&self.cluster, d, self.repo.path(), CUSTOMER, CUSTOMER_PASSWORD)
    }

    /// Step 1: stream and back up as the customer, then run [`WORKLOAD`].
    async fn back_up_and_change(&self) -> Source {
        let (cluster, db) = (&self.cluster, self.db.as_str());
        let streaming = stream(cluster, db, self.repo.path(), CUSTOMER, CUSTOMER_PASSWORD, "pgkeep_sb", "pgkeep_sb").await;
        let mut backup = self.as_customer(db);
        backup.arg("backup");
        ok(backup, "backup as the customer");
        let at_backup = hashes(cluster, db, supabase::TABLES).await;
        let client = cluster.client(db).await;
        let mut marks = Vec::new();
        for sql in WORKLOAD {
            client.batch_execute(&format!("BEGIN; {sql}; COMMIT")).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            marks.push((now(cluster, db).await, hashes(cluster, db, supabase::TABLES).await));
        }
        // A later transaction, in a later second: the archive (its segments' times are in whole
        // seconds) then reaches past the last mark for certain.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        client.batch_execute("INSERT INTO auth.refresh_tokens (token) VALUES ('after the marks')").await.unwrap();
        drop(client);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop(streaming);
        Source { at_backup, marks, schema: schema(cluster, db), triggers: triggers_and_keys(cluster, db).await }
    }

    /// Step 2: point in time into a new database, after the 4th transaction
    /// and at the end. Returns the schema a restore must have: the source's
    /// apart from owners.
    async fn point_in_time_into_new_databases(&self, source: &Source) -> Vec<String> {
        let (cluster, db, marks) = (&self.cluster, self.db.as_str(), &source.marks);
        for (i, name) in [(3usize, "sb_pitr_mid"), (WORKLOAD.len() - 1, "sb_pitr_end")] {
            let mut restore = self.as_customer(db);
            restore.args(["restore", "latest", "--target-db", name, "--target-time", &marks[i].0, "--yes"]);
            let out = ok(restore, "point-in-time restore as the customer");
            assert!(out.contains(&format!("replayed {} transaction(s)", i + 1)), "{out}");
            // One warning lists what the customer could not give back to its owner.
            assert!(out.contains("object(s) of supabase_admin owned by customer (") && out.contains("SCHEMA auth"), "{out}");
            assert!(out.contains("DEFAULT PRIVILEGES FOR TABLES of supabase_admin"), "{out}");
            assert_eq!(hashes(cluster, name, supabase::TABLES).await, marks[i].1, "tables of {name}");
            // Triggers enabled and foreign keys back as on the source.
            assert_eq!(triggers_and_keys(cluster, name).await, source.triggers, "triggers and keys of {name}");
        }
        // The schema equals the source's apart from owners: what the customer owns instead
        // absorbs grants to itself, and supabase_admin's default privileges are the one loss.
        let expected: Vec<String> = source
            .schema
            .iter()
            .filter(|l| !(l.contains("FOR ROLE supabase_admin") || (l.starts_with("GRANT ") && l.ends_with(" TO customer;"))))
            .cloned()
            .collect();
        let restored = schema(cluster, "sb_pitr_end");
        assert_eq!(restored, expected, "schema of the point-in-time restore");
        // Owners the customer can become are exact; the others are the customer.
        let owners = cluster.client("sb_pitr_end").await;
        let owner = async |sql: &str| -> String { owners.query_one(sql, &[]).await.unwrap().get(0) };
        assert_eq!(owner("SELECT relowner::regrole::text FROM pg_class WHERE oid = 'auth.users'::regclass").await, "supabase_auth_admin");
        assert_eq!(owner("SELECT relowner::regrole::text FROM pg_class WHERE oid = 'storage.objects'::regclass").await, "supabase_storage_admin");
        assert_eq!(owner("SELECT relowner::regrole::text FROM pg_class WHERE oid = 'realtime.schema_migrations'::regclass").await, CUSTOMER);
        assert_eq!(owner("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'auth'").await, CUSTOMER);
        // The restored database works like the source: the trigger fills profiles again.
        owners
            .batch_execute("INSERT INTO auth.users (id, email, raw_user_meta_data) VALUES ('00000000-0000-0000-0000-0000000000bb', 'after@example.com', '{\"username\": \"after\"}')")
            .await
            .unwrap();
        let n: i64 = owners.query_one("SELECT count(*) FROM public.profiles WHERE username = 'after'", &[]).await.unwrap().get(0);
        assert_eq!(n, 1, "on_auth_user_created fires after the restore");
        expected
    }

    /// Step 3: disaster recovery into a new project: the platform's schemas and tables exist,
    /// empty, owned by the platform; the point-in-time restore keeps them and restores their
    /// rows in place. Then what is refused: a project that is not new, a trigger the customer
    /// may not disable; and a table-level restore.
    async fn restore_into_new_projects(&self, source: &Source) {
        let (cluster, db, marks) = (&self.cluster, self.db.as_str(), &source.marks);
        let project = cluster.fresh_db("new_project").await;
        supabase::new_project(cluster, &project).await;
        let mut restore = self.as_customer(db);
        restore.args(["restore", "latest", "--target-db", &project, "--target-time", &marks[3].0, "--yes"]);
        let out = ok(restore, "point-in-time restore into a new project");
        assert!(out.contains("kept as the platform made them"), "{out}");
        assert!(out.contains("TABLE DATA realtime.schema_migrations") || out.contains("the platform's tables keep their own rows"), "{out}");
        let customer_data: Vec<&str> = supabase::TABLES.iter().copied().filter(|t| *t != "realtime.schema_migrations").collect();
        let want: Vec<String> = marks[3].1.iter().filter(|h| !h.starts_with("realtime.")).cloned().collect();
        assert_eq!(hashes(cluster, &project, &customer_data).await, want, "tables of the new project");
        let p = cluster.client(&project).await;
        let one = async |sql: &str| -> String { p.query_one(sql, &[]).await.unwrap().get(0) };
        assert_eq!(
            one("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'auth'").await,
            "supabase_admin",
            "the platform's schema stays its own"
        );
        assert_eq!(one("SELECT relowner::regrole::text FROM pg_class WHERE oid = 'realtime.schema_migrations'::regclass").await, "supabase_admin");
        assert_eq!(
            one("SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger WHERE tgrelid = 'auth.users'::regclass AND NOT tgisinternal").await,
            "on_auth_user_created"
        );
        assert_eq!(
            one("SELECT string_agg(pubname, ',' ORDER BY pubname) FROM pg_publication_tables WHERE tablename = 'messages'").await,
            "pgkeep_sb,supabase_realtime"
        );
        drop(p);
        // Not a new project any more: refused, naming a table, nothing touched.
        let mut again = self.as_customer(db);
        again.args(["restore", "latest", "--target-db", &project, "--yes"]);
        let e = failed(again, "restore into a project that has the customer's tables");
        assert!(e.contains("is not a new project") || e.contains("is not empty"), "{e}");

        // A platform table the replay would write (the customer may) with a trigger the customer may not
        // disable: refused before anything is restored, naming the table and the privilege.
        let locked = cluster.fresh_db("locked_project").await;
        supabase::new_project(cluster, &locked).await;
        cluster
            .execute(
                &locked,
                "GRANT SELECT, INSERT, UPDATE, DELETE ON realtime.schema_migrations TO customer;
                 CREATE FUNCTION realtime.stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN new; END $$;
                 CREATE TRIGGER stamp BEFORE INSERT ON realtime.schema_migrations FOR EACH ROW EXECUTE FUNCTION realtime.stamp();
                 ALTER FUNCTION realtime.stamp() OWNER TO supabase_admin;",
            )
            .await;
        let mut restore = self.as_customer(db);
        restore.args(["restore", "latest", "--target-db", &locked, "--target-time", &marks[3].0, "--yes"]);
        let e = failed(restore, "point-in-time restore needing to disable a trigger of the platform's");
        assert!(e.contains("ownership of table realtime.schema_migrations") && e.contains("session_replication_role"), "{e}");
        let untouched: Option<String> = cluster.client(&locked).await.query_one("SELECT to_regclass('public.profiles')::text", &[]).await.unwrap().get(0);
        assert_eq!(untouched, None, "nothing was restored into {locked}");

        // A table-level point-in-time restore: only todos, as after the 4th transaction.
        let mut restore = self.as_customer(db);
        restore.args(["restore", "latest", "--target-db", "sb_todos", "--table", "public.todos", "--target-time", &marks[3].0, "--yes"]);
        ok(restore, "table-level point-in-time restore as the customer");
        let todos_then = marks[3].1.iter().find(|h| h.starts_with("public.todos ")).unwrap().clone();
        assert_eq!(hashes(cluster, "sb_todos", &["public.todos"]).await, vec![todos_then]);
    }

    /// Step 4: --no-owner: everything belongs to the restoring role.
    async fn without_owners(&self) {
        let mut restore = self.as_customer(&self.db);
        restore.args(["restore", "latest", "--target-db", "sb_no_owner", "--no-owner", "--yes"]);
        ok(restore, "restore --no-owner");
        let c = self.cluster.client("sb_no_owner").await;
        let others: i64 = c
            .query_one("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('public', 'auth', 'storage', 'realtime') AND c.relowner <> 'customer'::regrole", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(others, 0, "--no-owner leaves every relation to the restoring role");
    }

    /// Step 5: over the database itself: pre-restore backup, temporary database, swap; then rollback.
    async fn over_the_database(&self, source: &Source, expected: &[String]) {
        let (cluster, db) = (&self.cluster, self.db.as_str());
        let before = hashes(cluster, db, supabase::TABLES).await;
        cluster.execute(db, "DELETE FROM public.todos; DELETE FROM storage.objects").await; // the accident
        let mut restore = self.as_customer(db);
        // `--target backup`: the backup itself (`latest` alone would replay the archive after it too).
        restore.args(["restore", "latest", "--target", "backup", "--yes"]);
        let out = ok(restore, "restore with swap as the customer");
        assert!(out.contains("pre-restore backup pre_restore_backup_") && out.contains(&format!("previous database kept as {db}_old")), "{out}");
        assert_eq!(hashes(cluster, db, supabase::TABLES).await, source.at_backup, "{db} after the swap is the backup");
        assert_eq!(schema(cluster, db), expected, "schema after the swap");
        let mut rollback = self.as_customer(db);
        rollback.args(["rollback", "--yes"]);
        ok(rollback, "rollback as the customer");
        let after_rollback = hashes(cluster, db, supabase::TABLES).await;
        assert_ne!(after_rollback, before, "the rollback brings back the database as it was before the restore (after the accident)");
        let todos: i64 = cluster.client(db).await.query_one("SELECT count(*) FROM public.todos", &[]).await.unwrap().get(0);
        assert_eq!(todos, 0, "the rolled-back database is the one with the accident");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rds_like_master_user_restores_and_extensions_only_the_provider_may_create_are_refused_first() {
    let cluster = PgCluster::start();
    // RDS: the master user is a member of rds_superuser, which has CREATEROLE and CREATEDB, may set
    // session_replication_role, and is not a superuser; rdsadmin (a superuser) owns the platform's things.
    cluster
        .execute(
            "postgres",
            "CREATE ROLE rdsadmin SUPERUSER LOGIN;
             CREATE ROLE rds_superuser NOLOGIN CREATEROLE CREATEDB;
             GRANT pg_read_all_data, pg_signal_backend TO rds_superuser;
             GRANT SET ON PARAMETER session_replication_role TO rds_superuser;
             CREATE ROLE master LOGIN CREATEDB CREATEROLE REPLICATION PASSWORD 'master-pass';
             GRANT rds_superuser TO master;
             CREATE ROLE app_owner NOLOGIN;
             GRANT app_owner TO master;",
        )
        .await;
    let db = cluster.fresh_db("rds").await;
    cluster.execute("postgres", &format!("ALTER DATABASE {db} OWNER TO master")).await;
    cluster
        .execute(
            &db,
            "CREATE SCHEMA rds_tools AUTHORIZATION rdsadmin;
             CREATE TABLE rds_tools.heartbeat (id int PRIMARY KEY, at timestamptz);
             ALTER TABLE rds_tools.heartbeat OWNER TO rdsadmin;
             GRANT USAGE ON SCHEMA rds_tools TO master;
             INSERT INTO rds_tools.heartbeat VALUES (1, '2026-01-01');
             CREATE EXTENSION pg_stat_statements;
             GRANT CREATE ON SCHEMA public TO app_owner;
             SET ROLE app_owner;
             CREATE TABLE public.customers (id int PRIMARY KEY, name text NOT NULL, updated_at timestamptz);
             CREATE TABLE public.orders (id int PRIMARY KEY, customer_id int NOT NULL REFERENCES public.customers, total numeric);
             CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN new.updated_at := now(); RETURN new; END $$;
             CREATE TRIGGER customers_touch BEFORE UPDATE ON public.customers FOR EACH ROW EXECUTE FUNCTION public.touch();
             INSERT INTO public.customers SELECT g, 'c' || g, '2026-01-01' FROM generate_series(1, 100) g;
             INSERT INTO public.orders SELECT g, g % 100 + 1, g * 1.5 FROM generate_series(1, 300) g;
             RESET ROLE;
             CREATE PUBLICATION pgkeep_rds FOR TABLE rds_tools.heartbeat, public.customers, public.orders;",
        )
        .await;
    let repo = tempfile::tempdir().unwrap();
    let as_master = |d: &str| pgkeep(&cluster, d, repo.path(), "master", "master-pass");
    let tables = ["rds_tools.heartbeat", "public.customers", "public.orders"];

    // pg_stat_statements is not trusted: the master user cannot create it (here; RDS's
    // allow-list would let it). Refused before anything is restored, named.
    let mut backup = as_master(&db);
    backup.arg("backup");
    ok(backup, "backup as the master user");
    let mut restore = as_master(&db);
    restore.args(["restore", "latest", "--target-db", "rds_refused", "--yes"]);
    let e = failed(restore, "restore with an extension only the provider may create");
    assert!(e.contains("pg_stat_statements") && e.contains("cannot create extension"), "{e}");
    assert!(e.contains("may not be able to create"), "said before the restore started: {e}");
    let exists: i64 = cluster.client("postgres").await.query_one("SELECT count(*) FROM pg_database WHERE datname = 'rds_refused'", &[]).await.unwrap().get(0);
    assert_eq!(exists, 0);
    cluster.execute(&db, "DROP EXTENSION pg_stat_statements").await;

    // The whole point-in-time workflow as the master user (session_replication_role permitted).
    let streaming = stream(&cluster, &db, repo.path(), "master", "master-pass", "pgkeep_rds", "pgkeep_rds").await;
    let mut backup = as_master(&db);
    backup.arg("backup");
    ok(backup, "backup as the master user");
    let client = cluster.client(&db).await;
    client
        .batch_execute("BEGIN; INSERT INTO public.customers VALUES (101, 'late', NULL); INSERT INTO public.orders VALUES (1000, 101, 1); UPDATE public.customers SET name = 'renamed' WHERE id = 5; UPDATE rds_tools.heartbeat SET at = '2026-02-02'; COMMIT")
        .await
        .unwrap();
    let mark = now(&cluster, &db).await;
    let want = hashes(&cluster, &db, &tables).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.batch_execute("DELETE FROM public.orders WHERE id < 50").await.unwrap();
    drop(client);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop(streaming);
    let mut restore = as_master(&db);
    restore.args(["restore", "latest", "--target-db", "rds_pitr", "--target-time", &mark, "--yes"]);
    let out = ok(restore, "point-in-time restore as the master user");
    assert!(out.contains("replayed 1 transaction(s)") && out.contains("object(s) of rdsadmin"), "{out}");
    assert_eq!(hashes(&cluster, "rds_pitr", &tables).await, want);
    assert_eq!(triggers_and_keys(&cluster, "rds_pitr").await, triggers_and_keys(&cluster, &db).await);
    let owner: String = cluster
        .client("rds_pitr")
        .await
        .query_one("SELECT relowner::regrole::text FROM pg_class WHERE oid = 'public.orders'::regclass", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "app_owner", "an owner the master user can become stays exact");
}

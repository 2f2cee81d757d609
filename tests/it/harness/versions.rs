//! What the cross-version tests share: the `pgkeep` binary run with the
//! newest installed client programs (pg_dump 18 against a 14 server is what
//! a mixed fleet does), a fixture of common types and objects valid on
//! PostgreSQL 14 and later, and comparisons of schema and table contents.

use std::path::Path;
use std::process::{Command, Output};

use super::postgres::{PgCluster, newest_client_bindir};
use super::streaming::pgkeep_cli;

/// Types and objects valid on PostgreSQL 14 to 18 (no roles: they are per cluster).
pub const FIXTURE: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
CREATE SCHEMA "Other Schema";
CREATE TABLE everything (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    n numeric, f double precision, ts timestamp, tstz timestamptz, iv interval,
    arr int[], j json, jb jsonb, b bytea, t text, m mood, p posint, c pair,
    rng int4range, u uuid, ip inet, tsv tsvector,
    doubled integer GENERATED ALWAYS AS (coalesce(p, 0) * 2) STORED
);
INSERT INTO everything (n, f, ts, tstz, iv, arr, j, jb, b, t, m, p, c, rng, u, ip, tsv) VALUES
 ('NaN', 'Infinity', 'infinity', '2026-11-24 02:00:00+05:30', '1 year 2 mons 3 days 04:05:06.789', '{1,2,NULL}',
  '{"k": [1, 2.50, "x"]}', '{"b": {"c": null}}', E'\\x00ff00', E'tab\there\nnewline\\backslash ünïcode ☃', 'happy', 5, ROW(1, 'x'), '[1,10)',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', to_tsvector('english', 'the quick brown foxes')),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO everything (t) SELECT string_agg(md5(g::text), '') FROM generate_series(1, 2000) g;
CREATE TABLE measurements (city text, at date, v int) PARTITION BY RANGE (at);
CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE measurements_2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO measurements SELECT 'c' || (i % 7), date '2025-01-01' + i, i FROM generate_series(0, 700) i;
CREATE TABLE no_pk (a int, b text);
INSERT INTO no_pk SELECT i % 3, 'dup' FROM generate_series(1, 50) i;
CREATE TABLE "Other Schema"."Mixed Case ""Quoted""" ("Ünï Col" text PRIMARY KEY);
INSERT INTO "Other Schema"."Mixed Case ""Quoted""" VALUES ('ä'), ('b');
CREATE TABLE a_cycle (id int PRIMARY KEY, b_id int);
CREATE TABLE b_cycle (id int PRIMARY KEY, a_id int REFERENCES a_cycle DEFERRABLE INITIALLY DEFERRED);
ALTER TABLE a_cycle ADD FOREIGN KEY (b_id) REFERENCES b_cycle DEFERRABLE INITIALLY DEFERRED;
BEGIN; INSERT INTO a_cycle VALUES (1, 1); INSERT INTO b_cycle VALUES (1, 1); COMMIT;
CREATE VIEW v_everything AS SELECT id, t FROM everything;
CREATE MATERIALIZED VIEW mv_counts AS SELECT city, count(*) FROM measurements GROUP BY city;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.b := NEW.b || '!'; RETURN NEW; END $$;
CREATE TRIGGER no_pk_touch BEFORE INSERT ON no_pk FOR EACH ROW EXECUTE FUNCTION touch();
ALTER TABLE no_pk ENABLE ROW LEVEL SECURITY;
CREATE POLICY only_a ON no_pk USING (a > 0);
COMMENT ON TABLE everything IS 'all the types';
CREATE INDEX measurements_city ON measurements (city);
CREATE INDEX everything_partial ON everything (md5(lower(t))) WHERE t IS NOT NULL;
CREATE SEQUENCE counter START 100; SELECT nextval('counter');
"#;

/// The `pgkeep` binary for `db` of `cluster` and repository `repo`, with
/// `PG_BINDIR` set to the newest installed client programs.
pub fn pgkeep(cluster: &PgCluster, db: &str, repo: &Path) -> Command {
    let mut cmd = pgkeep_cli(cluster, db, repo);
    cmd.env("PG_BINDIR", newest_client_bindir().1);
    cmd
}

/// Run `cmd`; panics with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run pgkeep {what}: {e}"));
    assert!(out.status.success(), "pgkeep {what} failed ({}):\n{}\n{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

/// `pg_dump --schema-only --no-owner` of `db` by the newest pg_dump, without
/// the lines that differ between equal schemas (the random `\restrict` key,
/// the server version in the header).
pub fn schema_dump(cluster: &PgCluster, db: &str) -> String {
    let s = cluster.superuser_settings(db);
    let out = Command::new(newest_client_bindir().1.join("pg_dump"))
        .args(["--schema-only", "--no-owner", "-h", &s.host, "-p", &s.port.to_string(), "-U", &s.user, db])
        .env("PGPASSWORD", s.password.as_ref().unwrap().expose())
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict") && !l.starts_with("-- Dumped from"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `schema.table` and an md5 of the sorted rows of every ordinary table.
pub async fn table_hashes(client: &tokio_postgres::Client) -> Vec<(String, String)> {
    let tables: Vec<String> = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!tables.is_empty(), "no tables to compare");
    let mut out = Vec::new();
    for t in tables {
        let sql = format!("SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x");
        out.push((t, client.query_one(&sql, &[]).await.unwrap().get(0)));
    }
    out
}

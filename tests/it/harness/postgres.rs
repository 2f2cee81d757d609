//! Throwaway PostgreSQL clusters for integration tests.
//!
//! [`PgCluster::start`] runs `initdb` and `pg_ctl start` in a fresh directory
//! under /tmp with scram-sha-256 authentication, `wal_level=logical` and a
//! free port; [`PgCluster::start_with`] adds TLS (a generated CA and server
//! certificate, optionally `hostssl`-only) or other settings. Dropping a
//! cluster stops it (`pg_ctl stop -m immediate`) and removes its directory.
//!
//! [`PgCluster::shared`] is one cluster per test file, started on first use
//! and stopped once the run has moved past the file, or by an `atexit`
//! handler; clusters left behind by a killed test run are stopped the next
//! time the harness starts one.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root every
//! server command runs as the `postgres` OS user, which owns the directory.
//! Server binaries come from `PG_BINDIR`, `pg_config --bindir`, or the newest
//! `/usr/lib/postgresql/*/bin`. `PGKEEP_TEST_PG_MAJOR=<major>` (the
//! cross-version matrix of `scripts/test.sh`) picks that major instead, from
//! the builds `scripts/pg-versions.sh` installs (see [`bindir_for_major`]);
//! [`PgCluster::start_major`] starts one cluster of a given major whatever
//! the default. `PG_BINDIR` then only says which client programs (pg_dump)
//! pgkeep itself uses.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::Duration;

use pgkeep::config::{DbSettings, Secret, SslMode};

/// The superuser every cluster is initialised with.
pub const SUPERUSER: &str = "postgres";
/// The superuser's password (scram-sha-256).
pub const SUPERUSER_PASSWORD: &str = "pgkeep-harness-superuser-pw";

/// Directory-name prefix of every cluster under /tmp.
const DIR_PREFIX: &str = "pgkeep-pg-";
/// File in a cluster directory holding the pid of the test process that owns it.
const OWNER_FILE: &str = "owner.pid";
/// File in a cluster directory naming the server binaries it runs with.
const BINDIR_FILE: &str = "bindir";

/// How a cluster offers TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// `ssl=on`; pg_hba accepts both TLS and plain connections.
    Offered,
    /// `ssl=on`; pg_hba only has `hostssl` lines, so plain TCP is rejected.
    Required,
}

/// The cluster's `wal_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalLevel {
    /// `wal_level=replica`.
    Replica,
    /// `wal_level=logical` (the default).
    #[default]
    Logical,
}

impl WalLevel {
    fn as_str(self) -> &'static str {
        match self {
            WalLevel::Replica => "replica",
            WalLevel::Logical => "logical",
        }
    }
}

/// Options for [`PgCluster::start_with`].
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// TLS with a generated CA, or none.
    pub tls: Option<TlsMode>,
    /// Subject alternative names of the server certificate; empty means
    /// `localhost` and `127.0.0.1`.
    pub cert_names: Vec<String>,
    /// Extra `postgresql.conf` lines, appended last.
    pub extra_conf: Vec<String>,
    /// `wal_level`.
    pub wal_level: WalLevel,
    /// The server's major version; `None` is the default ([`bindir`]).
    pub major: Option<u32>,
    /// Extra environment of the server processes, e.g. `LANGUAGE=de`, which
    /// gettext honours with `lc_messages = 'C.UTF-8'` (no generated locale needed).
    pub server_env: Vec<(String, String)>,
}

/// A running throwaway cluster.
pub struct PgCluster {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    tls: Option<TlsMode>,
    ca_cert: Option<PathBuf>,
    server_env: Vec<(String, String)>,
}

impl PgCluster {
    /// A new cluster with the default options (no TLS, `wal_level=logical`).
    pub fn start() -> PgCluster {
        PgCluster::start_with(PgOptions::default())
    }

    /// The cluster shared by the tests of the calling file (`tests/it/<file>.rs`;
    /// [`super::pitr_db`]'s callers share one). One per file, as when every
    /// file was its own test binary: some files assert on what is cluster-wide
    /// (the databases, roles and slots on the server), which tests of other
    /// files, running at the same time in this one binary, would change.
    /// Stopped once the run has moved past the file ([`super::shared_clusters`]).
    #[track_caller]
    pub fn shared() -> &'static PgCluster {
        super::shared_clusters::for_file(std::panic::Location::caller().file())
    }

    /// A new cluster of PostgreSQL `major` (default options otherwise).
    pub fn start_major(major: u32) -> PgCluster {
        PgCluster::start_with(PgOptions { major: Some(major), ..PgOptions::default() })
    }

    /// A new cluster with `options`. Panics with the server log when it cannot start.
    pub fn start_with(options: PgOptions) -> PgCluster {
        static CLEANUP: Once = Once::new();
        CLEANUP.call_once(stop_stale_clusters);

        let bindir = match options.major {
            Some(major) => bindir_for_major(major),
            None => bindir().to_path_buf(),
        };
        // From here on, a panic drops `cluster`, which removes the directory.
        let mut cluster =
            PgCluster { dir: make_cluster_dir(), bindir: bindir.clone(), port: 0, tls: options.tls, ca_cert: None, server_env: options.server_env.clone() };
        write_owned(&cluster.dir.join(BINDIR_FILE), bindir.as_os_str().as_encoded_bytes(), 0o644);
        cluster.init();
        cluster.ca_cert = options.tls.map(|_| cluster.write_tls_files(&options.cert_names));
        cluster.write_config(&options);
        cluster.launch();
        register_live(&cluster.dir);
        cluster
    }

    /// The TCP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the server binaries.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The server's major version (the data directory's `PG_VERSION`).
    pub fn major(&self) -> u32 {
        let text = fs::read_to_string(self.data_dir().join("PG_VERSION")).expect("harness: cannot read PG_VERSION");
        text.trim().parse().expect("harness: PG_VERSION is not a number")
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The Unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// The PEM file of the CA that signed the server certificate (TLS clusters only).
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    /// Settings for the superuser on `dbname` over TCP: sslmode `disable`, or
    /// `verify-ca` against the cluster's CA on TLS clusters.
    pub fn superuser_settings(&self, dbname: &str) -> DbSettings {
        let (sslmode, sslrootcert) = match self.tls {
            None => (SslMode::Disable, None),
            Some(_) => (SslMode::VerifyCa, self.ca_cert.clone()),
        };
        DbSettings {
            host: "127.0.0.1".to_string(),
            port: self.port,
            user: SUPERUSER.to_string(),
            password: Some(Secret::new(SUPERUSER_PASSWORD)),
            dbname: dbname.to_string(),
            sslmode,
            sslrootcert,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// A superuser client on `dbname`, connected through `pgkeep::pg::connect`.
    pub async fn client(&self, dbname: &str) -> tokio_postgres::Client {
        match pgkeep::pg::connect(&self.superuser_settings(dbname)).await {
            Ok(conn) => conn.client,
            Err(e) => panic!("harness: cannot connect to {dbname} on port {}: {}", self.port, e.user_line()),
        }
    }

    /// Run `sql` (one or more statements) on `dbname` as the superuser.
    pub async fn execute(&self, dbname: &str, sql: &str) {
        let client = self.client(dbname).await;
        if let Err(e) = client.batch_execute(sql).await {
            panic!("harness: SQL failed on {dbname}: {e:?}\n{sql}");
        }
    }

    /// Create a database named after `prefix`, unique in this cluster, and return its name.
    pub async fn fresh_db(&self, prefix: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let mut stem: String = prefix.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
        stem.truncate(40);
        let name = format!("{stem}_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.execute("postgres", &format!("CREATE DATABASE {}", quote_ident(&name))).await;
        name
    }

    /// Create a login role with `password` and extra attributes (`"REPLICATION"`, `"SUPERUSER"`, `""`).
    pub async fn create_role(&self, name: &str, password: &str, attrs: &str) {
        let sql = format!("CREATE ROLE {} WITH LOGIN {attrs} PASSWORD {}", quote_ident(name), quote_literal(password));
        self.execute("postgres", &sql).await;
    }

    /// `initdb` with the superuser password.
    fn init(&self) {
        let pwfile = self.dir.join("pwfile");
        write_owned(&pwfile, SUPERUSER_PASSWORD.as_bytes(), 0o600);
        let out = self
            .server_command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", SUPERUSER, "-A", "scram-sha-256", "--no-sync", "--encoding=UTF8", "--locale=C"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("harness: cannot run initdb");
        check(&out, "initdb");
        let _ = fs::remove_file(&pwfile);
    }

    /// Generate a CA and a server certificate for `names`; returns the CA PEM path.
    fn write_tls_files(&self, names: &[String]) -> PathBuf {
        let names = if names.is_empty() { vec!["localhost".to_string(), "127.0.0.1".to_string()] } else { names.to_vec() };
        let ca = TestCa::generate("pgkeep harness CA");
        let (cert_pem, key_pem) = ca.server_cert(&names);
        write_owned(&self.dir.join("server.crt"), cert_pem.as_bytes(), 0o644);
        write_owned(&self.dir.join("server.key"), key_pem.as_bytes(), 0o600);
        let ca_path = self.dir.join("ca.crt");
        write_owned(&ca_path, ca.cert_pem.as_bytes(), 0o644);
        ca_path
    }

    /// Append our settings to postgresql.conf and replace pg_hba.conf.
    fn write_config(&self, options: &PgOptions) {
        let data = self.data_dir();
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("unix_socket_directories = '{}'", self.dir.display()),
            format!("wal_level = {}", options.wal_level.as_str()),
            "max_replication_slots = 20".into(),
            "max_wal_senders = 20".into(),
            "fsync = off".into(),
            "synchronous_commit = off".into(),
            "full_page_writes = off".into(),
            "shared_buffers = 64MB".into(),
            "max_connections = 100".into(),
        ];
        if options.tls.is_some() {
            conf.push("ssl = on".into());
            conf.push(format!("ssl_cert_file = '{}'", self.dir.join("server.crt").display()));
            conf.push(format!("ssl_key_file = '{}'", self.dir.join("server.key").display()));
        }
        conf.extend(options.extra_conf.iter().cloned());
        let mut file = fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).expect("harness: cannot open postgresql.conf");
        writeln!(file, "\n# pgkeep test harness\n{}", conf.join("\n")).expect("harness: cannot write postgresql.conf");

        let host = match options.tls {
            Some(TlsMode::Required) => "hostssl",
            _ => "host",
        };
        let hba = format!(
            "local all all trust\n\
             {host} all all 127.0.0.1/32 scram-sha-256\n\
             {host} replication all 127.0.0.1/32 scram-sha-256\n"
        );
        fs::write(data.join("pg_hba.conf"), hba).expect("harness: cannot write pg_hba.conf");
    }

    /// `pg_ctl start` on a free port, retrying when another process takes the port first.
    /// Restart the server on the same port (`pg_ctl restart -m <mode>`:
    /// `fast` or `immediate`, a crash). Panics with the server log on failure.
    pub fn restart(&self, mode: &str) {
        let out = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-m", mode, "-w", "-t", "60", "-o"])
            .arg(format!("-p {}", self.port))
            .arg("restart")
            .output()
            .expect("harness: cannot run pg_ctl");
        assert!(
            out.status.success(),
            "harness: pg_ctl restart failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(self.log_path()).unwrap_or_default()
        );
    }

    fn launch(&mut self) {
        let log = self.log_path();
        let mut last = None;
        for _ in 0..5 {
            let port = free_port();
            let out = self
                .server_command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "-o"])
                .arg(format!("-p {port}"))
                .arg("start")
                .output()
                .expect("harness: cannot run pg_ctl");
            if out.status.success() {
                self.port = port;
                return;
            }
            let log_text = fs::read_to_string(&log).unwrap_or_default();
            if !log_text.contains("could not bind") && !log_text.contains("already in use") {
                panic!("harness: pg_ctl start failed: {}\n--- server log ---\n{log_text}", String::from_utf8_lossy(&out.stderr));
            }
            last = Some(log_text);
        }
        panic!("harness: no free port after 5 attempts\n{}", last.unwrap_or_default());
    }

    /// A command for a server binary, run as the `postgres` user when we are root.
    fn server_command(&self, name: &str) -> Command {
        let mut cmd = server_command(&self.bindir, &self.dir, name);
        cmd.envs(self.server_env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

impl PgCluster {
    /// Stop a shared cluster, which is never dropped, and remove its directory.
    pub(super) fn stop_shared(&self) {
        stop_and_remove(&self.bindir, &self.dir);
        unregister_live(&self.dir);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_shared();
    }
}

/// A throwaway certificate authority (rcgen).
pub struct TestCa {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
}

impl TestCa {
    /// A new self-signed CA named `common_name`.
    pub fn generate(common_name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("harness: cannot generate CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("harness: CA params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).expect("harness: cannot self-sign CA");
        TestCa { cert_pem: cert.pem(), params, key }
    }

    /// A server certificate for `names` (DNS names or IP addresses): (cert PEM, key PEM).
    pub fn server_cert(&self, names: &[String]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("harness: cannot generate server key");
        let mut params = rcgen::CertificateParams::new(names.to_vec()).expect("harness: bad certificate name");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().map(String::as_str).unwrap_or("server"));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("harness: cannot sign server certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// Write the CA certificate to `path`.
    pub fn write_cert(&self, path: &Path) {
        fs::write(path, &self.cert_pem).expect("harness: cannot write CA certificate");
    }
}

fn has_server(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}

/// The major version the tests run on by default: `PGKEEP_TEST_PG_MAJOR`, if set.
pub fn test_major() -> Option<u32> {
    let text = std::env::var("PGKEEP_TEST_PG_MAJOR").ok()?;
    Some(text.trim().parse().unwrap_or_else(|_| panic!("harness: PGKEEP_TEST_PG_MAJOR={text} is not a major version")))
}

/// Where `scripts/pg-versions.sh` installs builds: `PGKEEP_PG_CACHE`, else
/// /var/cache/pgkeep/pg as root (the `postgres` user cannot enter /root),
/// else ~/.cache/pgkeep/pg.
pub fn pg_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PGKEEP_PG_CACHE") {
        return PathBuf::from(dir);
    }
    if run_as().is_some() {
        return PathBuf::from("/var/cache/pgkeep/pg");
    }
    let cache =
        std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
    cache.join("pgkeep/pg")
}

/// The server binaries of PostgreSQL `major`: `<pg_cache_dir>/<major>/bin`,
/// else `/usr/lib/postgresql/<major>/bin`. Panics naming the installer when
/// neither exists.
pub fn bindir_for_major(major: u32) -> PathBuf {
    let cached = pg_cache_dir().join(major.to_string()).join("bin");
    let system = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    [cached.clone(), system]
        .into_iter()
        .find(|d| has_server(d))
        .unwrap_or_else(|| panic!("harness: no PostgreSQL {major} in {} (run scripts/pg-versions.sh {major})", cached.display()))
}

/// The newest installed client programs (`pg_dump`) of [`pg_cache_dir`] or
/// /usr/lib/postgresql, with their major.
pub fn newest_client_bindir() -> (u32, PathBuf) {
    let mut found: Vec<(u32, PathBuf)> = [pg_cache_dir(), PathBuf::from("/usr/lib/postgresql")]
        .iter()
        .flat_map(|root| fs::read_dir(root).into_iter().flatten().flatten())
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let dir = e.path().join("bin");
            dir.join("pg_dump").is_file().then_some((major, dir))
        })
        .collect();
    found.sort();
    found.pop().expect("harness: no pg_dump installed")
}

/// The server binaries: the major of `PGKEEP_TEST_PG_MAJOR` if set
/// ([`bindir_for_major`]), else `PG_BINDIR`, else `pg_config --bindir` if it
/// has `initdb` and `postgres`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn bindir() -> &'static Path {
    static BINDIR: OnceLock<PathBuf> = OnceLock::new();
    BINDIR.get_or_init(|| {
        if let Some(major) = test_major() {
            return bindir_for_major(major);
        }
        if let Some(dir) = std::env::var_os("PG_BINDIR") {
            let dir = PathBuf::from(dir);
            assert!(has_server(&dir), "harness: PG_BINDIR={} has no initdb and postgres", dir.display());
            return dir;
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
            && out.status.success()
        {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_server(&dir) {
                return dir;
            }
        }
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                let dir = entry.path().join("bin");
                has_server(&dir).then_some((version, dir))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, dir)| dir).expect("harness: no PostgreSQL server binaries (set PG_BINDIR)")
    })
}

/// The uid and gid server commands run as: `postgres` when we are root.
fn run_as() -> Option<(u32, u32)> {
    static RUN_AS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *RUN_AS.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = CString::new("postgres").unwrap();
        // SAFETY: getpwnam returns null or a pointer to a static passwd
        // record, read at once; this runs once, under the OnceLock.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        assert!(!pw.is_null(), "harness: running as root but there is no `postgres` OS user");
        // SAFETY: checked non-null above.
        let pw = unsafe { &*pw };
        Some((pw.pw_uid, pw.pw_gid))
    })
}

fn server_command(bindir: &Path, dir: &Path, name: &str) -> Command {
    let mut cmd = Command::new(bindir.join(name));
    cmd.current_dir(dir);
    for var in ["PGDATA", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGOPTIONS", "PGPASSWORD"] {
        cmd.env_remove(var);
    }
    if let Some((uid, gid)) = run_as() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Make `path` owned by the server user (a no-op when not root).
fn chown_to_server_user(path: &Path) {
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("harness: cannot chown {}: {e}", path.display()));
    }
}

/// Write a file the server user owns, with `mode`.
fn write_owned(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("harness: cannot write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("harness: chmod");
    chown_to_server_user(path);
}

/// A new cluster directory in /tmp, mode 0700, owned by the server user,
/// with our pid in it so a later run can tell when it was left behind.
fn make_cluster_dir() -> PathBuf {
    let dir = tempfile::Builder::new().prefix(DIR_PREFIX).tempdir_in("/tmp").expect("harness: cannot create a directory in /tmp").keep();
    fs::write(dir.join(OWNER_FILE), std::process::id().to_string()).expect("harness: cannot write owner file");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("harness: chmod");
    chown_to_server_user(&dir);
    dir
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("harness: cannot find a free port")
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "harness: {what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stop the cluster in `dir` (if running) and delete the directory.
fn stop_and_remove(bindir: &Path, dir: &Path) {
    let data = dir.join("data");
    if data.join("postmaster.pid").exists() {
        let _ = server_command(bindir, dir, "pg_ctl").arg("-D").arg(&data).args(["-m", "immediate", "-w", "-t", "30", "stop"]).output();
    }
    let _ = fs::remove_dir_all(dir);
}

/// Directories of clusters this process started and has not stopped yet.
fn live() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn register_live(dir: &Path) {
    static AT_EXIT: Once = Once::new();
    AT_EXIT.call_once(|| {
        // SAFETY: registering a plain `extern "C"` function with no captured state.
        let rc = unsafe { libc::atexit(stop_live_clusters) };
        assert_eq!(rc, 0, "harness: atexit failed");
    });
    live().push(dir.to_path_buf());
}

fn unregister_live(dir: &Path) {
    live().retain(|d| d != dir);
}

/// `atexit` handler: statics (the shared cluster) are never dropped, so stop
/// whatever is still running when the test binary exits.
extern "C" fn stop_live_clusters() {
    let dirs = std::mem::take(&mut *live());
    for dir in dirs {
        stop_and_remove(&cluster_bindir(&dir), &dir);
    }
}

/// The server binaries the cluster in `dir` was started with ([`BINDIR_FILE`]), else [`bindir`].
fn cluster_bindir(dir: &Path) -> PathBuf {
    fs::read_to_string(dir.join(BINDIR_FILE)).ok().map(PathBuf::from).filter(|d| has_server(d)).unwrap_or_else(|| bindir().to_path_buf())
}

/// Stop and remove clusters whose owning test process no longer exists (a
/// run that was killed before its atexit handler could run).
fn stop_stale_clusters() {
    let Ok(entries) = fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let Some(pid) = fs::read_to_string(dir.join(OWNER_FILE)).ok().and_then(|s| s.trim().parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        if !alive {
            stop_and_remove(&cluster_bindir(&dir), &dir);
        }
    }
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

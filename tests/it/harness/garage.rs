//! A real Garage S3 server for integration tests.
//!
//! [`Garage::start`] writes a single-node `garage.toml` (sqlite metadata,
//! replication factor 1, RPC, S3 and admin APIs on free loopback ports) into
//! a fresh directory under /tmp, runs `garage server` with its output in
//! `garage.log` there, waits for `garage status`, applies a one-node layout
//! and imports an access key. [`Garage::create_bucket`] makes a bucket that
//! key may read, write and own. Dropping a `Garage` kills the server and
//! removes its directory.
//!
//! [`Garage::shared`] is one server for the test binary (every test file
//! uses it), started on first use
//! (about half a second) and stopped by an `atexit` handler; each test uses
//! its own bucket. Every server is spawned from one long-lived thread with
//! `PR_SET_PDEATHSIG`, so it dies with the test binary even when that is
//! killed; directories left behind by a killed run are removed the next time
//! the harness starts a server.
//!
//! The binary comes from `GARAGE_BIN`, then `PATH`, then
//! `$HOME/.cargo/bin/garage` (`scripts/test.sh` installs it there).

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use pgkeep::config::Secret;
use pgkeep::storage::s3::S3Settings;

/// Region Garage is configured with.
pub const REGION: &str = "garage";
/// Part size used by [`Garage::settings`]: the S3 minimum, so tests hit multipart quickly.
pub const TEST_PART_SIZE: usize = 5 << 20;

/// Directory-name prefix of every server directory under /tmp.
const DIR_PREFIX: &str = "pgkeep-garage-";
/// File in a server directory holding the pid of the test process that owns it.
const OWNER_FILE: &str = "owner.pid";

/// A running single-node Garage server.
pub struct Garage {
    bin: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    pid: u32,
    child: Mutex<Option<Child>>,
    s3_addr: SocketAddr,
    access_key: String,
    secret_key: String,
}

/// Servers to kill and directories to remove when the process exits.
static AT_EXIT: Mutex<Vec<(u32, PathBuf)>> = Mutex::new(Vec::new());

extern "C" fn kill_shared_servers() {
    let Ok(mut list) = AT_EXIT.lock() else { return };
    for (pid, dir) in list.drain(..) {
        // SAFETY: plain syscalls on a pid we spawned.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
            libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
        }
        let _ = fs::remove_dir_all(dir);
    }
}

impl Garage {
    /// The server shared by every test in the binary, each with its own bucket.
    pub fn shared() -> &'static Garage {
        static SHARED: OnceLock<Garage> = OnceLock::new();
        SHARED.get_or_init(|| {
            let g = Garage::start();
            let mut list = AT_EXIT.lock().unwrap();
            if list.is_empty() {
                // SAFETY: registering a plain extern "C" function.
                unsafe { libc::atexit(kill_shared_servers) };
            }
            list.push((g.pid, g.dir.clone()));
            g
        })
    }

    /// Start a fresh server with its own directory, ports and key.
    pub fn start() -> Garage {
        let bin = garage_bin();
        remove_stale_dirs();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst)));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create Garage directory");
        fs::write(dir.join(OWNER_FILE), std::process::id().to_string()).unwrap();

        let [rpc_port, s3_port, admin_port] = free_ports();
        let config = dir.join("garage.toml");
        let toml = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
api_bind_addr = "127.0.0.1:{s3_port}"
s3_region = "{REGION}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
"#,
            meta = dir.join("meta").display(),
            data = dir.join("data").display(),
            secret = hex::encode(rand::random::<[u8; 32]>()),
        );
        fs::write(&config, toml).expect("write garage.toml");

        let log = fs::File::create(dir.join("garage.log")).expect("create garage.log");
        let mut cmd = Command::new(&bin);
        cmd.arg("-c").arg(&config).arg("server").env("RUST_LOG", "garage=warn").stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        // SAFETY: prctl is async-signal-safe; the child dies with the thread
        // that spawned it, which lives as long as the test binary.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = spawn_from_parent_thread(cmd).unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut garage = Garage {
            bin,
            pid: child.id(),
            child: Mutex::new(Some(child)),
            s3_addr: SocketAddr::from(([127, 0, 0, 1], s3_port)),
            access_key: format!("GK{}", hex::encode(rand::random::<[u8; 12]>())),
            secret_key: hex::encode(rand::random::<[u8; 32]>()),
            dir,
            config,
        };
        garage.initialise();
        garage
    }

    /// Wait for the server, give it a layout, and import the access key.
    fn initialise(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.try_cli(&["status"]).is_ok() {
                break;
            }
            if let Some(status) = self.child.lock().unwrap().as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("Garage exited during startup ({status}); log:\n{}", self.log_tail());
            }
            assert!(Instant::now() < deadline, "Garage did not answer `status` within 30 s; log:\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
        let node = self.cli(&["node", "id", "-q"]);
        let node_id = node.trim().split('@').next().unwrap().to_string();
        self.cli(&["layout", "assign", "-z", "dc1", "-c", "10G", &node_id]);
        self.cli(&["layout", "apply", "--version", "1"]);
        let (key, secret) = (self.access_key.clone(), self.secret_key.clone());
        self.cli(&["key", "import", "--yes", "-n", "pgkeep-test", &key, &secret]);
    }

    /// Run a `garage` CLI command against this server; its stdout.
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let out =
            Command::new(&self.bin).arg("-c").arg(&self.config).args(args).stdin(Stdio::null()).output().map_err(|e| format!("cannot run garage: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "`garage {}` failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Like [`Garage::try_cli`], panicking with the server log on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e}\nGarage log:\n{}", self.log_tail()))
    }

    /// Create `name` and let the test key read, write and own it. Retries for
    /// a few seconds while a new layout settles.
    pub fn create_bucket(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.try_cli(&["bucket", "create", name]) {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline && !e.contains("already") => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => panic!("{e}\nGarage log:\n{}", self.log_tail()),
            }
        }
        self.cli(&["bucket", "allow", "--read", "--write", "--owner", name, "--key", &self.access_key]);
    }

    /// Create a bucket with a unique name starting with `label`; its name.
    pub fn unique_bucket(&self, label: &str) -> String {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!("{label}-{}", SEQ.fetch_add(1, Ordering::SeqCst)).to_ascii_lowercase().replace('_', "-");
        self.create_bucket(&name);
        name
    }

    /// S3 endpoint URL (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.s3_addr)
    }

    /// Address of the S3 API, for proxies.
    pub fn s3_addr(&self) -> SocketAddr {
        self.s3_addr
    }

    /// The region Garage answers for.
    pub fn region(&self) -> &str {
        REGION
    }

    /// Access key id of the test key.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// Secret of the test key.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// Settings for `bucket` and `prefix` on this server: path style, static
    /// credentials, 5 MiB parts, 4 parts in flight, 4 attempts.
    pub fn settings(&self, bucket: &str, prefix: &str) -> S3Settings {
        S3Settings {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            endpoint: Some(self.endpoint()),
            region: Some(REGION.to_string()),
            force_path_style: true,
            access_key_id: Some(self.access_key.clone()),
            secret_access_key: Some(Secret::new(self.secret_key.clone())),
            part_size: TEST_PART_SIZE,
            upload_concurrency: 4,
            max_attempts: 4,
            request_timeout: Duration::from_secs(20),
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            security: Default::default(),
        }
    }

    /// Stop the server process (SIGSTOP): it keeps its sockets but answers
    /// nothing, like a store that hangs. [`Garage::resume`] continues it.
    pub fn pause(&self) {
        // SAFETY: a plain signal to a process we spawned.
        assert_eq!(unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGSTOP) }, 0, "SIGSTOP garage");
    }

    /// Continue a paused server (SIGCONT).
    pub fn resume(&self) {
        // SAFETY: a plain signal to a process we spawned.
        assert_eq!(unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGCONT) }, 0, "SIGCONT garage");
    }

    /// A raw SDK client for this server, to look behind the backend's back
    /// (user metadata, multipart uploads).
    pub async fn client(&self) -> aws_sdk_s3::Client {
        let creds = aws_sdk_s3::config::Credentials::new(&self.access_key, &self.secret_key, None, None, "garage-harness");
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(REGION))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .credentials_provider(creds)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// The last lines of the server log, for panic messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("garage.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The garage binary: `GARAGE_BIN`, then `PATH`, then `~/.cargo/bin`.
fn garage_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GARAGE_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "GARAGE_BIN={} is not a file", p.display());
        return p;
    }
    let from_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|d| d.join("garage"))
        .find(|p| is_executable(p));
    if let Some(p) = from_path {
        return p;
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = Path::new(&home).join(".cargo/bin/garage");
        if is_executable(&p) {
            return p;
        }
    }
    panic!(
        "the `garage` binary was not found (looked at GARAGE_BIN, PATH and ~/.cargo/bin); \
         run scripts/test.sh, which installs it, or set GARAGE_BIN"
    );
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Three distinct free loopback ports.
fn free_ports() -> [u16; 3] {
    let listeners: Vec<TcpListener> = (0..3).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
    [ports[0], ports[1], ports[2]]
}

/// Spawn `cmd` from one long-lived thread, so `PR_SET_PDEATHSIG` (which
/// fires when the spawning *thread* exits) only fires when the process does.
fn spawn_from_parent_thread(cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("garage-parent".into())
            .spawn(move || {
                // Runs until the process exits: the receiver never closes
                // because the sender lives in a static.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn garage parent thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner.lock().unwrap().send((cmd, reply_tx)).expect("garage parent thread is gone");
    reply_rx.recv().expect("garage parent thread is gone")
}

/// Remove server directories whose owning test process no longer exists.
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let owner = fs::read_to_string(entry.path().join(OWNER_FILE)).ok().and_then(|s| s.trim().parse::<i32>().ok());
        let stale = match owner {
            // SAFETY: kill with signal 0 only checks that the pid exists.
            Some(pid) => (unsafe { libc::kill(pid, 0) }) != 0,
            // No owner file: being created right now, unless it is old.
            None => entry.metadata().and_then(|m| m.modified()).map(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(600)).unwrap_or(false),
        };
        if stale {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

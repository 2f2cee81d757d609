//! The operator's console through the binary (README, "Console output").
//!
//! On a terminal — a pseudo-terminal from `script(1)` — backup, restore
//! and `verify --deep` draw a bar by bytes with rate and ETA, INFO lines
//! are human (no level word, no LSNs or snapshot names) and log lines are
//! never written into the bar. Off a terminal the same commands print no
//! bar, and stderr keeps its structured lines. The database is reached
//! through a throttling TCP proxy so the data phase lasts long enough to
//! be drawn. Summaries say what each kind of backup holds: an incremental
//! its transactions, row changes, LSN range and parent, with no ratio in
//! `list`.

use crate::harness;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use harness::postgres::PgCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes per second each direction of each proxied connection may carry.
const THROTTLE: u64 = 3 << 20;

/// A TCP proxy to `upstream` on a free loopback port that carries at most
/// [`THROTTLE`] bytes per second each way per connection. Returns its port.
fn throttling_proxy(rt: &tokio::runtime::Runtime, upstream: u16) -> u16 {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { continue };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw));
            tokio::spawn(pump(sr, cw));
        }
    });
    port
}

async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf) {
    let mut buf = vec![0u8; 32 << 10];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_secs_f64(n as f64 / THROTTLE as f64)).await;
    }
    let _ = to.shutdown().await;
}

/// The environment of a run: the database (through `port`) and the repository.
fn env(cluster: &PgCluster, db: &str, port: u16, repo: &Path) -> Vec<(String, String)> {
    let s = cluster.superuser_settings(db);
    vec![
        ("DB_HOST".into(), "127.0.0.1".into()),
        ("DB_PORT".into(), port.to_string()),
        ("DB_USER".into(), s.user.clone()),
        ("DB_PASSWORD".into(), s.password.as_ref().unwrap().expose().to_string()),
        ("DB_NAME".into(), db.to_string()),
        ("DB_SSLMODE".into(), "disable".into()),
        ("BACKUP_DIR".into(), repo.display().to_string()),
        ("HOME".into(), "/nonexistent-home".into()),
        ("NO_COLOR".into(), "1".into()),
    ]
}

fn command(program: &str, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k.starts_with("DB_") || k.starts_with("S3_") || k == "DATABASE_URL" || k == "BACKUP_DIR" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null());
    cmd
}

/// `pgkeep args…` with stdout and stderr piped (not a terminal).
fn piped(env: &[(String, String)], args: &[&str]) -> Output {
    command(env!("CARGO_BIN_EXE_pgkeep"), env).args(args).output().unwrap()
}

/// `pgkeep args…` on a pseudo-terminal: `script -qec` runs it with stdout
/// and stderr on the pty; returns the exit status and what the screen got.
fn on_terminal(env: &[(String, String)], args: &[&str]) -> (bool, String) {
    let line = std::iter::once(env!("CARGO_BIN_EXE_pgkeep")).chain(args.iter().copied()).map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ");
    let out = command("script", env).args(["-qec", &line, "/dev/null"]).env("TERM", "xterm").env("COLUMNS", "160").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Everything ever drawn, as text: ANSI escape sequences removed, split at `\r`, `\n` and line erasures (`ESC [2K`).
fn drawn_lines(raw: &str) -> Vec<String> {
    let mut text = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // Erasing the line starts a new drawing of it.
            if escape(&mut chars) == ("2".to_string(), 'K') {
                text.push('\n');
            }
            continue;
        }
        text.push(c);
    }
    text.split(['\r', '\n']).map(str::trim_end).filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// Skip one `ESC [ params final` sequence; return its params and final byte.
fn escape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> (String, char) {
    let mut params = String::new();
    if chars.peek() == Some(&'[') {
        chars.next();
        for e in chars.by_ref() {
            if ('@'..='~').contains(&e) {
                return (params, e);
            }
            params.push(e);
        }
    }
    (params, ' ')
}

/// What the screen shows at the end: a small terminal that knows newline,
/// carriage return, cursor up/down (`ESC[nA`, `ESC[nB`) and erase line (`ESC[2K`).
fn final_screen(raw: &str) -> Vec<String> {
    let mut rows: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                let (params, fin) = escape(&mut chars);
                let n: usize = params.parse().unwrap_or(1);
                match fin {
                    'A' => row = row.saturating_sub(n),
                    'B' => row += n,
                    'K' => rows[row].truncate(if params == "2" { 0 } else { col }),
                    _ => {}
                }
            }
            '\n' => {
                row += 1;
                col = 0;
            }
            '\r' => col = 0,
            c => {
                let line = &mut rows[row];
                if col < line.len() {
                    line[col] = c;
                } else {
                    line.resize(col, ' ');
                    line.push(c);
                }
                col += 1;
            }
        }
        while rows.len() <= row {
            rows.push(Vec::new());
        }
    }
    rows.into_iter().map(|r| r.into_iter().collect::<String>().trim_end().to_string()).filter(|l| !l.is_empty()).collect()
}

/// A bar line: `<verb> … 4.0 MiB/12.1 MiB  2.9 MiB/s  ETA 3s …`.
fn bar_lines<'a>(lines: &'a [String], verb: &str) -> Vec<&'a String> {
    lines.iter().filter(|l| l.starts_with(&format!("{verb} ")) && l.contains(" ETA ") && l.contains("B/s") && l.contains("iB/")).collect()
}

/// `HH:MM:SS ` at the start of a human log line.
fn stamped(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 9 && b[2] == b':' && b[5] == b':' && b[8] == b' ' && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit())
}

#[test]
fn a_terminal_gets_a_byte_bar_with_eta_and_human_lines_and_a_pipe_gets_neither() {
    let cluster = PgCluster::shared();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(async {
        let db = cluster.fresh_db("console_bar").await;
        // About 13 MB of COPY text: four seconds and more through the proxy.
        cluster
            .execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, repeat(md5(i::text), 6) FROM generate_series(1, 60000) i;")
            .await;
        db
    });
    let port = throttling_proxy(&rt, cluster.port());
    let repo = tempfile::tempdir().unwrap();
    let env = env(cluster, &db, port, repo.path());

    // Backup on a terminal: the bar by bytes, human INFO lines, the summary intact.
    // (Small chunks: bytes are counted as chunks are stored.)
    let (ok, screen) = on_terminal(&env, &["--jobs", "1", "backup", "--chunk-size", "256KiB"]);
    assert!(ok, "{screen}");
    let bars = bar_lines(&drawn_lines(&screen), "backup").into_iter().cloned().collect::<Vec<_>>();
    assert!(bars.iter().any(|b| !b.contains(" 0 B/")), "no byte bar with rate and ETA that moved:\n{screen}");
    for noise in [" INFO ", "lsn=", "snapshot="] {
        assert!(!screen.contains(noise), "`{noise}` on the terminal:\n{screen}");
    }
    // What stays on screen: whole log lines, each with its time, then the
    // summary; the bar is gone and no log line was written into it.
    let lines = final_screen(&screen);
    let (summary, logs) = lines.split_last().unwrap();
    assert!(summary.starts_with("backup full_backup_") && summary.contains(" done in ") && summary.contains("60000 rows"), "{summary}\n{screen}");
    for l in logs {
        assert!(stamped(l), "a garbled line: {l:?}\nscreen:\n{}", lines.join("\n"));
    }
    let copying = logs.iter().find(|l| l.contains(" copying tables (")).unwrap_or_else(|| panic!("{}", lines.join("\n")));
    assert!(copying.contains("(tables=1, estimated_bytes=") && copying.ends_with(" MiB, tasks=1, jobs=1)"), "{copying}");

    // Off a terminal: no bar, and the structured lines as before.
    let o = piped(&env, &["--jobs", "1", "backup"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(!stderr.contains("ETA") && !stderr.contains('\x1b') && !stderr.contains('\r'), "a bar off the terminal:\n{stderr}");
    assert!(stderr.contains(" INFO ") && stderr.contains("copying tables"), "{stderr}");

    // Restore and verify --deep (a restore into a scratch database) on a terminal.
    let target = format!("{db}_restored");
    let (ok, screen) = on_terminal(&env, &["--jobs", "1", "restore", "latest", "--target-db", &target, "--yes"]);
    assert!(ok, "{screen}");
    assert!(!bar_lines(&drawn_lines(&screen), "restore").is_empty(), "no restore bar:\n{screen}");
    let loading = final_screen(&screen).into_iter().find(|l| l.contains(" loading full_backup_")).unwrap_or_else(|| panic!("{screen}"));
    assert!(stamped(&loading) && loading.ends_with(&format!(" into {target} (tables=1, raw_bytes=11.4 MiB, jobs=1)")), "{loading}");
    let (ok, screen) = on_terminal(&env, &["--jobs", "1", "verify", "--deep", "latest"]);
    assert!(ok, "{screen}");
    assert!(!bar_lines(&drawn_lines(&screen), "verify").is_empty(), "no verify --deep bar:\n{screen}");

    // Off a terminal, verify --deep draws nothing either.
    let o = piped(&env, &["--jobs", "1", "verify", "--deep", "latest"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(!stderr.contains("ETA"), "{stderr}");
}

#[test]
fn an_incremental_backup_says_what_it_holds_and_list_shows_no_ratio_for_it() {
    let cluster = PgCluster::shared();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(async {
        let db = cluster.fresh_db("console_incr").await;
        cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 10) g;").await;
        db
    });
    let repo = tempfile::tempdir().unwrap();
    let env = env(cluster, &db, cluster.port(), repo.path());
    let run = |args: &[&str]| {
        let o = piped(&env, args);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };

    // The first creates the change-archiving slot and is a full backup.
    let full = run(&["backup", "--incremental"]);
    assert!(full.starts_with("backup full_backup_") && full.contains("(ratio "), "{full}");
    // Two transactions: 3 row changes.
    rt.block_on(cluster.execute(&db, "UPDATE t SET v = 100 WHERE id = 1; INSERT INTO t VALUES (11, 11), (12, 12);"));
    let incr = run(&["backup", "--incremental"]);
    let parent = full.split_whitespace().nth(1).unwrap();
    assert!(incr.starts_with("incremental backup incr_backup_"), "{incr}");
    for want in ["2 transaction(s)", "3 row change(s)", "LSN ", "commits from ", &format!("on top of {parent}")] {
        assert!(incr.contains(want), "`{want}` missing: {incr}");
    }
    assert!(!incr.contains("ratio") && !incr.contains("0 tables"), "{incr}");

    // `list`: no ratio for the incremental, and what it holds under it.
    let list = run(&["list"]);
    let row = list.lines().position(|l| l.starts_with("incr_backup_")).unwrap_or_else(|| panic!("{list}"));
    let cols: Vec<&str> = list.lines().nth(row).unwrap().split_whitespace().collect();
    assert!(cols.contains(&"-") && !cols.iter().any(|c| c.starts_with("0.00")), "{list}");
    let held = list.lines().nth(row + 1).unwrap();
    assert!(held.contains("2 transaction(s), 3 row change(s)") && held.contains(&format!("parent {parent}")), "{list}");
    let full_row = list.lines().find(|l| l.starts_with(parent)).unwrap();
    assert!(full_row.split_whitespace().any(|c| c.contains('.') && c.parse::<f64>().is_ok_and(|r| r > 0.0)), "{list}");

    // The slot goes with the test.
    run(&["stream", "--remove"]);
}

#[test]
fn a_replay_on_a_terminal_shows_its_segments_and_row_changes() {
    let cluster = PgCluster::shared();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(async {
        let db = cluster.fresh_db("console_replay").await;
        cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 20000) i;").await;
        db
    });
    let repo = tempfile::tempdir().unwrap();
    let direct = env(cluster, &db, cluster.port(), repo.path());
    // The archive: a stream with small segments, a backup it continues, then 40000 row changes in 16 transactions.
    let mut stream = command(env!("CARGO_BIN_EXE_pgkeep"), &direct)
        .args(["-q", "stream", "--segment-seconds", "1", "--segment-bytes", "256KiB"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let slot = format!("pgkeep_{db}");
    rt.block_on(async { harness::streaming::wait_for_slot(&cluster.client(&db).await, &slot, Some(true)).await });
    let o = piped(&direct, &["backup"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    rt.block_on(async {
        for i in 0..8 {
            cluster.execute(&db, &format!("UPDATE t SET v = md5(v) WHERE id % 8 = {i}")).await;
            cluster.execute(&db, &format!("UPDATE t SET v = v || 'x' WHERE id % 8 = {i}")).await;
        }
    });
    unsafe { libc::kill(stream.id() as i32, libc::SIGTERM) };
    assert!(stream.wait().unwrap().success());

    // Restored to the end of the archive through the throttle: the replay has its bar.
    let port = throttling_proxy(&rt, cluster.port());
    let env = env(cluster, &db, port, repo.path());
    let target = format!("{db}_replayed");
    let (ok, screen) = on_terminal(&env, &["--jobs", "1", "restore", "latest", "--target-db", &target, "--yes"]);
    assert!(ok, "{screen}");
    let drawn = drawn_lines(&screen);
    let replay = bar_lines(&drawn, "replay");
    assert!(replay.iter().any(|l| l.ends_with(" row changes")), "no replay bar with row changes:\n{screen}");
    assert!(!final_screen(&screen).iter().any(|l| l.starts_with("replay ") || l.starts_with("restore ")), "a bar left on screen:\n{screen}");

    let o = piped(&direct, &["stream", "--remove"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

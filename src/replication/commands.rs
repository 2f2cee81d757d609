//! Replication commands as text, and their results as types: slot-name
//! validation and quoting, `CREATE_REPLICATION_SLOT` / `DROP_REPLICATION_SLOT`
//! in the syntax of the server's version, and [`SystemIdentity`] /
//! [`CreatedSlot`] read from the rows the server returns. All pure.

use std::str::FromStr;

use super::simple_query::QueryResponse;
use crate::error::{Error, ErrorKind, Result};
use crate::lsn::Lsn;

/// The output plugin of every slot pgkeep creates.
pub const OUTPUT_PLUGIN: &str = "pgoutput";

/// Longest slot name PostgreSQL accepts (NAMEDATALEN - 1).
pub const MAX_SLOT_NAME_LEN: usize = 63;

/// What `IDENTIFY_SYSTEM` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's system identifier (a 64-bit number, as text).
    pub systemid: String,
    /// The current timeline.
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// The database of this connection (`None` on a physical connection).
    pub dbname: Option<String>,
}

/// What `CREATE_REPLICATION_SLOT … LOGICAL` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot's name.
    pub slot_name: String,
    /// The LSN from which the slot's changes start: everything committed
    /// before it is in the exported snapshot.
    pub consistent_point: Lsn,
    /// The exported snapshot, for `SET TRANSACTION SNAPSHOT`. It can be
    /// imported only until the next command on the replication connection
    /// (or until the connection closes).
    pub snapshot_name: Option<String>,
    /// The output plugin (`pgoutput`).
    pub output_plugin: String,
}

/// Check that `name` is a valid slot name: 1 to 63 lower-case letters,
/// digits and underscores. Anything else is an `ErrorKind::Config` error
/// naming the slot.
pub fn validate_slot_name(name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        Some("is empty".to_string())
    } else if name.len() > MAX_SLOT_NAME_LEN {
        Some(format!("is {} characters long (at most {MAX_SLOT_NAME_LEN})", name.len()))
    } else if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        Some("may contain only lower-case letters, digits and underscores".to_string())
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(Error::config(format!("replication slot name {name:?} {problem}")).with_hint("choose a slot name like pgkeep_backup_1")),
    }
}

/// `name` as a double-quoted identifier, inner quotes doubled.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The first `server_version_num` whose slots can be failover slots
/// (PostgreSQL 17: `CREATE_REPLICATION_SLOT … (FAILOVER)`), synchronized to
/// standbys so that a failover keeps them.
pub const FAILOVER_MIN_SERVER_VERSION: u32 = 170_000;

/// `CREATE_REPLICATION_SLOT` for a `pgoutput` slot in the syntax of
/// `server_version_num`: the option list `(SNAPSHOT '…')` from 15 on, the
/// `EXPORT_SNAPSHOT` / `NOEXPORT_SNAPSHOT` keywords on 10 to 14.
pub fn create_logical_slot_command(name: &str, temporary: bool, export_snapshot: bool, server_version_num: u32) -> Result<String> {
    create_logical_slot_command_with(name, temporary, export_snapshot, false, server_version_num)
}

/// [`create_logical_slot_command`] with `FAILOVER` in the option list when
/// `failover` and the server has failover slots (17+; never temporary ones,
/// which the server refuses to make failover slots).
pub fn create_logical_slot_command_with(name: &str, temporary: bool, export_snapshot: bool, failover: bool, server_version_num: u32) -> Result<String> {
    validate_slot_name(name)?;
    let failover = failover && !temporary && server_version_num >= FAILOVER_MIN_SERVER_VERSION;
    let temporary = if temporary { " TEMPORARY" } else { "" };
    let snapshot = match (server_version_num >= 150_000, export_snapshot, failover) {
        (true, true, false) => "(SNAPSHOT 'export')",
        (true, false, false) => "(SNAPSHOT 'nothing')",
        (true, true, true) => "(SNAPSHOT 'export', FAILOVER)",
        (true, false, true) => "(SNAPSHOT 'nothing', FAILOVER)",
        (false, true, _) => "EXPORT_SNAPSHOT",
        (false, false, _) => "NOEXPORT_SNAPSHOT",
    };
    if server_version_num < 100_000 {
        return Err(Error::new(
            ErrorKind::Database,
            format!(
                "cannot create logical replication slot {name}: PostgreSQL {} has no {OUTPUT_PLUGIN} (needs 10 or later)",
                version_text(server_version_num)
            ),
        ));
    }
    Ok(format!("CREATE_REPLICATION_SLOT {}{temporary} LOGICAL {OUTPUT_PLUGIN} {snapshot}", quote_identifier(name)))
}

/// `ALTER_REPLICATION_SLOT "name" (FAILOVER true)` (PostgreSQL 17+): make an
/// existing slot a failover slot.
pub fn alter_slot_failover_command(name: &str) -> Result<String> {
    validate_slot_name(name)?;
    Ok(format!("ALTER_REPLICATION_SLOT {} (FAILOVER true)", quote_identifier(name)))
}

/// `DROP_REPLICATION_SLOT`, waiting for an active slot to be released when `wait`.
pub fn drop_slot_command(name: &str, wait: bool) -> Result<String> {
    validate_slot_name(name)?;
    let wait = if wait { " WAIT" } else { "" };
    Ok(format!("DROP_REPLICATION_SLOT {}{wait}", quote_identifier(name)))
}

/// `server_version_num` from the `server_version` parameter: `15.4 (Debian …)`
/// gives 150004, `16beta1` 160000, `9.6.3` 90603. `None` if it is not a version.
pub fn parse_server_version(text: &str) -> Option<u32> {
    let version: &str = text.split_whitespace().next()?;
    let numeric_end = version.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(version.len());
    let mut parts = version[..numeric_end].split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    if major >= 10 {
        Some(major * 10_000 + minor)
    } else {
        let patch = parts.next().flatten().unwrap_or(0);
        Some(major * 10_000 + minor * 100 + patch)
    }
}

/// `150004` as `15.4`, for messages.
fn version_text(num: u32) -> String {
    if num >= 100_000 { format!("{}.{}", num / 10_000, num % 10_000) } else { format!("{}.{}.{}", num / 10_000, num / 100 % 100, num % 100) }
}

/// The single row a replication command returns, with its columns by name.
struct OneRow<'a> {
    response: &'a QueryResponse,
    command: &'static str,
}

impl<'a> OneRow<'a> {
    fn new(response: &'a QueryResponse, command: &'static str) -> std::result::Result<Self, String> {
        match response.rows.len() {
            1 => Ok(OneRow { response, command }),
            n => Err(format!("{command} returned {n} rows instead of 1")),
        }
    }

    fn get(&self, column: &str) -> std::result::Result<Option<&'a str>, String> {
        let index = self.response.column(column).ok_or_else(|| format!("{} returned no column {column}", self.command))?;
        let value = self.response.rows[0].get(index).ok_or_else(|| format!("{} returned a short row", self.command))?;
        Ok(value.as_deref())
    }

    fn required(&self, column: &str) -> std::result::Result<&'a str, String> {
        self.get(column)?.ok_or_else(|| format!("{} returned NULL {column}", self.command))
    }

    fn parsed<T: FromStr>(&self, column: &str) -> std::result::Result<T, String> {
        let text = self.required(column)?;
        text.parse().map_err(|_| format!("{} returned an invalid {column} {text:?}", self.command))
    }
}

impl SystemIdentity {
    /// Read `IDENTIFY_SYSTEM`'s row; `Err` describes what is wrong with it.
    pub fn from_response(response: &QueryResponse) -> std::result::Result<Self, String> {
        let row = OneRow::new(response, "IDENTIFY_SYSTEM")?;
        Ok(SystemIdentity {
            systemid: row.required("systemid")?.to_string(),
            timeline: row.parsed("timeline")?,
            xlogpos: row.parsed("xlogpos")?,
            dbname: row.get("dbname")?.map(str::to_string),
        })
    }
}

impl CreatedSlot {
    /// Read `CREATE_REPLICATION_SLOT`'s row; `Err` describes what is wrong with it.
    pub fn from_response(response: &QueryResponse) -> std::result::Result<Self, String> {
        let row = OneRow::new(response, "CREATE_REPLICATION_SLOT")?;
        Ok(CreatedSlot {
            slot_name: row.required("slot_name")?.to_string(),
            consistent_point: row.parsed("consistent_point")?,
            snapshot_name: row.get("snapshot_name")?.map(str::to_string),
            output_plugin: row.required("output_plugin")?.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_validated() {
        validate_slot_name("pgkeep_backup_1").unwrap();
        validate_slot_name(&"a".repeat(63)).unwrap();
        for bad in ["Bad-Name", "", "with space", "dash-ed", "UPPER", "quote\"", "é"] {
            let e = validate_slot_name(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}");
            assert!(e.message().contains(&format!("{bad:?}")), "{}", e.message());
        }
        let e = validate_slot_name(&"a".repeat(64)).unwrap_err();
        assert!(e.message().contains("64 characters"), "{}", e.message());
    }

    #[test]
    fn identifiers_are_double_quoted() {
        assert_eq!(quote_identifier("slot"), "\"slot\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn create_command_follows_the_server_version() {
        let cmd = |temp, export, v| create_logical_slot_command("s_1", temp, export, v).unwrap();
        assert_eq!(cmd(true, true, 150_004), "CREATE_REPLICATION_SLOT \"s_1\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')");
        assert_eq!(cmd(false, false, 170_000), "CREATE_REPLICATION_SLOT \"s_1\" LOGICAL pgoutput (SNAPSHOT 'nothing')");
        assert_eq!(cmd(true, true, 140_009), "CREATE_REPLICATION_SLOT \"s_1\" TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT");
        assert_eq!(cmd(false, false, 130_000), "CREATE_REPLICATION_SLOT \"s_1\" LOGICAL pgoutput NOEXPORT_SNAPSHOT");
        // Failover slots from 17 on, permanent ones only.
        let with = |temp, failover, v| create_logical_slot_command_with("s_1", temp, false, failover, v).unwrap();
        assert_eq!(with(false, true, 170_000), "CREATE_REPLICATION_SLOT \"s_1\" LOGICAL pgoutput (SNAPSHOT 'nothing', FAILOVER)");
        assert_eq!(with(false, true, 180_006), "CREATE_REPLICATION_SLOT \"s_1\" LOGICAL pgoutput (SNAPSHOT 'nothing', FAILOVER)");
        assert_eq!(with(false, true, 160_015), "CREATE_REPLICATION_SLOT \"s_1\" LOGICAL pgoutput (SNAPSHOT 'nothing')");
        assert_eq!(with(false, true, 140_022), "CREATE_REPLICATION_SLOT \"s_1\" LOGICAL pgoutput NOEXPORT_SNAPSHOT");
        assert_eq!(with(true, true, 170_000), "CREATE_REPLICATION_SLOT \"s_1\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'nothing')");
        let e = create_logical_slot_command("s_1", false, true, 90_603).unwrap_err();
        assert!(e.message().contains("9.6.3"), "{}", e.message());
        let e = create_logical_slot_command("Bad-Name", false, true, 150_000).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
    }

    #[test]
    fn alter_failover_command() {
        assert_eq!(alter_slot_failover_command("s_1").unwrap(), "ALTER_REPLICATION_SLOT \"s_1\" (FAILOVER true)");
        assert_eq!(alter_slot_failover_command("Bad").unwrap_err().kind(), ErrorKind::Config);
    }

    #[test]
    fn drop_command() {
        assert_eq!(drop_slot_command("s", true).unwrap(), "DROP_REPLICATION_SLOT \"s\" WAIT");
        assert_eq!(drop_slot_command("s", false).unwrap(), "DROP_REPLICATION_SLOT \"s\"");
        assert!(drop_slot_command("S", false).is_err());
    }

    #[test]
    fn server_versions_parse() {
        assert_eq!(parse_server_version("15.4 (Debian 15.4-2.pgdg120+1)"), Some(150_004));
        assert_eq!(parse_server_version("16beta1"), Some(160_000));
        assert_eq!(parse_server_version("17devel"), Some(170_000));
        assert_eq!(parse_server_version("13.12"), Some(130_012));
        assert_eq!(parse_server_version("9.6.3"), Some(90_603));
        assert_eq!(parse_server_version(""), None);
        assert_eq!(parse_server_version("banana"), None);
        assert_eq!(version_text(150_004), "15.4");
    }

    fn response(columns: &[&str], row: &[Option<&str>]) -> QueryResponse {
        QueryResponse {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: vec![row.iter().map(|v| v.map(str::to_string)).collect()],
            command_tags: vec![],
        }
    }

    #[test]
    fn identify_system_row_is_read_by_column_name() {
        let r = response(&["systemid", "timeline", "xlogpos", "dbname"], &[Some("7301234567890123456"), Some("1"), Some("0/1A2B3C8"), Some("app")]);
        let id = SystemIdentity::from_response(&r).unwrap();
        assert_eq!(id.systemid, "7301234567890123456");
        assert_eq!(id.timeline, 1);
        assert_eq!(id.xlogpos, Lsn(0x1A2B3C8));
        assert_eq!(id.dbname.as_deref(), Some("app"));

        let bad = response(&["systemid", "timeline", "xlogpos", "dbname"], &[Some("1"), Some("1"), Some("not-an-lsn"), None]);
        let e = SystemIdentity::from_response(&bad).unwrap_err();
        assert!(e.contains("xlogpos"), "{e}");
        let empty = QueryResponse::default();
        assert!(SystemIdentity::from_response(&empty).unwrap_err().contains("0 rows"));
    }

    #[test]
    fn created_slot_row_is_read() {
        let r = response(
            &["slot_name", "consistent_point", "snapshot_name", "output_plugin"],
            &[Some("s"), Some("16/B374D848"), Some("00000003-00000002-1"), Some("pgoutput")],
        );
        let slot = CreatedSlot::from_response(&r).unwrap();
        assert_eq!(slot.consistent_point, Lsn(0x16_B374_D848));
        assert_eq!(slot.snapshot_name.as_deref(), Some("00000003-00000002-1"));
        let r = response(&["slot_name", "consistent_point", "snapshot_name", "output_plugin"], &[Some("s"), Some("0/1"), None, Some("pgoutput")]);
        assert_eq!(CreatedSlot::from_response(&r).unwrap().snapshot_name, None);
    }
}

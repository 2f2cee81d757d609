//! What the restoring role may do, and how a restore adapts when it is not
//! a superuser (managed services: Supabase, RDS, Cloud SQL, Neon).
//!
//! - **Owners.** pg_dump ends an object's block with `ALTER … OWNER TO
//!   role;`. An owner the restoring role can become (`pg_has_role(…, 'SET')`
//!   on PostgreSQL 16+, `'MEMBER'` before) stays exact. Any other owner is
//!   replaced by the restoring role itself: the statement is left out, so the
//!   object keeps the role that created it. `--no-owner` leaves every owner
//!   statement out, as `pg_restore --no-owner` does. What changed is listed
//!   in one warning ([`OwnershipReport`]).
//! - **Default privileges** (`ALTER DEFAULT PRIVILEGES FOR ROLE r`) need
//!   membership in `r`; those of other roles are left out and listed.
//! - **Extensions** that are neither trusted nor creatable without a
//!   superuser are found before the restore starts ([`provider_only_extensions`]).
//!
//! Pure parsing lives here with its tests; the statements run in
//! [`schema`](super::schema).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::Result;
use crate::pg::query_error;

/// The restoring role and the roles it can act as.
#[derive(Debug, Clone)]
pub struct RoleAccess {
    /// `current_user`.
    pub current: String,
    /// Whether it is a superuser (then every role is within reach).
    pub superuser: bool,
    /// Roles it may give objects to (`ALTER … OWNER TO`).
    can_give_to: BTreeSet<String>,
    /// Roles it is a member of (`ALTER DEFAULT PRIVILEGES FOR ROLE`).
    member_of: BTreeSet<String>,
}

impl RoleAccess {
    /// Look the restoring role up on the server of `client`.
    pub async fn load(client: &Client) -> Result<RoleAccess> {
        let row = client
            .query_one(
                "SELECT current_user::text, r.rolsuper, current_setting('server_version_num')::int >= 160000 \
                 FROM pg_roles r WHERE r.rolname = current_user",
                &[],
            )
            .await
            .map_err(query_error("cannot look up the restoring role"))?;
        let (current, superuser, pg16): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
        // PostgreSQL 16 split membership into INHERIT and SET options: giving
        // an object away needs SET on the new owner; before 16, membership.
        let give = if pg16 { "SET" } else { "MEMBER" };
        let rows = client
            .query(&format!("SELECT rolname::text, pg_has_role(current_user, oid, '{give}'), pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles"), &[])
            .await
            .map_err(query_error("cannot list the roles the restoring role belongs to"))?;
        let mut access = RoleAccess { current, superuser, can_give_to: BTreeSet::new(), member_of: BTreeSet::new() };
        for r in rows {
            let name: String = r.get(0);
            if r.get::<_, bool>(1) {
                access.can_give_to.insert(name.clone());
            }
            if r.get::<_, bool>(2) {
                access.member_of.insert(name);
            }
        }
        Ok(access)
    }

    /// A role with every privilege (for tests and superusers).
    pub fn superuser(name: &str) -> RoleAccess {
        RoleAccess { current: name.to_string(), superuser: true, can_give_to: BTreeSet::new(), member_of: BTreeSet::new() }
    }

    /// A role that can give objects to and act for exactly `roles` (and itself).
    pub fn member_of(name: &str, roles: &[&str]) -> RoleAccess {
        let mut set: BTreeSet<String> = roles.iter().map(|r| r.to_string()).collect();
        set.insert(name.to_string());
        RoleAccess { current: name.to_string(), superuser: false, can_give_to: set.clone(), member_of: set }
    }

    /// Whether `ALTER … OWNER TO role` is allowed.
    pub fn can_give_to(&self, role: &str) -> bool {
        self.superuser || self.can_give_to.contains(role)
    }

    /// Whether `ALTER DEFAULT PRIVILEGES FOR ROLE role` is allowed.
    pub fn can_act_for(&self, role: &str) -> bool {
        self.superuser || self.member_of.contains(role)
    }
}

/// How owners are restored.
#[derive(Debug, Clone)]
pub struct OwnerPolicy {
    /// The restoring role.
    pub access: RoleAccess,
    /// `--no-owner`: every object belongs to the restoring role.
    pub no_owner: bool,
}

impl OwnerPolicy {
    /// Whether the scripts run exactly as pg_dump wrote them.
    pub fn exact(&self) -> bool {
        self.access.superuser && !self.no_owner
    }

    /// Whether an owner statement giving an object to `role` is run.
    pub fn keeps_owner(&self, role: &str) -> bool {
        !self.no_owner && self.access.can_give_to(role)
    }
}

/// What the ownership rules changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OwnershipReport {
    /// The role that owns what it could not give away.
    pub restoring_role: String,
    /// Original owner -> objects now owned by the restoring role.
    pub reassigned: BTreeMap<String, Vec<String>>,
    /// `ALTER DEFAULT PRIVILEGES` entries of roles the restoring role is not a member of.
    pub default_privileges_skipped: Vec<String>,
    /// Objects of the platform's schemas left as the platform made them
    /// (restoring into a database the platform set up).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept_by_platform: Vec<String>,
}

impl OwnershipReport {
    /// Whether anything differs from the backup.
    pub fn is_empty(&self) -> bool {
        self.reassigned.is_empty() && self.default_privileges_skipped.is_empty() && self.kept_by_platform.is_empty()
    }

    /// Objects whose owner changed.
    pub fn objects_reassigned(&self) -> usize {
        self.reassigned.values().map(Vec::len).sum()
    }

    /// One line for the warning and the summary.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> =
            self.reassigned.iter().map(|(role, objects)| format!("{} object(s) of {role} ({})", objects.len(), objects.join(", "))).collect();
        let mut s = String::new();
        if !parts.is_empty() {
            s = format!("owned by {} instead of their owner: {}", self.restoring_role, parts.join("; "));
        }
        if !self.default_privileges_skipped.is_empty() {
            parts = vec![format!("default privileges not restored (not a member of the role): {}", self.default_privileges_skipped.join(", "))];
            if !s.is_empty() {
                s.push_str("; ");
            }
            s.push_str(&parts[0]);
        }
        if !self.kept_by_platform.is_empty() {
            if !s.is_empty() {
                s.push_str("; ");
            }
            s.push_str(&format!("{} object(s) of the platform's schemas kept as the platform made them", self.kept_by_platform.len()));
        }
        s
    }

    /// Record an object given to the restoring role instead of `owner`.
    pub fn reassign(&mut self, owner: &str, object: &str) {
        self.reassigned.entry(owner.to_string()).or_default().push(object.to_string());
    }

    /// Add another report's entries.
    pub fn merge(&mut self, other: OwnershipReport) {
        for (role, objects) in other.reassigned {
            self.reassigned.entry(role).or_default().extend(objects);
        }
        self.default_privileges_skipped.extend(other.default_privileges_skipped);
        self.kept_by_platform.extend(other.kept_by_platform);
    }
}

/// A pg_dump owner statement: `ALTER <object> OWNER TO <role>;` on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerStatement {
    /// `TABLE public.t`, `SCHEMA auth`…
    pub object: String,
    /// The role, unquoted.
    pub role: String,
}

/// Parse one line as a pg_dump owner statement.
pub fn owner_statement(line: &str) -> Option<OwnerStatement> {
    let body = line.trim_end().strip_prefix("ALTER ")?.strip_suffix(';')?;
    let at = body.rfind(" OWNER TO ")?;
    let object = body[..at].to_string();
    let role = unquote_ident(&body[at + " OWNER TO ".len()..])?;
    Some(OwnerStatement { object, role })
}

/// `name` or `"quoted ""name"""` → the name; `None` for anything else.
fn unquote_ident(s: &str) -> Option<String> {
    match s.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
        Some(inner) => Some(inner.replace("\"\"", "\"")),
        None if !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '$') => Some(s.to_string()),
        None => None,
    }
}

/// A pg_dump block without the owner statements `keep` rejects; the others
/// stay where they are. An owner statement is only recognised at a
/// statement boundary (after a blank line), as pg_dump writes it, never
/// inside a function body.
pub fn filter_owner_lines(block: &str, mut keep: impl FnMut(&OwnerStatement) -> bool) -> String {
    let mut out = String::with_capacity(block.len());
    let mut previous_blank = false;
    for line in block.lines() {
        let drop = owner_statement(line).filter(|_| previous_blank).is_some_and(|o| !keep(&o));
        if !drop {
            out.push_str(line);
            out.push('\n');
        }
        previous_blank = line.trim().is_empty();
    }
    out
}

/// The `Owner:` of a block's header comment.
pub fn header_owner(block: &str) -> Option<String> {
    let header = block.lines().find(|l| l.starts_with("-- Name: ") || l.starts_with("-- Data for Name: "))?;
    header.split("; ").find_map(|p| p.strip_prefix("Owner: ")).map(|o| o.trim().to_string()).filter(|o| !o.is_empty() && o != "-")
}

/// Rewrite a script (post-data, or pre-data when nothing needs deferring)
/// for `policy`: owner statements it does not keep are left out, and so are
/// `DEFAULT ACL` blocks of roles the restoring role cannot act for.
pub fn rewrite_script(preamble: &str, blocks: &[super::schema::Block], policy: &OwnerPolicy) -> (String, OwnershipReport) {
    let mut report = OwnershipReport { restoring_role: policy.access.current.clone(), ..Default::default() };
    let mut out = preamble.to_string();
    for b in blocks {
        if b.kind == "DEFAULT ACL"
            && let Some(owner) = header_owner(&b.sql)
            && !policy.access.can_act_for(&owner)
        {
            let name = b.sql.lines().find_map(|l| l.strip_prefix("-- Name: ")).and_then(|r| r.split(';').next()).unwrap_or("?");
            report.default_privileges_skipped.push(format!("{name} of {owner}"));
            continue;
        }
        out.push_str(&filter_owner_lines(&b.sql, |o| {
            let keep = policy.keeps_owner(&o.role);
            if !keep && o.role != policy.access.current {
                report.reassign(&o.role, &o.object);
            }
            keep
        }));
    }
    (out, report)
}

/// The extensions a script creates (`CREATE EXTENSION IF NOT EXISTS name …`).
pub fn extensions_created(sql: &str) -> Vec<String> {
    sql.lines()
        .filter_map(|l| l.strip_prefix("CREATE EXTENSION IF NOT EXISTS "))
        .filter_map(|rest| {
            let name = match rest.strip_prefix('"') {
                Some(q) => q.split_once('"').map(|(n, _)| n.to_string())?,
                None => rest.split([' ', ';']).next()?.to_string(),
            };
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// Of `extensions`, those the role of `client` cannot create on its server:
/// not installed there, or needing a superuser without being trusted (the
/// provider must create them). `(name, reason)`. Empty for a superuser.
pub async fn provider_only_extensions(client: &Client, extensions: &[String]) -> Result<Vec<(String, String)>> {
    if extensions.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT e.name, a.name IS NOT NULL, coalesce(v.trusted OR NOT v.superuser, false) \
             FROM unnest($1::text[]) AS e(name) \
             LEFT JOIN pg_available_extensions a ON a.name = e.name \
             LEFT JOIN pg_available_extension_versions v ON v.name = e.name AND v.version = a.default_version \
             WHERE NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
            &[&extensions],
        )
        .await
        .map_err(query_error("cannot list the server's available extensions"))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let (name, available, creatable): (String, bool, bool) = (r.get(0), r.get(1), r.get(2));
            match (available, creatable) {
                (false, _) => Some((name, "not installed on this server".to_string())),
                (true, false) => Some((name, "not trusted: only a superuser (the provider) can create it".to_string())),
                _ => None,
            }
        })
        .collect())
}

/// Try to create each of `extensions` in the new, still empty database of
/// `client`, and roll back: those that fail, with the server's reason.
/// Providers let their admin role create allow-listed extensions that are
/// not trusted (RDS's `rds.allowed_extensions`, Cloud SQL's flags), so the
/// catalog alone cannot tell; this asks the server itself.
pub async fn probe_extensions(client: &Client, extensions: &[String]) -> Result<Vec<(String, String)>> {
    let mut refused = Vec::new();
    for name in extensions {
        let sql = format!("BEGIN; CREATE EXTENSION IF NOT EXISTS {} CASCADE", crate::pg::catalog::quote_ident(name));
        let result = client.batch_execute(&sql).await;
        client.batch_execute("ROLLBACK").await.map_err(query_error("cannot roll back an extension probe"))?;
        if let Err(e) = result {
            refused.push((name.clone(), crate::pg::error_message(&e)));
        }
    }
    Ok(refused)
}

/// `name (reason), …` for messages.
pub fn list_extensions(list: &[(String, String)]) -> String {
    list.iter().map(|(n, why)| format!("{n} ({why})")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::schema::split_blocks;

    #[test]
    fn owner_statements_are_parsed() {
        assert_eq!(
            owner_statement("ALTER TABLE auth.users OWNER TO supabase_auth_admin;"),
            Some(OwnerStatement { object: "TABLE auth.users".into(), role: "supabase_auth_admin".into() })
        );
        assert_eq!(owner_statement("ALTER SCHEMA \"My S\" OWNER TO \"Odd \"\"R\";").unwrap().role, "Odd \"R");
        assert_eq!(owner_statement("ALTER TABLE t ADD COLUMN c int;"), None);
        assert_eq!(owner_statement("ALTER TABLE t OWNER TO x; DROP TABLE y;"), None);
    }

    const PRE: &str = "SET x = 1;\n\n--\n-- Name: auth; Type: SCHEMA; Schema: -; Owner: supabase_admin\n--\n\nCREATE SCHEMA auth;\n\n\nALTER SCHEMA auth OWNER TO supabase_admin;\n\n--\n-- Name: users; Type: TABLE; Schema: auth; Owner: supabase_auth_admin\n--\n\nCREATE TABLE auth.users (id int);\n\n\nALTER TABLE auth.users OWNER TO supabase_auth_admin;\n\n--\n-- Name: f(); Type: FUNCTION; Schema: public; Owner: app\n--\n\nCREATE FUNCTION public.f() RETURNS void AS $$\nBEGIN\nALTER TABLE t OWNER TO nobody;\nEND $$ LANGUAGE plpgsql;\n\n\nALTER FUNCTION public.f() OWNER TO app;\n\n--\n-- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: public; Owner: supabase_admin\n--\n\nALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA public GRANT ALL ON TABLES TO anon;\n\n--\n-- Name: DEFAULT PRIVILEGES FOR SEQUENCES; Type: DEFAULT ACL; Schema: public; Owner: app\n--\n\nALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public GRANT ALL ON SEQUENCES TO anon;\n";

    #[test]
    fn owners_the_role_cannot_become_are_left_out_and_listed() {
        let (pre, blocks) = split_blocks(PRE);
        let policy = OwnerPolicy { access: RoleAccess::member_of("customer", &["supabase_auth_admin", "app"]), no_owner: false };
        let (sql, report) = rewrite_script(&pre, &blocks, &policy);
        assert!(!sql.contains("OWNER TO supabase_admin"), "{sql}");
        assert!(sql.contains("ALTER TABLE auth.users OWNER TO supabase_auth_admin;"));
        assert!(sql.contains("ALTER FUNCTION public.f() OWNER TO app;"));
        // Inside a function body: untouched.
        assert!(sql.contains("ALTER TABLE t OWNER TO nobody;"));
        assert!(!sql.contains("FOR ROLE supabase_admin") && sql.contains("FOR ROLE app"));
        assert_eq!(report.reassigned["supabase_admin"], vec!["SCHEMA auth".to_string()]);
        assert_eq!(report.default_privileges_skipped, vec!["DEFAULT PRIVILEGES FOR TABLES of supabase_admin".to_string()]);
        let d = report.describe();
        assert!(d.contains("owned by customer") && d.contains("SCHEMA auth") && d.contains("default privileges"), "{d}");

        // --no-owner: no owner statement at all, default privileges as allowed.
        let no_owner = OwnerPolicy { no_owner: true, ..policy };
        let (sql, report) = rewrite_script(&pre, &blocks, &no_owner);
        assert!(!sql.contains(" OWNER TO supabase") && !sql.contains("OWNER TO app;"), "{sql}");
        assert_eq!(report.objects_reassigned(), 3);
        // A superuser keeps everything.
        let su = OwnerPolicy { access: RoleAccess::superuser("postgres"), no_owner: false };
        assert!(su.exact());
        let (sql, report) = rewrite_script(&pre, &blocks, &su);
        assert!(report.is_empty());
        assert_eq!(sql.trim_end(), PRE.trim_end());
    }

    #[test]
    fn created_extensions_are_listed() {
        let sql = "CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA extensions;\nCOMMENT ON EXTENSION pgcrypto IS 'x';\nCREATE EXTENSION IF NOT EXISTS \"uuid-ossp\" WITH SCHEMA extensions;\n";
        assert_eq!(extensions_created(sql), vec!["pgcrypto".to_string(), "uuid-ossp".to_string()]);
        assert_eq!(header_owner("--\n-- Name: x; Type: TABLE; Schema: a; Owner: bob\n--\n"), Some("bob".into()));
        assert_eq!(header_owner("--\n-- Name: pgcrypto; Type: EXTENSION; Schema: -; Owner: -\n--\n"), None);
    }
}

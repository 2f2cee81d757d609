//! What the restoring role may do, and how a restore adapts when it is not
//! a superuser (managed services: Supabase, RDS, Cloud SQL, Neon).
//!
//! - **Owners.** pg_dump ends an object's block with `ALTER … OWNER TO
//!   role;`. The restoring role keeps an owner exactly when it can both
//!   become it (`pg_has_role(…, 'SET')` on PostgreSQL 16+, `'MEMBER'`
//!   before: what `ALTER … OWNER TO` checks) and holds its privileges
//!   (`'USAGE'`: loading the rows, building indexes and replaying into an
//!   object need them once it is given away). Any other owner is replaced by
//!   the *nearest* role that qualifies ([`nearest_owner`]): the closest role,
//!   in the membership graph, that already inherits the owner's privileges,
//!   so no one gains rights over the object they did not have; failing
//!   that, the restoring role itself (the statement is left out and the
//!   object keeps the role that created it). On 15 and older membership is
//!   transitive, so such a role only exists on 16+, where a grant may carry
//!   INHERIT without SET. `--no-owner` leaves every owner statement out, as
//!   `pg_restore --no-owner` does. What changed, and to whom, is listed in
//!   one warning ([`OwnershipReport`]).
//! - **Default privileges** (`ALTER DEFAULT PRIVILEGES FOR ROLE r`) need
//!   `r`'s privileges on 16+ (`'USAGE'`: SET alone is refused), membership
//!   before; those of other roles are left out and listed.
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
    /// Roles it may give objects to (`ALTER … OWNER TO`) and still act
    /// through afterwards (it holds their privileges).
    can_give_to: BTreeSet<String>,
    /// Roles it may act for (`ALTER DEFAULT PRIVILEGES FOR ROLE`).
    member_of: BTreeSet<String>,
    /// Role -> its direct members that inherit its privileges.
    heirs: BTreeMap<String, Vec<String>>,
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
        // an object away needs SET on the new owner (membership before);
        // ALTER DEFAULT PRIVILEGES FOR ROLE needs its privileges (USAGE) on
        // 16+, membership before. Keeping an owner also needs its privileges,
        // for everything the restore does to the object afterwards.
        let (give, act) = if pg16 { ("SET", "USAGE") } else { ("MEMBER", "MEMBER") };
        let rows = client
            .query(
                &format!(
                    "SELECT rolname::text, pg_has_role(current_user, oid, '{give}') AND pg_has_role(current_user, oid, 'USAGE'), \
                     pg_has_role(current_user, oid, '{act}') FROM pg_roles"
                ),
                &[],
            )
            .await
            .map_err(query_error("cannot list the roles the restoring role belongs to"))?;
        let mut access = RoleAccess { current, superuser, can_give_to: BTreeSet::new(), member_of: BTreeSet::new(), heirs: BTreeMap::new() };
        for r in rows {
            let name: String = r.get(0);
            if r.get::<_, bool>(1) {
                access.can_give_to.insert(name.clone());
            }
            if r.get::<_, bool>(2) {
                access.member_of.insert(name);
            }
        }
        // Who inherits whose privileges: the grant's INHERIT option on 16+,
        // the member's INHERIT attribute before.
        let inherits = if pg16 { "a.inherit_option" } else { "m.rolinherit" };
        let edges = client
            .query(
                &format!(
                    "SELECT r.rolname::text, m.rolname::text FROM pg_auth_members a \
                     JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member WHERE {inherits}"
                ),
                &[],
            )
            .await
            .map_err(query_error("cannot list role memberships"))?;
        for e in edges {
            access.heirs.entry(e.get(0)).or_default().push(e.get(1));
        }
        Ok(access)
    }

    /// A role with every privilege (for tests and superusers).
    pub fn superuser(name: &str) -> RoleAccess {
        RoleAccess { current: name.to_string(), superuser: true, can_give_to: BTreeSet::new(), member_of: BTreeSet::new(), heirs: BTreeMap::new() }
    }

    /// A role that can give objects to and act for exactly `roles` (and itself).
    pub fn member_of(name: &str, roles: &[&str]) -> RoleAccess {
        let mut set: BTreeSet<String> = roles.iter().map(|r| r.to_string()).collect();
        set.insert(name.to_string());
        RoleAccess { current: name.to_string(), superuser: false, can_give_to: set.clone(), member_of: set, heirs: BTreeMap::new() }
    }

    /// `member` inherits the privileges of `role` (for tests).
    pub fn with_heir(mut self, role: &str, member: &str) -> RoleAccess {
        self.heirs.entry(role.to_string()).or_default().push(member.to_string());
        self
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

    /// The role that owns, after the restore, an object `owner` owned in
    /// the backup: `owner` itself when the restoring role can give it
    /// objects, else [`nearest_owner`], else the restoring role (always
    /// with `--no-owner`).
    pub fn owner_for(&self, owner: &str) -> String {
        if self.no_owner {
            return self.access.current.clone();
        }
        nearest_owner(owner, &self.access.heirs, |r| self.access.can_give_to(r)).unwrap_or_else(|| self.access.current.clone())
    }
}

/// The role nearest to `owner` that the restoring role may give objects to
/// (`can_give_to`), among `owner` and the roles that inherit its privileges
/// (`heirs`: role -> direct members that inherit from it), by the number of
/// memberships between them; ties go to the first name. `None` when no
/// such role exists.
///
/// Only heirs qualify, never roles the owner is a member of: an heir's
/// members already hold every right the owner had over its objects (table
/// owners also bypass row-level security), so giving it the object grants
/// no one anything new, whereas a group the owner belongs to may have
/// members (an API role, say) that never had them.
pub fn nearest_owner(owner: &str, heirs: &BTreeMap<String, Vec<String>>, can_give_to: impl Fn(&str) -> bool) -> Option<String> {
    let mut seen: BTreeSet<&str> = BTreeSet::from([owner]);
    let mut level: Vec<&str> = vec![owner];
    while !level.is_empty() {
        if let Some(found) = level.iter().filter(|r| can_give_to(r)).min() {
            return Some(found.to_string());
        }
        level = level.iter().flat_map(|r| heirs.get(*r).into_iter().flatten()).map(String::as_str).filter(|m| seen.insert(m)).collect();
    }
    None
}

/// What the ownership rules changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OwnershipReport {
    /// The restoring role.
    pub restoring_role: String,
    /// Original owner -> the role that owns them now -> objects.
    pub reassigned: BTreeMap<String, BTreeMap<String, Vec<String>>>,
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
        self.reassigned.values().flat_map(BTreeMap::values).map(Vec::len).sum()
    }

    /// One line for the warning and the summary.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .reassigned
            .iter()
            .flat_map(|(from, to)| to.iter().map(move |(to, objects)| format!("{} object(s) of {from} owned by {to} ({})", objects.len(), objects.join(", "))))
            .collect();
        let mut s = String::new();
        if !parts.is_empty() {
            s = format!("owners not restored (restoring role {}): {}", self.restoring_role, parts.join("; "));
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

    /// Record an object given to `to` instead of `owner`.
    pub fn reassign(&mut self, owner: &str, to: &str, object: &str) {
        self.reassigned.entry(owner.to_string()).or_default().entry(to.to_string()).or_default().push(object.to_string());
    }

    /// Add another report's entries.
    pub fn merge(&mut self, other: OwnershipReport) {
        for (from, to) in other.reassigned {
            for (to, objects) in to {
                self.reassigned.entry(from.clone()).or_default().entry(to).or_default().extend(objects);
            }
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

/// A pg_dump block with each owner statement given the owner `owner`
/// returns for it: left as it is for the same role, rewritten for another,
/// left out for `None`. An owner statement is only recognised at a
/// statement boundary (after a blank line), as pg_dump writes it, never
/// inside a function body.
pub fn rewrite_owner_lines(block: &str, mut owner: impl FnMut(&OwnerStatement) -> Option<String>) -> String {
    let mut out = String::with_capacity(block.len());
    let mut previous_blank = false;
    for line in block.lines() {
        match owner_statement(line).filter(|_| previous_blank) {
            Some(o) => match owner(&o) {
                Some(role) if role == o.role => out.push_str(line),
                Some(role) => out.push_str(&format!("ALTER {} OWNER TO {};", o.object, crate::pg::catalog::quote_ident(&role))),
                None => {
                    previous_blank = false;
                    continue;
                }
            },
            None => out.push_str(line),
        }
        out.push('\n');
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
/// for `policy`: each owner statement gives the object to
/// [`OwnerPolicy::owner_for`] (left out where that is the restoring role),
/// and `DEFAULT ACL` blocks of roles the restoring role cannot act for are
/// left out.
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
        out.push_str(&rewrite_owner_lines(&b.sql, |o| {
            let to = policy.owner_for(&o.role);
            if to != o.role {
                report.reassign(&o.role, &to, &o.object);
            }
            // The restoring role owns what it creates: no statement needed, unless pg_dump wrote it so.
            (!policy.no_owner && (to == o.role || to != policy.access.current)).then_some(to)
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
        assert_eq!(report.reassigned["supabase_admin"]["customer"], vec!["SCHEMA auth".to_string()]);
        assert_eq!(report.default_privileges_skipped, vec!["DEFAULT PRIVILEGES FOR TABLES of supabase_admin".to_string()]);
        let d = report.describe();
        assert!(d.contains("1 object(s) of supabase_admin owned by customer (SCHEMA auth)") && d.contains("default privileges"), "{d}");

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
    fn an_owner_out_of_reach_goes_to_the_nearest_heir_the_role_can_give_to() {
        // owner <- lead <- dev <- intern (each inherits from the one before); ops also inherits from owner.
        let heirs: BTreeMap<String, Vec<String>> = [("owner", vec!["lead", "ops"]), ("lead", vec!["dev"]), ("dev", vec!["intern"]), ("group", vec!["owner"])]
            .into_iter()
            .map(|(r, m)| (r.to_string(), m.into_iter().map(str::to_string).collect()))
            .collect();
        let nearest = |reach: &[&str]| nearest_owner("owner", &heirs, |r| reach.contains(&r));
        // The owner itself, when within reach: exact.
        assert_eq!(nearest(&["owner", "lead"]), Some("owner".into()));
        // The closest heir wins over farther ones; ties go to the first name.
        assert_eq!(nearest(&["dev", "intern"]), Some("dev".into()));
        assert_eq!(nearest(&["intern", "ops"]), Some("ops".into()));
        assert_eq!(nearest(&["ops", "lead"]), Some("lead".into()));
        // A group the owner belongs to is never chosen (its members never had the owner's rights).
        assert_eq!(nearest(&["group"]), None);
        // Unknown owners (not on this server) and cycles end.
        assert_eq!(nearest_owner("ghost", &heirs, |_| true), Some("ghost".into()));
        assert_eq!(nearest_owner("ghost", &heirs, |_| false), None);
        let cycle: BTreeMap<String, Vec<String>> = [("a".to_string(), vec!["b".to_string()]), ("b".to_string(), vec!["a".to_string()])].into();
        assert_eq!(nearest_owner("a", &cycle, |_| false), None);
    }

    #[test]
    fn objects_of_an_owner_out_of_reach_are_given_to_the_nearest_role_and_listed() {
        let (pre, blocks) = split_blocks(PRE);
        // The role can give objects to app_dev (an heir of supabase_auth_admin) and app, not to the platform's roles.
        let access = RoleAccess::member_of("customer", &["app_dev", "app"]).with_heir("supabase_auth_admin", "app_dev");
        let policy = OwnerPolicy { access, no_owner: false };
        assert_eq!(policy.owner_for("supabase_auth_admin"), "app_dev");
        assert_eq!(policy.owner_for("supabase_admin"), "customer");
        assert_eq!(policy.owner_for("app"), "app");
        let (sql, report) = rewrite_script(&pre, &blocks, &policy);
        assert!(sql.contains("\nALTER TABLE auth.users OWNER TO \"app_dev\";\n"), "{sql}");
        assert!(!sql.contains("OWNER TO supabase_"), "{sql}");
        assert!(sql.contains("ALTER FUNCTION public.f() OWNER TO app;"));
        assert_eq!(report.reassigned["supabase_auth_admin"]["app_dev"], vec!["TABLE auth.users".to_string()]);
        assert_eq!(report.reassigned["supabase_admin"]["customer"], vec!["SCHEMA auth".to_string()]);
        let d = report.describe();
        assert!(d.starts_with("owners not restored (restoring role customer): "), "{d}");
        assert!(d.contains("1 object(s) of supabase_auth_admin owned by app_dev (TABLE auth.users)"), "{d}");
        assert!(d.contains("1 object(s) of supabase_admin owned by customer (SCHEMA auth)"), "{d}");
        // --no-owner: no owner statement, everything the restoring role's.
        let no_owner = OwnerPolicy { no_owner: true, ..policy };
        assert_eq!(no_owner.owner_for("supabase_auth_admin"), "customer");
        let (sql, _) = rewrite_script(&pre, &blocks, &no_owner);
        assert!(!sql.contains("OWNER TO supabase") && !sql.contains("OWNER TO \"app_dev\"") && !sql.contains("OWNER TO app;"), "{sql}");
    }

    #[test]
    fn created_extensions_are_listed() {
        let sql = "CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA extensions;\nCOMMENT ON EXTENSION pgcrypto IS 'x';\nCREATE EXTENSION IF NOT EXISTS \"uuid-ossp\" WITH SCHEMA extensions;\n";
        assert_eq!(extensions_created(sql), vec!["pgcrypto".to_string(), "uuid-ossp".to_string()]);
        assert_eq!(header_owner("--\n-- Name: x; Type: TABLE; Schema: a; Owner: bob\n--\n"), Some("bob".into()));
        assert_eq!(header_owner("--\n-- Name: pgcrypto; Type: EXTENSION; Schema: -; Owner: -\n--\n"), None);
    }
}

//! What `setup` does to the database: the migrations, embedded in the binary, and the grants of
//! the roles the consumer and `serve` log in as.

use super::{ImageIndex, IndexError};
use futures::future::BoxFuture;
use sqlx::Row;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use std::borrow::Cow;

/// The SQL migrations in `migrations/`, compiled into the binary: (version, description, SQL).
///
/// Listed by hand rather than found by sqlx's `migrate!` macro: the macro alone cost every release
/// build a second, host-side build of sqlx, rustls and aws-lc (about 50 s of a cold build's CPU).
/// A unit test keeps this list and the directory in step.
const MIGRATIONS: [(i64, &str, &str); 3] = [
    (
        1,
        "images",
        include_str!("../../migrations/0001_images.sql"),
    ),
    (
        2,
        "browsing",
        include_str!("../../migrations/0002_browsing.sql"),
    ),
    (
        3,
        "erasures",
        include_str!("../../migrations/0003_erasures.sql"),
    ),
];

/// The embedded migrations as sqlx runs them; checksums are sqlx's own (SHA-384 of the SQL), so
/// databases migrated by earlier builds stay valid.
#[derive(Debug)]
struct Embedded;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

async fn migrator() -> Result<Migrator, IndexError> {
    Migrator::new(Embedded)
        .await
        .map_err(|e| IndexError::Other(e.to_string()))
}

impl ImageIndex {
    /// Applies pending migrations; a no-op when up to date.
    pub async fn migrate(&self) -> Result<(), IndexError> {
        migrator()
            .await?
            .run(&self.pool)
            .await
            .map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(e) => self.err(e),
                other => IndexError::Other(other.to_string()),
            })
    }

    /// Migrations this binary carries that the database has not applied (by description).
    pub async fn pending_migrations(&self) -> Result<Vec<String>, IndexError> {
        let table_exists: bool =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| self.err(e))?;
        let applied: Vec<i64> = if table_exists {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.err(e))?
        } else {
            Vec::new()
        };
        Ok(migrator()
            .await?
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .map(|m| format!("{:04}_{}", m.version, m.description))
            .collect())
    }

    /// How `role` stands against what `access` needs: what it lacks and what it holds beyond it,
    /// as PostgreSQL itself answers (`has_table_privilege` counts grants to PUBLIC, membership
    /// and ownership too). `None` when the role does not exist.
    pub async fn audit_role(
        &self,
        role: &str,
        access: Access,
    ) -> Result<Option<RoleAudit>, IndexError> {
        let row = sqlx::query(
            "SELECT r.rolsuper,
                    pg_get_userbyid(c.relowner) = r.rolname AS owns_index,
                    has_schema_privilege(r.rolname, current_schema(), 'USAGE') AS schema_usage,
                    has_schema_privilege(r.rolname, current_schema(), 'CREATE') AS schema_create,
                    has_table_privilege(r.rolname, '_sqlx_migrations', 'SELECT') AS reads_migrations,
                    array(SELECT p FROM unnest($2::text[]) AS p
                          WHERE has_table_privilege(r.rolname, 'images', p)) AS held,
                    array(SELECT t || ' ' || p FROM unnest($3::text[]) AS t, unnest($2::text[]) AS p
                          WHERE has_table_privilege(r.rolname, to_regclass(t)::oid, p))
                        AS companions_held
             FROM pg_roles r, pg_class c
             WHERE r.rolname = $1 AND c.oid = 'images'::regclass",
        )
        .bind(role)
        .bind(TABLE_PRIVILEGES.map(String::from).to_vec())
        .bind(COMPANION_TABLES.map(String::from).to_vec())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let get = |name: &str| row.try_get::<bool, _>(name).map_err(|e| self.err(e));
        let held: Vec<String> = row.try_get("held").map_err(|e| self.err(e))?;
        let mut audit = RoleAudit::default();
        for privilege in access.table_privileges() {
            if !held.iter().any(|h| h == privilege) {
                audit.missing.push(format!("{privilege} on images"));
            }
        }
        if !get("schema_usage")? {
            audit.missing.push("USAGE on the schema".into());
        }
        if !get("reads_migrations")? {
            audit.missing.push("SELECT on _sqlx_migrations".into());
        }
        for privilege in &held {
            if !access.table_privileges().contains(&privilege.as_str()) {
                audit.excess.push(format!("{privilege} on images"));
            }
        }
        // The erasure tables, as closely: a consumer that could write an erasure could undo
        // one, and an eraser that cannot record one cannot erase.
        let companions_held: Vec<String> =
            row.try_get("companions_held").map_err(|e| self.err(e))?;
        for table in COMPANION_TABLES {
            let granted = access.companion_privileges(table);
            for privilege in TABLE_PRIVILEGES {
                let holds = companions_held.contains(&format!("{table} {privilege}"));
                match (granted.contains(&privilege), holds) {
                    (true, false) => audit.missing.push(format!("{privilege} on {table}")),
                    (false, true) => audit.excess.push(format!("{privilege} on {table}")),
                    _ => {}
                }
            }
        }
        if get("schema_create")? {
            audit.excess.push("CREATE on the schema".into());
        }
        if get("owns_index")? {
            audit.excess.push("ownership of images".into());
        }
        if get("rolsuper")? {
            audit.excess.push("superuser".into());
        }
        Ok(Some(audit))
    }

    /// Grants `role` what `access` needs and revokes the rest that can be revoked directly.
    /// Ownership, superuser and membership of a stronger role stay: [`Self::audit_role`] still
    /// reports them.
    pub async fn grant_role(&self, role: &str, access: Access) -> Result<(), IndexError> {
        // `role` is a checked identifier (config::role_name), so quoting it is enough.
        let role = format!("\"{role}\"");
        let granted = access.table_privileges().join(", ");
        let revoked: Vec<&str> = TABLE_PRIVILEGES
            .into_iter()
            .filter(|p| !access.table_privileges().contains(p))
            .collect();
        // The schema the migrations created the index in: the connection's current one.
        let schema: String = sqlx::query_scalar("SELECT quote_ident(current_schema())")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let statements = [
            format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
            format!("REVOKE CREATE ON SCHEMA {schema} FROM {role}"),
            format!("GRANT {granted} ON images TO {role}"),
            format!("REVOKE {} ON images FROM {role}", revoked.join(", ")),
            format!("GRANT SELECT ON _sqlx_migrations TO {role}"),
        ];
        // The erasure tables: the consumer reads the erasures and leaves its leftovers; the
        // eraser keeps the records. Nobody but the owner may change what an erasure says.
        let companions = COMPANION_TABLES.iter().flat_map(|table| {
            let granted = access.companion_privileges(table);
            let mut both = vec![format!("REVOKE ALL ON {table} FROM {role}")];
            if !granted.is_empty() {
                both.push(format!("GRANT {} ON {table} TO {role}", granted.join(", ")));
            }
            both
        });
        let statements: Vec<String> = statements.into_iter().chain(companions).collect();
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        for statement in statements {
            sqlx::query(&statement)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))
    }
}

/// Every privilege a role can hold on a table.
const TABLE_PRIVILEGES: [&str; 7] = [
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
];

/// The tables beside `images` (migrations/0003_erasures.sql).
const COMPANION_TABLES: [&str; 3] = ["erasures", "erasure_leftovers", "dlq_replays"];

/// What an identity may do to the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The consumer: read and insert rows, nothing else.
    ReadInsert,
    /// `status`, `verify`: read rows, and the erasure records (verify knows erasures).
    Read,
    /// `serve`: read rows of `images`, nothing else (not the erasure records either).
    Serve,
    /// `erase` and `retain`: read and delete rows, and record each erasure.
    Erase,
}

impl Access {
    pub fn table_privileges(self) -> &'static [&'static str] {
        match self {
            Access::ReadInsert => &["SELECT", "INSERT"],
            Access::Read | Access::Serve => &["SELECT"],
            Access::Erase => &["SELECT", "DELETE"],
        }
    }

    /// What it may do to the erasure tables: the consumer reads erasures (to store no erased
    /// image), leaves leftovers and records its replays (`dlq replay` runs as the consumer).
    fn companion_privileges(self, table: &str) -> &'static [&'static str] {
        match (self, table) {
            (Access::ReadInsert, "erasures") => &["SELECT"],
            (Access::ReadInsert, "erasure_leftovers") => &["SELECT", "INSERT"],
            (Access::ReadInsert, "dlq_replays") => &["SELECT", "INSERT"],
            (Access::Read, "erasures" | "erasure_leftovers") => &["SELECT"],
            (Access::Erase, "erasures") => &["SELECT", "INSERT", "UPDATE"],
            (Access::Erase, "erasure_leftovers") => &["SELECT", "DELETE"],
            _ => &[],
        }
    }
}

/// How a role stands against what its [`Access`] needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleAudit {
    pub missing: Vec<String>,
    pub excess: Vec<String>,
}

impl RoleAudit {
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.excess.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_migrations_is_embedded_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .map(|p| {
                let name = p.file_stem().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&p).unwrap())
            })
            .collect();
        files.sort();
        let embedded: Vec<(String, String)> = MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                (format!("{version:04}_{description}"), sql.to_string())
            })
            .collect();
        assert_eq!(embedded, files);
    }

    #[test]
    fn only_the_eraser_may_delete_rows_or_change_the_erasures() {
        let writes = ["INSERT", "UPDATE", "DELETE", "TRUNCATE"];
        for access in [Access::ReadInsert, Access::Read] {
            assert!(!access.table_privileges().contains(&"DELETE"), "{access:?}");
            let erasures = access.companion_privileges("erasures");
            assert!(
                writes.iter().all(|w| !erasures.contains(w)),
                "{access:?} may write erasures: {erasures:?}"
            );
            let leftovers = access.companion_privileges("erasure_leftovers");
            assert!(!leftovers.contains(&"DELETE"), "{access:?}");
        }
        assert!(Access::Erase.table_privileges().contains(&"DELETE"));
        assert!(!Access::Erase.table_privileges().contains(&"INSERT"));
        for needed in ["INSERT", "UPDATE"] {
            assert!(
                Access::Erase
                    .companion_privileges("erasures")
                    .contains(&needed)
            );
        }
        // Nobody may delete an erasure's record: it is kept for good.
        for access in [Access::ReadInsert, Access::Read, Access::Erase] {
            assert!(!access.companion_privileges("erasures").contains(&"DELETE"));
        }
    }
}

//! Which statements are audited (`[audit.filter]`). Statements whose
//! verdict is not `allowed` are always audited; the filter applies to the
//! rest.

use super::config::FilterConfig;
use crate::policy::rules::glob;

#[derive(Debug, Clone)]
pub struct StatementFilter {
    all_classes: bool,
    classes: Vec<String>,
    exclude_classes: Vec<String>,
    users: Vec<String>,
    exclude_users: Vec<String>,
    databases: Vec<String>,
    exclude_databases: Vec<String>,
    tables: Vec<String>,
    exclude_tables: Vec<String>,
}

fn upper(v: &[String]) -> Vec<String> {
    v.iter().map(|c| c.to_ascii_uppercase()).collect()
}

/// `users` matches `public.users` and `x.users`; `public.*` matches by schema.
fn table_matches(pattern: &str, table: &str) -> bool {
    if pattern.contains('.') {
        glob(pattern, table)
    } else {
        glob(pattern, table.rsplit('.').next().unwrap_or(table))
    }
}

impl StatementFilter {
    pub fn new(c: &FilterConfig) -> StatementFilter {
        let classes = upper(&c.classes);
        StatementFilter {
            all_classes: classes.iter().any(|c| c == "ALL"),
            classes,
            exclude_classes: upper(&c.exclude_classes),
            users: c.users.clone(),
            exclude_users: c.exclude_users.clone(),
            databases: c.databases.clone(),
            exclude_databases: c.exclude_databases.clone(),
            tables: c.tables.clone(),
            exclude_tables: c.exclude_tables.clone(),
        }
    }

    /// Is this session (user, database) audited at all?
    pub fn wants_session(&self, user: &str, database: &str) -> bool {
        let listed = |v: &Vec<String>, x: &str| v.iter().any(|p| glob(p, x));
        (self.users.is_empty() || listed(&self.users, user))
            && !listed(&self.exclude_users, user)
            && (self.databases.is_empty() || listed(&self.databases, database))
            && !listed(&self.exclude_databases, database)
    }

    /// [`Self::wants_statement`] for `class` when no table pattern is
    /// configured (the tables then cannot matter); `None` otherwise.
    pub fn wants_class(&self, class: &str) -> Option<bool> {
        (self.tables.is_empty() && self.exclude_tables.is_empty())
            .then(|| self.wants_statement(class, &[]))
    }

    /// Is an allowed statement of `class` touching `tables` audited (the
    /// session already passed [`Self::wants_session`])?
    pub fn wants_statement(&self, class: &str, tables: &[String]) -> bool {
        let class_ok = (self.all_classes || self.classes.iter().any(|c| c == class))
            && !self.exclude_classes.iter().any(|c| c == class);
        let any = |pats: &Vec<String>| {
            tables
                .iter()
                .any(|t| pats.iter().any(|p| table_matches(p, t)))
        };
        class_ok && (self.tables.is_empty() || any(&self.tables)) && !any(&self.exclude_tables)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_audit_writes_ddl_and_role_only() {
        let f = StatementFilter::new(&FilterConfig::default());
        assert!(f.wants_statement("WRITE", &[]));
        assert!(f.wants_statement("DDL", &[]));
        assert!(f.wants_statement("ROLE", &[]));
        assert!(!f.wants_statement("READ", &["public.t".into()]));
        assert!(!f.wants_statement("MISC", &[]));
        assert!(f.wants_session("anyone", "anydb"));
    }

    #[test]
    fn includes_and_excludes_by_class_user_database_and_table() {
        let f = StatementFilter::new(&FilterConfig {
            classes: vec!["all".into()],
            exclude_classes: vec!["misc".into()],
            users: vec!["app*".into()],
            exclude_users: vec!["app_batch".into()],
            databases: vec![],
            exclude_databases: vec!["scratch".into()],
            tables: vec!["users".into(), "billing.*".into()],
            exclude_tables: vec!["billing.tmp_*".into()],
        });
        assert!(f.wants_session("app", "prod"));
        assert!(!f.wants_session("app_batch", "prod"));
        assert!(!f.wants_session("admin", "prod"));
        assert!(!f.wants_session("app", "scratch"));
        assert!(f.wants_statement("READ", &["public.users".into()]));
        assert!(f.wants_statement("WRITE", &["billing.invoices".into()]));
        assert!(!f.wants_statement("WRITE", &["billing.tmp_x".into(), "users".into()]));
        assert!(!f.wants_statement("READ", &["public.orders".into()]));
        assert!(!f.wants_statement("MISC", &["users".into()]));
    }
}

//! The context plan: which settings pgward pins for a session, compiled from
//! `[context]`, rendered per session from its identity.

use std::collections::BTreeMap;

use super::config::ContextConfig;
use super::template::{Template, Values};

type Settings = Vec<(String, Template)>;

/// Compiled `[context]` settings.
#[derive(Debug, Clone, Default)]
pub struct ContextPlan {
    global: Settings,
    users: BTreeMap<String, Settings>,
    databases: BTreeMap<String, Settings>,
}

fn compile(
    cfg: &ContextConfig,
    table: &str,
    map: &BTreeMap<String, String>,
) -> Result<Settings, String> {
    let guard = cfg.protection();
    map.iter()
        .map(|(name, value)| {
            let lower = name.to_ascii_lowercase();
            if !lower.contains('.') || lower.starts_with('.') || lower.ends_with('.') {
                return Err(format!(
                    "{table}: {name:?} is not a custom setting name (use prefix.name, e.g. app.tenant_id)"
                ));
            }
            if !guard.protects(&lower) {
                return Err(format!(
                    "{table}: {name:?} is pinned but not covered by context.protect, so clients could overwrite it"
                ));
            }
            let t = Template::parse(value).map_err(|e| format!("{table}.{name:?}: {e}"))?;
            Ok((lower, t))
        })
        .collect()
}

impl ContextPlan {
    pub fn compile(cfg: &ContextConfig) -> Result<ContextPlan, String> {
        let mut plan = ContextPlan {
            global: compile(cfg, "context", &cfg.settings)?,
            ..ContextPlan::default()
        };
        for (user, m) in &cfg.users {
            plan.users.insert(
                user.clone(),
                compile(cfg, &format!("context.users.{user}"), m)?,
            );
        }
        for (db, m) in &cfg.databases {
            plan.databases.insert(
                db.clone(),
                compile(cfg, &format!("context.databases.{db}"), m)?,
            );
        }
        Ok(plan)
    }

    /// The settings for a session of `user` on `database`, rendered. A
    /// per-user value wins over a per-database one, which wins over a global
    /// one. `Err` names the setting and the missing value.
    pub fn render(
        &self,
        user: &str,
        database: &str,
        values: &Values<'_>,
    ) -> Result<Vec<(String, String)>, String> {
        let mut merged: BTreeMap<&str, &Template> = BTreeMap::new();
        let layers = [
            Some(&self.global),
            self.databases.get(database),
            self.users.get(user),
        ];
        for layer in layers.into_iter().flatten() {
            for (name, t) in layer {
                merged.insert(name, t);
            }
        }
        merged
            .into_iter()
            .map(|(name, t)| {
                t.render(values)
                    .map(|v| (name.to_string(), v))
                    .map_err(|missing| {
                        format!("{name} needs {{{missing}}}, which this session does not have")
                    })
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.global.is_empty() && self.users.is_empty() && self.databases.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> ContextConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn layers_merge_user_over_database_over_global() {
        let c = cfg(r#"
"app.current_service" = "{user}"
"app.region" = "eu"
[users.billing_svc]
"app.current_service" = "billing"
[databases.reports]
"app.region" = "us"
"#);
        let plan = ContextPlan::compile(&c).unwrap();
        let v = Values {
            user: "billing_svc",
            database: "reports",
            ..Values::default()
        };
        assert_eq!(
            plan.render("billing_svc", "reports", &v).unwrap(),
            vec![
                ("app.current_service".to_string(), "billing".to_string()),
                ("app.region".to_string(), "us".to_string())
            ]
        );
        let v = Values {
            user: "web",
            database: "shop",
            ..Values::default()
        };
        assert_eq!(
            plan.render("web", "shop", &v).unwrap(),
            vec![
                ("app.current_service".to_string(), "web".to_string()),
                ("app.region".to_string(), "eu".to_string())
            ]
        );
    }

    #[test]
    fn unprotected_or_malformed_names_are_config_errors() {
        let e = ContextPlan::compile(&cfg(r#""work_mem" = "1MB""#)).unwrap_err();
        assert!(e.contains("not a custom setting name"), "{e}");
        let e = ContextPlan::compile(&cfg(r#""tenant.id" = "x""#)).unwrap_err();
        assert!(e.contains("not covered by context.protect"), "{e}");
        let e = ContextPlan::compile(&cfg(r#""app.x" = "{bogus}""#)).unwrap_err();
        assert!(e.contains("unknown template variable"), "{e}");
        let ok = cfg("protect = [\"tenant.*\"]\n\"tenant.id\" = \"x\"");
        assert!(ContextPlan::compile(&ok).is_ok());
    }

    #[test]
    fn a_missing_claim_is_named() {
        let plan = ContextPlan::compile(&cfg(r#""app.tenant_id" = "{jwt.org_id}""#)).unwrap();
        let e = plan.render("u", "d", &Values::default()).unwrap_err();
        assert_eq!(
            e,
            "app.tenant_id needs {jwt.org_id}, which this session does not have"
        );
    }
}

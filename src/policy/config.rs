//! The `[policy]` table of pgward's configuration (serde). Every key is
//! documented in `policy.example.toml`. Unknown keys are errors, so a typo
//! never silently disables a rule.

use serde::Deserialize;

/// Global enforcement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Blocking rules block.
    #[default]
    Enforce,
    /// Nothing is blocked; what would have been blocked is reported as
    /// `Verdict::Monitored`.
    Monitor,
    /// The policy is not evaluated at all: pgward is a plain relay. For
    /// measuring the relay alone, or a deliberate emergency bypass.
    Off,
}

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Block,
    /// Per-rule monitor mode: let it through, report it.
    Monitor,
    /// Built-in rule: disabled. Custom rule: an exemption — a statement it
    /// matches is allowed even if other rules (except `unparsed`) match.
    Allow,
}

/// `on_unparsed`: default action of the `unparsed` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnUnparsed {
    #[default]
    Block,
    Allow,
}

/// Rule profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Default,
    /// Also blocks dynamic SQL (DO, CREATE FUNCTION/PROCEDURE, CREATE RULE).
    Strict,
}

/// Which tables a custom rule's `tables` globs are matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Tables read or written.
    #[default]
    Any,
    Read,
    /// Tables written, truncated or dropped.
    Write,
}

/// Who a rule applies to. Empty lists mean "anyone"; `except_*` lists
/// exempt. Users, databases and applications accept `*`/`?` globs.
/// (The same keys appear inline in each rule table; serde cannot combine
/// `flatten` with `deny_unknown_fields`.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeConfig {
    pub users: Vec<String>,
    pub databases: Vec<String>,
    pub applications: Vec<String>,
    pub client_cidrs: Vec<String>,
    pub except_users: Vec<String>,
    pub except_databases: Vec<String>,
    pub except_applications: Vec<String>,
    pub except_client_cidrs: Vec<String>,
}

/// Settings of one built-in rule (`[policy.rules.<id>]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BuiltinRuleConfig {
    /// Defaults: see [`crate::policy::rules::BUILTIN_RULES`].
    pub action: Option<Action>,
    /// Replaces the WHAT of `pgward: <WHAT> blocked by rule "<id>"`.
    pub message: Option<String>,
    pub hint: Option<String>,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub databases: Vec<String>,
    #[serde(default)]
    pub applications: Vec<String>,
    #[serde(default)]
    pub client_cidrs: Vec<String>,
    #[serde(default)]
    pub except_users: Vec<String>,
    #[serde(default)]
    pub except_databases: Vec<String>,
    #[serde(default)]
    pub except_applications: Vec<String>,
    #[serde(default)]
    pub except_client_cidrs: Vec<String>,
}

/// `[policy.rules]`: one optional table per built-in rule.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BuiltinRules {
    pub truncate: Option<BuiltinRuleConfig>,
    pub delete_without_where: Option<BuiltinRuleConfig>,
    pub update_without_where: Option<BuiltinRuleConfig>,
    pub tautological_where: Option<BuiltinRuleConfig>,
    pub drop: Option<BuiltinRuleConfig>,
    pub dynamic_sql: Option<BuiltinRuleConfig>,
    pub unparsed: Option<BuiltinRuleConfig>,
    pub function_call: Option<BuiltinRuleConfig>,
    pub context_spoofing: Option<BuiltinRuleConfig>,
}

/// One `[[policy.custom]]` rule. It matches a statement when every
/// criterion given matches (at least one of `kinds`, `tables`, `functions`
/// is required).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CustomRuleConfig {
    pub id: String,
    #[serde(default)]
    pub kinds: Vec<String>,
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub access: Access,
    #[serde(default)]
    pub functions: Vec<String>,
    pub action: Action,
    pub message: Option<String>,
    pub hint: Option<String>,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub databases: Vec<String>,
    #[serde(default)]
    pub applications: Vec<String>,
    #[serde(default)]
    pub client_cidrs: Vec<String>,
    #[serde(default)]
    pub except_users: Vec<String>,
    #[serde(default)]
    pub except_databases: Vec<String>,
    #[serde(default)]
    pub except_applications: Vec<String>,
    #[serde(default)]
    pub except_client_cidrs: Vec<String>,
}

fn default_cache_entries() -> usize {
    10_000
}

fn default_schemas() -> Vec<String> {
    vec!["public".to_string()]
}

/// The `[policy]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub on_unparsed: OnUnparsed,
    #[serde(default)]
    pub profile: Profile,
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// Schemas an unqualified table name is assumed to live in when
    /// matching `tables` globs (pgward does not know the session's
    /// search_path).
    #[serde(default = "default_schemas")]
    pub default_schemas: Vec<String>,
    /// FunctionCall messages allowed despite the `function_call` rule:
    /// built-in function names (e.g. the `lo_*` large-object functions libpq
    /// uses) or numeric OIDs, resolved when the policy loads.
    #[serde(default)]
    pub function_call_allow: Vec<String>,
    #[serde(default)]
    pub rules: BuiltinRules,
    #[serde(default)]
    pub custom: Vec<CustomRuleConfig>,
    /// `[[policy.soft_delete]]`: tables whose DELETEs become UPDATEs.
    #[serde(default)]
    pub soft_delete: Vec<super::soft_delete::SoftDeleteConfig>,
    /// Filled from the `[context]` table (protected settings, role guard).
    #[serde(skip)]
    pub context: super::context::ContextProtection,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            mode: Mode::default(),
            on_unparsed: OnUnparsed::default(),
            profile: Profile::default(),
            cache_entries: default_cache_entries(),
            default_schemas: default_schemas(),
            function_call_allow: Vec::new(),
            rules: BuiltinRules::default(),
            custom: Vec::new(),
            soft_delete: Vec::new(),
            context: Default::default(),
        }
    }
}

impl PolicyConfig {
    /// Parse the *contents* of a `[policy]` table (keys at top level). The
    /// error text carries toml's line and column.
    pub fn from_toml_str(s: &str) -> Result<PolicyConfig, super::PolicyError> {
        toml::from_str(s).map_err(|e| super::PolicyError::Toml(e.to_string()))
    }
}

macro_rules! scope_of {
    ($t:ty) => {
        impl $t {
            /// The rule's scoping keys.
            pub fn scope(&self) -> ScopeConfig {
                ScopeConfig {
                    users: self.users.clone(),
                    databases: self.databases.clone(),
                    applications: self.applications.clone(),
                    client_cidrs: self.client_cidrs.clone(),
                    except_users: self.except_users.clone(),
                    except_databases: self.except_databases.clone(),
                    except_applications: self.except_applications.clone(),
                    except_client_cidrs: self.except_client_cidrs.clone(),
                }
            }
        }
    };
}
scope_of!(BuiltinRuleConfig);
scope_of!(CustomRuleConfig);

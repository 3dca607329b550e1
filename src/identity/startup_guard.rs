//! Startup-packet parameters are settings too: `app.tenant_id=t2` in the
//! startup packet, or `options=-c app.tenant_id=t2`, would become the
//! session's *reset* value — what `RESET` falls back to. pgward refuses such
//! connections (42501) rather than silently rewriting the packet.

use crate::policy::context::{ContextProtection, IdentityKind};

/// Startup keys that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// The first protected setting the startup parameters write, if any.
pub fn forbidden_startup_setting(
    params: &[(String, String)],
    guard: &ContextProtection,
    kind: IdentityKind,
) -> Option<String> {
    for (key, value) in params {
        let key = key.to_ascii_lowercase();
        if key == "options" {
            for name in option_settings(value) {
                if guard.forbidden(&name, kind) {
                    return Some(format!("options: -c {name}"));
                }
            }
        } else if !NOT_SETTINGS.contains(&key.as_str()) && guard.forbidden(&key, kind) {
            return Some(key);
        }
    }
    None
}

/// Split `options` as the server does (pg_split_opts: whitespace separates,
/// a backslash escapes the next character).
fn split_opts(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_whitespace() {
            if in_word {
                out.push(std::mem::take(&mut cur));
                in_word = false;
            }
            continue;
        }
        in_word = true;
        if c == '\\' {
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else {
            cur.push(c);
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// Setting names written by `-c name=value`, `-cname=value` and
/// `--name=value` (dashes in the name count as underscores, as in the server).
fn option_settings(options: &str) -> Vec<String> {
    let args = split_opts(options);
    let mut names = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let assignment = if let Some(rest) = a.strip_prefix("--") {
            Some(rest.to_string())
        } else if a == "-c" {
            i += 1;
            args.get(i).cloned()
        } else {
            a.strip_prefix("-c").map(str::to_string)
        };
        if let Some(assign) = assignment {
            let name = assign.split('=').next().unwrap_or("");
            names.push(name.replace('-', "_").to_ascii_lowercase());
        }
        i += 1;
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(params: &[(&str, &str)], kind: IdentityKind) -> Option<String> {
        let p: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        forbidden_startup_setting(&p, &ContextProtection::default(), kind)
    }

    #[test]
    fn protected_startup_parameters_and_options_are_found() {
        let user = IdentityKind::PostgresUser;
        assert_eq!(
            check(&[("App.Tenant_Id", "t2")], user).as_deref(),
            Some("app.tenant_id")
        );
        assert!(check(&[("options", "-c app.tenant_id=t2")], user).is_some());
        assert!(check(&[("options", "-capp.tenant_id=t2")], user).is_some());
        assert!(check(&[("options", "--app.tenant-id=t2")], user).is_some());
        assert!(check(&[("options", "-c work_mem=1MB -c APP.x=y")], user).is_some());
        assert!(
            check(&[("options", "-c\\ app.x=y")], user).is_none(),
            "escaped space: name is ' app.x'"
        );
        assert!(check(&[("role", "postgres")], IdentityKind::Jwt).is_some());
        assert!(check(
            &[("options", "-c role=postgres")],
            IdentityKind::Certificate
        )
        .is_some());
    }

    #[test]
    fn ordinary_startup_parameters_pass() {
        let user = IdentityKind::PostgresUser;
        assert!(check(
            &[
                ("user", "app"),
                ("database", "app"),
                ("application_name", "psql"),
                ("options", "-c work_mem=64MB")
            ],
            user
        )
        .is_none());
        assert!(check(&[("role", "reporting")], user).is_none());
        assert!(check(&[("options", "-c")], user).is_none());
    }

    #[test]
    fn options_split_like_the_server() {
        assert_eq!(
            split_opts("  -c a=b\\ c   -c d=e "),
            vec!["-c", "a=b c", "-c", "d=e"]
        );
        assert_eq!(
            option_settings("-c a=1 --b-c=2 -cd=3"),
            vec!["a", "b_c", "d"]
        );
    }
}

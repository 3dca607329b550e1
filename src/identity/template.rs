//! Context value templates: static text with `{user}`, `{database}`,
//! `{client_addr}`, `{session_id}`, `{application_name}`, `{jwt.<claim>}`
//! (dotted paths reach nested claims), `{cert.cn}`, `{cert.san}`. A trailing
//! `?` (`{jwt.org_id?}`) makes a value optional (empty when missing);
//! otherwise a missing value refuses the connection. `{{` and `}}` are
//! literal braces.

use std::net::IpAddr;

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var { var: Var, optional: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    User,
    Database,
    ClientAddr,
    SessionId,
    ApplicationName,
    Jwt(String),
    CertCn,
    CertSan,
}

impl Var {
    fn name(&self) -> String {
        match self {
            Var::User => "user".into(),
            Var::Database => "database".into(),
            Var::ClientAddr => "client_addr".into(),
            Var::SessionId => "session_id".into(),
            Var::ApplicationName => "application_name".into(),
            Var::Jwt(c) => format!("jwt.{c}"),
            Var::CertCn => "cert.cn".into(),
            Var::CertSan => "cert.san".into(),
        }
    }
}

/// What a template can refer to, for one session.
#[derive(Debug, Clone, Default)]
pub struct Values<'a> {
    pub user: &'a str,
    pub database: &'a str,
    pub client_addr: Option<IpAddr>,
    pub session_id: u64,
    pub application_name: &'a str,
    /// The verified JWT's claims (a JSON object).
    pub jwt: Option<&'a serde_json::Value>,
    pub cert_cn: Option<&'a str>,
    /// The certificate's first SAN (DNS name, e-mail or URI).
    pub cert_san: Option<&'a str>,
}

impl Template {
    /// Parse `s`; errors say what is wrong and where.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = s.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => {
                    return Err(format!(
                        "unmatched '}}' at offset {i} (write '}}}}' for a brace)"
                    ))
                }
                '{' => {
                    let rest = &s[i + 1..];
                    let end = rest
                        .find('}')
                        .ok_or_else(|| format!("unclosed '{{' at offset {i}"))?;
                    let inner = &rest[..end];
                    for _ in 0..inner.chars().count() + 1 {
                        chars.next();
                    }
                    let (name, optional) = match inner.strip_suffix('?') {
                        Some(n) => (n, true),
                        None => (inner, false),
                    };
                    let var = parse_var(name)?;
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Var { var, optional });
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { parts })
    }

    /// Whether the template needs a JWT / a certificate.
    pub fn uses_jwt(&self) -> bool {
        self.parts.iter().any(|p| {
            matches!(
                p,
                Part::Var {
                    var: Var::Jwt(_),
                    ..
                }
            )
        })
    }
    pub fn uses_cert(&self) -> bool {
        self.parts.iter().any(|p| {
            matches!(
                p,
                Part::Var {
                    var: Var::CertCn | Var::CertSan,
                    ..
                }
            )
        })
    }

    /// The value for this session; `Err(name)` names a missing required value.
    pub fn render(&self, v: &Values<'_>) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var { var, optional } => match lookup(var, v) {
                    Some(s) => out.push_str(&s),
                    None if *optional => {}
                    None => return Err(var.name()),
                },
            }
        }
        Ok(out)
    }
}

fn parse_var(name: &str) -> Result<Var, String> {
    Ok(match name {
        "user" => Var::User,
        "database" => Var::Database,
        "client_addr" => Var::ClientAddr,
        "session_id" => Var::SessionId,
        "application_name" => Var::ApplicationName,
        "cert.cn" => Var::CertCn,
        "cert.san" => Var::CertSan,
        _ => match name.strip_prefix("jwt.") {
            Some(claim) if !claim.is_empty() && !claim.split('.').any(str::is_empty) => {
                Var::Jwt(claim.to_string())
            }
            _ => {
                return Err(format!(
                    "unknown template variable {{{name}}} (known: user, database, client_addr, session_id, application_name, jwt.<claim>, cert.cn, cert.san)"
                ))
            }
        },
    })
}

fn lookup(var: &Var, v: &Values<'_>) -> Option<String> {
    match var {
        Var::User => Some(v.user.to_string()),
        Var::Database => Some(v.database.to_string()),
        Var::ClientAddr => v.client_addr.map(|a| a.to_string()),
        Var::SessionId => Some(v.session_id.to_string()),
        Var::ApplicationName => Some(v.application_name.to_string()),
        Var::CertCn => v.cert_cn.map(str::to_string),
        Var::CertSan => v.cert_san.map(str::to_string),
        Var::Jwt(path) => {
            let claims = v.jwt?;
            // A claim whose own name contains dots wins over a nested path.
            let value = claims
                .get(path.as_str())
                .or_else(|| path.split('.').try_fold(claims, |node, key| node.get(key)))?;
            match value {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(claims: &serde_json::Value) -> Values<'_> {
        Values {
            user: "alice",
            database: "shop",
            client_addr: Some("10.1.2.3".parse().unwrap()),
            session_id: 42,
            application_name: "psql",
            jwt: Some(claims),
            cert_cn: None,
            cert_san: None,
        }
    }

    #[test]
    fn renders_variables_and_static_text() {
        let c = json!({"sub": "u-1", "org": {"id": 7}, "a.b": "dotted", "admin": true});
        let v = values(&c);
        let t = Template::parse(
            "{user}@{database} from {client_addr} #{session_id} ({application_name})",
        )
        .unwrap();
        assert_eq!(t.render(&v).unwrap(), "alice@shop from 10.1.2.3 #42 (psql)");
        assert_eq!(
            Template::parse("{jwt.sub}").unwrap().render(&v).unwrap(),
            "u-1"
        );
        assert_eq!(
            Template::parse("org-{jwt.org.id}")
                .unwrap()
                .render(&v)
                .unwrap(),
            "org-7"
        );
        assert_eq!(
            Template::parse("{jwt.a.b}").unwrap().render(&v).unwrap(),
            "dotted"
        );
        assert_eq!(
            Template::parse("{jwt.admin}").unwrap().render(&v).unwrap(),
            "true"
        );
        assert_eq!(
            Template::parse("billing").unwrap().render(&v).unwrap(),
            "billing"
        );
        assert_eq!(
            Template::parse("{{literal}}").unwrap().render(&v).unwrap(),
            "{literal}"
        );
        assert_eq!(Template::parse("").unwrap().render(&v).unwrap(), "");
    }

    #[test]
    fn claims_with_quotes_backslashes_and_unicode_are_copied_verbatim() {
        let raw = "o'brien \\ \"x\" ünï🦀 {user}";
        let c = json!({ "name": raw });
        assert_eq!(
            Template::parse("{jwt.name}")
                .unwrap()
                .render(&values(&c))
                .unwrap(),
            raw
        );
    }

    #[test]
    fn missing_values_are_named_unless_optional() {
        let c = json!({"sub": "u-1", "gone": null});
        let v = values(&c);
        assert_eq!(
            Template::parse("{jwt.org_id}")
                .unwrap()
                .render(&v)
                .unwrap_err(),
            "jwt.org_id"
        );
        assert_eq!(
            Template::parse("{jwt.gone}")
                .unwrap()
                .render(&v)
                .unwrap_err(),
            "jwt.gone"
        );
        assert_eq!(
            Template::parse("{cert.cn}")
                .unwrap()
                .render(&v)
                .unwrap_err(),
            "cert.cn"
        );
        assert_eq!(
            Template::parse("x{jwt.org_id?}y")
                .unwrap()
                .render(&v)
                .unwrap(),
            "xy"
        );
        let no_jwt = Values::default();
        assert_eq!(
            Template::parse("{jwt.sub}")
                .unwrap()
                .render(&no_jwt)
                .unwrap_err(),
            "jwt.sub"
        );
    }

    #[test]
    fn bad_templates_are_rejected_with_a_reason() {
        for (t, want) in [
            ("{nope}", "unknown template variable {nope}"),
            ("{jwt.}", "unknown template variable"),
            ("{jwt..x}", "unknown template variable"),
            ("{user", "unclosed"),
            ("user}", "unmatched"),
        ] {
            let e = Template::parse(t).unwrap_err();
            assert!(e.contains(want), "{t}: {e}");
        }
    }

    #[test]
    fn knows_what_it_needs() {
        assert!(Template::parse("{jwt.sub}").unwrap().uses_jwt());
        assert!(Template::parse("{cert.cn}").unwrap().uses_cert());
        assert!(!Template::parse("{user}").unwrap().uses_jwt());
    }
}

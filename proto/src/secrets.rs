//! Secrets stay on the hosts and out of every message. A release env value `secret:NAME` is a
//! reference the agent resolves from a root-only file on the host; etcd, logs and output only
//! ever see the reference. Everything shown to a person goes through [`mask_text`] (or
//! [`mask_env`] for a whole environment), so a literal password in a URL or a `password=`
//! parameter is replaced by `***` wherever it turns up.
use std::collections::BTreeMap;

/// An env value starting with this names a host-local secret instead of holding it.
pub const SECRET_PREFIX: &str = "secret:";
const MASK: &str = "***";
/// Parts of a name (an env variable, a URL query parameter) whose value is a credential: one
/// rule for refusing literals in a spec and for masking what is shown.
const SENSITIVE_NAMES: [&str; 8] = [
    "PASS",
    "PWD",
    "SECRET",
    "TOKEN",
    "KEY",
    "CREDENTIAL",
    "PRIVATE",
    "AUTH",
];

/// How well-known tokens start (Stripe live keys, GitHub tokens, Slack tokens, AWS access key
/// ids, PEM private keys and certificates): such a value is a credential whatever its name.
const TOKEN_SHAPES: [&str; 10] = [
    "sk_live_",
    "rk_live_",
    "ghp_",
    "gho_",
    "ghs_",
    "github_pat_",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "-----BEGIN ",
];

/// Masks every `scheme://user:password@host` password (the password may contain `@`: the last
/// `@` of the authority ends it) and every `password=` parameter value in `text`.
pub fn mask_text(text: &str) -> String {
    mask_shaped_tokens(&mask_url_queries(&mask_query_passwords(
        &mask_url_passwords(text),
    )))
}

/// Masks, in every URL of `text`, the values of query parameters named like a credential or a
/// signature (`access_token`, `X-Amz-Signature`, `X-Amz-Credential`, `sig`, …): a presigned or
/// token URL works for anyone who reads it.
fn mask_url_queries(text: &str) -> String {
    let end = |c: char| matches!(c, '"' | '\'' | '<' | '>') || c.is_whitespace();
    rewrite_urls(text, end, |url| match url.split_once('?') {
        Some((base, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, format!("#{f}")),
                None => (query, String::new()),
            };
            format!(
                "{base}?{}{fragment}",
                mask_query(query, sensitive_query_name)
            )
        }
        None => url.to_string(),
    })
}

/// `query` (`a=1&b=2`) with the values of the parameters `masked` names replaced.
fn mask_query(query: &str, masked: impl Fn(&str) -> bool) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if !value.is_empty() && masked(name) => format!("{name}={MASK}"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `text` with what follows each `://`, up to the first character `end` accepts, rewritten.
fn rewrite_urls(
    text: &str,
    end: impl Fn(char) -> bool,
    rewrite: impl Fn(&str) -> String,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let stop = after.find(&end).unwrap_or(after.len());
        out.push_str(&rewrite(&after[..stop]));
        rest = &after[stop..];
    }
    out.push_str(rest);
    out
}

fn sensitive_query_name(name: &str) -> bool {
    is_sensitive_name(name) || name.to_ascii_uppercase().contains("SIG")
}

/// Replaces every well-known token shape (and a PEM block's body) in `text` by `***`.
fn mask_shaped_tokens(text: &str) -> String {
    let mut out = text.to_string();
    for shape in TOKEN_SHAPES {
        let mut from = 0;
        while let Some(found) = out[from..].find(shape) {
            let start = from + found;
            let end = if shape.starts_with("-----") {
                out[start..]
                    .find("-----END")
                    .and_then(|e| {
                        out[start + e + 8..]
                            .find("-----")
                            .map(|f| start + e + 8 + f + 5)
                    })
                    .unwrap_or(out.len())
            } else {
                out[start..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
                    .map_or(out.len(), |e| start + e)
            };
            out.replace_range(start..end, MASK);
            from = start + MASK.len();
        }
    }
    // AWS access key ids: AKIA followed by 16 upper-case letters or digits.
    let mut from = 0;
    while let Some(found) = out[from..].find("AKIA") {
        let start = from + found;
        let id = out[start + 4..].chars().take(16).collect::<String>();
        if id.len() == 16
            && id
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        {
            out.replace_range(start..start + 20, MASK);
            from = start + MASK.len();
        } else {
            from = start + 4;
        }
    }
    out
}

fn mask_url_passwords(text: &str) -> String {
    // The authority runs to the next '/', '?', '#', whitespace or quote.
    let end = |c: char| matches!(c, '/' | '?' | '#' | '"' | '\'') || c.is_whitespace();
    rewrite_urls(text, end, |authority| match authority.rfind('@') {
        Some(at) if authority[..at].contains(':') => {
            let user = &authority[..authority.find(':').expect("checked")];
            format!("{user}:{MASK}{}", &authority[at..])
        }
        _ => authority.to_string(),
    })
}

fn mask_query_passwords(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find("password=") {
        let value_start = search + found + "password=".len();
        let value_end = text[value_start..]
            .find(|c: char| matches!(c, '&' | ';' | '"' | '\'') || c.is_whitespace())
            .map_or(text.len(), |i| value_start + i);
        out.push_str(&text[last..value_start]);
        if value_end > value_start {
            out.push_str(MASK);
        }
        last = value_end;
        search = value_end.max(value_start);
    }
    out.push_str(&text[last..]);
    out
}

/// `url` as it may be kept in etcd's history: a password in the authority and every query value
/// masked (a presigned or token URL's query is a credential), and whether anything was masked.
pub fn mask_url(url: &str) -> (String, bool) {
    let authority_masked = mask_url_passwords(url);
    let masked = match authority_masked.split_once('?') {
        Some((base, query)) => format!("{base}?{}", mask_query(query, |_| true)),
        None => authority_masked,
    };
    let changed = masked != url;
    (masked, changed)
}

/// Longest line of an app's or a hook's output quoted in a report or a history record.
pub const MAX_QUOTED_LINE: usize = 300;

/// One line of an app's or a hook's output as a report may quote it: masked, and cut at
/// [`MAX_QUOTED_LINE`] characters.
pub fn shown_line(line: &str) -> String {
    let masked = mask_text(line);
    if masked.chars().count() <= MAX_QUOTED_LINE {
        masked
    } else {
        let cut: String = masked.chars().take(MAX_QUOTED_LINE).collect();
        format!("{cut}… (cut)")
    }
}

/// True for an env variable name whose value is a credential (`DB_PASSWORD`, `API_TOKEN`, …).
pub fn is_sensitive_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SENSITIVE_NAMES.iter().any(|s| upper.contains(s))
}

/// An environment as it may be shown: `secret:` references as they are, literal values of
/// sensitive names replaced, and passwords inside other values masked.
pub fn mask_env(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    env.iter()
        .map(|(name, value)| {
            let shown = if value.starts_with(SECRET_PREFIX) {
                value.clone()
            } else if is_sensitive_name(name) {
                MASK.to_string()
            } else {
                mask_text(value)
            };
            (name.clone(), shown)
        })
        .collect()
}

/// Whether a literal env value carries a credential (a URL with a password or a token in its
/// query, a `password=` parameter, a well-known token shape): such a value belongs in a
/// host-local secret, not in a spec that lands in etcd.
pub fn looks_like_credential(value: &str) -> bool {
    !value.starts_with(SECRET_PREFIX) && mask_text(value) != value
}

/// Why `name = value` may not be written to etcd as a literal, if it may not: a credential-shaped
/// value, or any literal value of a variable named like a credential (`DB_PASS`,
/// `STRIPE_API_KEY`). `secret:NAME` references and empty values are fine.
pub fn literal_secret(name: &str, value: &str) -> Option<String> {
    if value.starts_with(SECRET_PREFIX) || value.is_empty() {
        return None;
    }
    if looks_like_credential(value) {
        Some(format!("holds a literal credential ({})", mask_text(value)))
    } else if is_sensitive_name(name) {
        Some("is named like a credential and holds a literal value".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_artifact_url_loses_its_credentials_and_query_values() {
        assert_eq!(
            mask_url("https://ci:hunter2@ci.example/app.tar.gz?X-Amz-Signature=abc&x=1&flag"),
            (
                "https://ci:***@ci.example/app.tar.gz?X-Amz-Signature=***&x=***&flag".into(),
                true
            )
        );
        assert_eq!(
            mask_url("file:///srv/app-v1.tar.gz"),
            ("file:///srv/app-v1.tar.gz".into(), false)
        );
    }

    #[test]
    fn url_passwords_are_masked_even_with_an_at_sign() {
        let cases = [
            (
                "postgres://shop:hunter2@db:5432/shop",
                "postgres://shop:***@db:5432/shop",
            ),
            (
                "postgres://shop:p@ss@w0rd@db/shop",
                "postgres://shop:***@db/shop",
            ),
            (
                "error: connect postgres://a:b@h/d failed, see https://x:y@z/",
                "error: connect postgres://a:***@h/d failed, see https://x:***@z/",
            ),
            ("postgres://shop@db/shop", "postgres://shop@db/shop"),
            ("sqlite:///var/lib/shop.db", "sqlite:///var/lib/shop.db"),
            ("no url here", "no url here"),
        ];
        for (input, want) in cases {
            assert_eq!(mask_text(input), want);
        }
    }

    #[test]
    fn password_parameters_are_masked() {
        assert_eq!(
            mask_text("postgres://db/shop?user=shop&password=hunter2&sslmode=require"),
            "postgres://db/shop?user=shop&password=***&sslmode=require"
        );
        assert_eq!(
            mask_text("host=db PASSWORD=x user=y"),
            "host=db PASSWORD=*** user=y"
        );
        assert_eq!(mask_text("password="), "password=");
    }

    #[test]
    fn env_masks_sensitive_names_and_keeps_references() {
        let env: BTreeMap<String, String> = [
            ("DATABASE_URL", "postgres://u:pw@db/x"),
            ("API_TOKEN", "abc"),
            ("STRIPE_KEY", "sk_live"),
            ("DB_PASSWORD", "secret:db-password"),
            ("LOG_LEVEL", "info"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let shown = mask_env(&env);
        assert_eq!(shown["DATABASE_URL"], "postgres://u:***@db/x");
        assert_eq!(shown["API_TOKEN"], "***");
        assert_eq!(shown["STRIPE_KEY"], "***");
        assert_eq!(shown["DB_PASSWORD"], "secret:db-password");
        assert_eq!(shown["LOG_LEVEL"], "info");
    }

    /// One rule refuses and masks: the names the first round missed (`DB_PASS`), token shapes
    /// whatever the name, and token query values in any URL shown.
    #[test]
    fn names_and_shapes_of_credentials_are_refused_and_masked() {
        for (name, value) in [
            ("DB_PASS", "hunter2-literal"),
            ("STRIPE_API_KEY", "anything"),
            ("GITHUB_PWD", "x"),
            ("OAUTH_CLIENT", "x"),
            ("PAYMENTS", "sk_live_51Habc"),
            ("HOOK", "xoxb-123-456"),
            ("AWS", "AKIAIOSFODNN7EXAMPLE"),
            (
                "CERT",
                "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
            ),
            (
                "ARTIFACT",
                "https://s3/app.tgz?X-Amz-Signature=abc&X-Amz-Credential=k",
            ),
        ] {
            assert!(literal_secret(name, value).is_some(), "{name} = {value}");
        }
        for (name, value) in [
            ("LOG_LEVEL", "info"),
            ("DATABASE_URL", "postgres://db/shop?sslmode=require"),
            ("DB_PASS", "secret:db-pass"),
            ("API_TOKEN", ""),
        ] {
            assert_eq!(literal_secret(name, value), None, "{name} = {value}");
        }
        assert_eq!(
            mask_text(
                "GET https://s3/app.tgz?X-Amz-Signature=abc&part=1 failed; key sk_live_51Habc."
            ),
            "GET https://s3/app.tgz?X-Amz-Signature=***&part=1 failed; key ***."
        );
        assert_eq!(
            mask_text("pem -----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY----- done"),
            "pem *** done"
        );
        assert_eq!(mask_text("id AKIAIOSFODNN7EXAMPLE."), "id ***.");
        let env: BTreeMap<String, String> = [("DB_PASS", "hunter2-literal")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(mask_env(&env)["DB_PASS"], "***");
    }

    #[test]
    fn credentials_are_recognised() {
        assert!(looks_like_credential("postgres://u:pw@db/x"));
        assert!(looks_like_credential("host=db password=pw"));
        assert!(!looks_like_credential("postgres://u@db/x"));
        assert!(!looks_like_credential("secret:db-url"));
    }
}

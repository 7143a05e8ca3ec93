//! `${NAME}` in the config file's strings: paths that come from the environment, the way systemd
//! hands a service its credentials (`LoadCredential=gateway.key:/etc/icu-gateway/gateway.key`
//! gives `${CREDENTIALS_DIRECTORY}/gateway.key`).
//!
//! Owns: [`expand`], which replaces every `${NAME}` in every string value of the parsed file
//! with the variable's value, and names the setting when a variable is not set.
//! Guarantees: only string values are touched (never keys, never the file's text, so a value
//! cannot inject settings); `$` not followed by `{` is kept as it is; the checksum of the
//! config file in the audit trail stays that of the file as written.

use crate::domain::FieldProblem;

/// Replaces `${NAME}` in every string of `value`, in place; a problem per unset variable.
pub(super) fn expand(
    value: &mut toml::Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Vec<FieldProblem> {
    let mut problems = Vec::new();
    walk(value, String::new(), lookup, &mut problems);
    problems
}

fn walk(
    value: &mut toml::Value,
    at: String,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<FieldProblem>,
) {
    let child = |key: &str| {
        if at.is_empty() {
            key.to_owned()
        } else {
            format!("{at}.{key}")
        }
    };
    match value {
        toml::Value::String(s) if s.contains("${") => match expand_str(s, lookup) {
            Ok(expanded) => *s = expanded,
            Err(message) => problems.push(FieldProblem { field: at, message }),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, format!("{at}[{i}]"), lookup, problems);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                walk(item, child(key), lookup, problems);
            }
        }
        _ => {}
    }
}

fn expand_str(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("'{s}': `${{` without a closing `}}`"))?;
        let name = &after[..end];
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "'{s}': `${{{name}}}` is not an environment variable name (letters, digits, _)"
            ));
        }
        let value = lookup(name).ok_or_else(|| {
            let hint = if name == "CREDENTIALS_DIRECTORY" {
                " (systemd sets it for a unit with LoadCredential=; outside systemd, set it or \
                 write the path)"
            } else {
                ""
            };
            format!("'{s}': environment variable {name} is not set{hint}")
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "CREDENTIALS_DIRECTORY" => Some("/run/credentials/icu-gateway.service".into()),
            "SITE" => Some("icu1".into()),
            _ => None,
        }
    }

    #[test]
    fn strings_are_expanded_anywhere_in_the_file_and_unset_names_are_named() {
        let mut v: toml::Value = toml::from_str(
            r#"
            gateway_id = "gw-${SITE}"
            [signing]
            key_file = "${CREDENTIALS_DIRECTORY}/gateway.key"
            [kafka.security]
            password_file = "${NOPE}/kafka"
            [[devices]]
            id = "costs-$5"
            "#,
        )
        .unwrap();
        let problems = expand(&mut v, &env);
        assert_eq!(v["gateway_id"].as_str(), Some("gw-icu1"));
        assert_eq!(
            v["signing"]["key_file"].as_str(),
            Some("/run/credentials/icu-gateway.service/gateway.key")
        );
        assert_eq!(v["devices"][0]["id"].as_str(), Some("costs-$5"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "kafka.security.password_file");
        assert!(
            problems[0].message.contains("NOPE is not set"),
            "{problems:?}"
        );
    }

    #[test]
    fn bad_references_are_problems_not_guesses() {
        for bad in ["${", "${}", "${1X}", "${A-B}"] {
            assert!(expand_str(bad, &env).is_err(), "{bad}");
        }
        let err = expand_str("${CREDENTIALS_DIRECTORY}", &|_| None).unwrap_err();
        assert!(err.contains("LoadCredential"), "{err}");
    }
}

//! A route's authorization rules applied to a verified token: scopes (all of,
//! any of), roles (any of) and exact claim values.

use serde_json::Value;

use super::{AuthError, Verified};
use crate::config::RouteAuth;

/// Whether `verified` may call a route with `policy`; the 403 says which
/// scope was missing.
pub fn authorize(policy: &RouteAuth, verified: &Verified) -> Result<(), AuthError> {
    let identity = &verified.identity;
    let has = |scope: &String| identity.scopes.iter().any(|s| s == scope);
    if let Some(missing) = policy.scopes_all.iter().find(|s| !has(s)) {
        return Err(AuthError::InsufficientScope {
            scope: policy.scopes_all.join(" "),
            description: format!("missing scope {missing}"),
        });
    }
    if !policy.scopes_any.is_empty() && !policy.scopes_any.iter().any(has) {
        return Err(AuthError::InsufficientScope {
            scope: policy.scopes_any.join(" "),
            description: format!("needs one of the scopes {}", policy.scopes_any.join(", ")),
        });
    }
    if !policy.roles_any.is_empty()
        && !policy
            .roles_any
            .iter()
            .any(|role| identity.roles.iter().any(|r| r == role))
    {
        return Err(AuthError::InsufficientScope {
            scope: policy.scopes_all.join(" "),
            description: format!("needs one of the roles {}", policy.roles_any.join(", ")),
        });
    }
    for (path, expected) in &policy.claims {
        if claim(&verified.claims, path) != Some(expected) {
            return Err(AuthError::InsufficientScope {
                scope: policy.scopes_all.join(" "),
                description: format!("claim {path} does not match"),
            });
        }
    }
    Ok(())
}

/// The value at a dotted path (`realm_access.roles`); a key that itself holds
/// a dot is found too (`https://example.com/roles`, as some providers name them).
pub fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    path.split('.')
        .try_fold(claims, |value, key| value.get(key))
}

/// Strings at `path`: an array of strings, or one space-separated string.
pub fn strings(claims: &Value, path: &str) -> Vec<String> {
    match claim(claims, path) {
        Some(Value::String(text)) => text.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn claim_paths() {
        let claims = json!({"realm_access": {"roles": ["admin", "ops"]}, "scope": "a b", "x.y": 1});
        assert_eq!(strings(&claims, "realm_access.roles"), ["admin", "ops"]);
        assert_eq!(strings(&claims, "scope"), ["a", "b"]);
        assert_eq!(claim(&claims, "x.y"), Some(&json!(1)));
        assert!(strings(&claims, "missing.path").is_empty());
    }
}

//! `[route.waf]`: which requests a route's WAF blocks, watches or lets through.

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

/// What a WAF rule does when it matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WafMode {
    /// No inspection at all.
    Off,
    /// Log and count, but let the request through.
    Monitor,
    /// Answer 403 with the rule id.
    #[default]
    Block,
}

/// What happens to a body longer than `inspect_body_bytes` on a route that
/// inspects bodies (ModSecurity's `SecRequestBodyLimitAction`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Oversize {
    /// 413: nothing the WAF has not seen is forwarded.
    #[default]
    Refuse,
    /// Inspect the first `inspect_body_bytes`, stream the rest uninspected
    /// (counted in `gateway_waf_bodies_uninspected_total`).
    InspectPrefix,
}

/// One route's WAF settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteWaf {
    /// The built-in rules' mode on this route.
    pub mode: WafMode,
    /// Request bodies up to this size are read whole and inspected before
    /// anything is forwarded, whatever their framing; see `oversize`.
    pub inspect_body_bytes: usize,
    /// What a longer body gets: refused (413, the default) or inspected in
    /// part (`inspect_prefix`). A route with a `json_schema` always refuses.
    pub oversize: Oversize,
    /// Whether the upstream renders request data as HTML: only then is any
    /// HTML tag (`<b>`) in a value an attack; script, event-handler and
    /// `javascript:` signatures are blocked either way. Off by default, so
    /// `Vec<String>`, `I <3 Rust` and markdown with `<b>` pass.
    pub renders_html: bool,
    /// `Content-Type`s (without parameters) a request with a body may have;
    /// empty allows any.
    pub content_types: Vec<String>,
    /// Built-in rule ids switched off on this route.
    pub disabled_rules: Vec<String>,
    /// Built-in rule ids with their own mode (e.g. `"sqli-003" = "monitor"`).
    pub rule_modes: BTreeMap<String, WafMode>,
    /// `[[route.waf.rules]]`: the operator's own rules, checked after the
    /// built-in ones.
    pub rules: Vec<CustomRule>,
    /// A JSON Schema file every request body must match (400 with the failing
    /// path otherwise); bodies over `inspect_body_bytes` are refused (413).
    pub json_schema: Option<PathBuf>,
}

impl Default for RouteWaf {
    fn default() -> Self {
        Self {
            mode: WafMode::Block,
            inspect_body_bytes: 64 * 1024,
            oversize: Oversize::Refuse,
            renders_html: false,
            content_types: Vec::new(),
            disabled_rules: Vec::new(),
            rule_modes: BTreeMap::new(),
            rules: Vec::new(),
            json_schema: None,
        }
    }
}

/// An operator's rule: `field operator value` → `action`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRule {
    /// Shown in the 403 and the logs; must not clash with a built-in id.
    pub id: String,
    /// `path`, `query`, `body`, `method` or `header:NAME`.
    pub field: String,
    pub operator: Operator,
    pub value: String,
    #[serde(default)]
    pub action: WafMode,
}

/// How a custom rule compares its field with its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    Regex,
    Contains,
    Equals,
    StartsWith,
    EndsWith,
}

impl RouteWaf {
    /// Every problem, each with its key path (`prefix` is e.g. `route[2].waf`).
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for id in self.disabled_rules.iter().chain(self.rule_modes.keys()) {
            if !crate::policy::waf::is_builtin(id) {
                problems.push(format!("{prefix}: no built-in WAF rule {id:?}"));
            }
        }
        if let Some(path) = &self.json_schema
            && let Err(err) = load_schema(path)
        {
            problems.push(format!("{prefix}.json_schema: {err}"));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let key = format!("{prefix}.rules[{i}]");
            if crate::policy::waf::is_builtin(&rule.id) {
                problems.push(format!(
                    "{key}.id: {:?} is a built-in rule id; choose another",
                    rule.id
                ));
            }
            let field_ok = matches!(rule.field.as_str(), "path" | "query" | "body" | "method")
                || rule
                    .field
                    .strip_prefix("header:")
                    .is_some_and(|name| http::HeaderName::try_from(name).is_ok());
            if !field_ok {
                problems.push(format!(
                    "{key}.field: {:?} is not path, query, body, method or header:NAME",
                    rule.field
                ));
            }
            if rule.operator == Operator::Regex
                && let Err(err) = regex::Regex::new(&rule.value)
            {
                problems.push(format!("{key}.value: not a valid regex: {err}"));
            }
        }
        problems
    }
}

/// Reads and compiles a JSON Schema file.
pub fn load_schema(path: &std::path::Path) -> Result<jsonschema::Validator, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let schema: serde_json::Value = serde_json::from_str(&text)
        .map_err(|err| format!("{} is not JSON: {err}", path.display()))?;
    jsonschema::validator_for(&schema)
        .map_err(|err| format!("{} is not a valid JSON Schema: {err}", path.display()))
}

//! The WAF: built-in signatures (path traversal, SQL injection, XSS, command
//! injection), protocol anomalies, a `Content-Type` allowlist and the
//! operator's own rules, checked against the request target, its header values
//! and small bodies (JSON and form fields one by one).
//!
//! Values are decoded the way an upstream might decode them (percent-decoding
//! up to three times, `+` as space) before matching, so `%2e%2e%2f` and
//! `%252e%252e%252f` are `../`. The signatures want the shape of an attack,
//! not a keyword: `O'Brien`, `select shoes` and `1..5` pass.

use std::{collections::BTreeMap, sync::LazyLock};

use bytes::Bytes;
use http::{HeaderMap, Method, header};
use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use tracing::warn;

use crate::{
    config::{CustomRule, Operator, RouteConfig, RouteWaf, WafMode, waf::load_schema},
    proxy::normalize::hex_value,
};

/// What a request did to the WAF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Blocked by `rule` (403).
    Block { rule: String, class: &'static str },
    /// Not HTTP the gateway forwards (400): smuggling shapes and the like.
    Anomaly(&'static str),
    /// A body of a type the route does not take (415).
    ContentType(String),
    /// A body that does not match the route's JSON Schema (400): where, and why.
    Schema { path: String, message: String },
}

/// Where a value came from; rules pick the places they look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Path,
    Query,
    Header,
    Body,
}

struct Builtin {
    id: &'static str,
    class: &'static str,
    /// Only on routes that render request data as HTML.
    html_only: bool,
    pattern: &'static str,
}

const WORDS: &str = "cat|ls|id|whoami|uname|wget|curl|nc|ncat|bash|sh|zsh|python[23]?|perl|ruby|rm|chmod|ping|nslookup|powershell|cmd(?:\\.exe)?";

/// The built-in signatures, matched case-insensitively on decoded values.
const BUILTINS: &[Builtin] = &[
    Builtin {
        id: "traversal-001",
        class: "path_traversal",
        html_only: false,
        pattern: r"(?:^|[/\\])\.\.(?:[/\\]|$)",
    },
    Builtin {
        id: "traversal-003",
        class: "path_traversal",
        html_only: false,
        pattern: r"/etc/(?:passwd|shadow|hosts)\b|\\windows\\(?:win\.ini|system32)|\bboot\.ini\b|/proc/self/",
    },
    Builtin {
        id: "sqli-001",
        class: "sqli",
        html_only: false,
        pattern: r"\bunion(?:\s|/\*.*?\*/)+(?:all(?:\s|/\*.*?\*/)+|distinct\s+)?select\b",
    },
    Builtin {
        id: "sqli-002",
        class: "sqli",
        html_only: false,
        pattern: r"'\s*(?:or|and|\|\||&&)\s*(?:'[^']*'|\d+|true|false)\s*(?:=|<>|!=|<|>|\blike\b)|\b(?:or|and)\s+(?:1\s*=\s*1|'1'\s*=\s*'1|true)\b",
    },
    Builtin {
        id: "sqli-003",
        class: "sqli",
        html_only: false,
        pattern: r"'\s*\)?\s*(?:;|--|#|/\*)",
    },
    Builtin {
        id: "sqli-004",
        class: "sqli",
        html_only: false,
        pattern: r";\s*(?:drop\s+(?:table|database)|delete\s+from|insert\s+into|truncate\s+table|update\s+\w+\s+set|shutdown\b|exec(?:ute)?\s)",
    },
    Builtin {
        id: "sqli-005",
        class: "sqli",
        html_only: false,
        pattern: r"\b(?:sleep|benchmark|pg_sleep|load_file|extractvalue|updatexml)\s*\(|\bwaitfor\s+delay\b|\binformation_schema\b|\binto\s+(?:out|dump)file\b|\bxp_cmdshell\b",
    },
    Builtin {
        id: "xss-001",
        class: "xss",
        html_only: false,
        pattern: r"<\s*/?\s*script\b",
    },
    Builtin {
        id: "xss-002",
        class: "xss",
        html_only: false,
        pattern: r"<[a-z][^>]*[\s/]on[a-z]+\s*=",
    },
    Builtin {
        id: "xss-003",
        class: "xss",
        html_only: false,
        pattern: r"\b(?:javascript|vbscript)\s*:|\bdata:text/html\b",
    },
    Builtin {
        id: "xss-004",
        class: "xss",
        html_only: false,
        pattern: r"<\s*(?:iframe|object|embed|svg|math|base|meta|link|style|form|applet)\b",
    },
    Builtin {
        id: "xss-005",
        class: "xss",
        html_only: true,
        pattern: r"<\s*/?\s*[a-z][a-z0-9]*(?:\s[^>]*)?/?\s*>",
    },
];

/// Command injection: a shell separator or substitution followed by a command.
static COMMAND: LazyLock<Regex> = LazyLock::new(|| {
    compile(&format!(
        r"(?:;|\|\|?|&&|`|\$\()\s*(?:{WORDS})\b|\$\{{ifs\}}"
    ))
});

/// Overlong UTF-8 spellings of `.`, `/` and `\` (after percent-decoding).
const OVERLONG: &[&[u8]] = &[
    &[0xC0, 0xAE],
    &[0xC0, 0xAF],
    &[0xC1, 0x9C],
    &[0xE0, 0x80, 0xAE],
    &[0xE0, 0x80, 0xAF],
];

/// Every built-in signature in one automaton, so a value is scanned once
/// rather than once per signature (about 5× cheaper for a typical header).
#[expect(
    clippy::expect_used,
    reason = "the patterns are constants covered by the unit tests"
)]
static COMPILED: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSetBuilder::new(BUILTINS.iter().map(|rule| rule.pattern))
        .case_insensitive(true)
        .build()
        .expect("built-in WAF patterns compile")
});

#[expect(
    clippy::expect_used,
    reason = "the patterns are constants covered by the unit tests"
)]
fn compile(pattern: &str) -> Regex {
    RegexBuilder::new(pattern)
        .case_insensitive(true)
        .build()
        .expect("built-in WAF pattern compiles")
}

/// Whether `id` names a built-in rule (for config validation).
pub fn is_builtin(id: &str) -> bool {
    BUILTINS.iter().any(|rule| rule.id == id) || matches!(id, "traversal-002" | "cmdi-001")
}

/// A custom rule, compiled.
struct Custom {
    rule: CustomRule,
    regex: Option<Regex>,
}

/// One route's WAF, compiled at config load.
pub struct RouteWafPolicy {
    config: RouteWaf,
    custom: Vec<Custom>,
    schema: Option<jsonschema::Validator>,
}

/// The WAF of every route, by route name.
#[derive(Default)]
pub struct Waf {
    routes: BTreeMap<String, RouteWafPolicy>,
}

impl Waf {
    pub fn new(routes: &[RouteConfig]) -> Self {
        let routes = routes
            .iter()
            .map(|route| {
                let custom = route
                    .waf
                    .rules
                    .iter()
                    .map(|rule| Custom {
                        regex: (rule.operator == Operator::Regex)
                            .then(|| Regex::new(&rule.value).ok())
                            .flatten(),
                        rule: rule.clone(),
                    })
                    .collect();
                // Validation loaded this file already; if it vanished since,
                // say so loudly rather than fail the whole reload.
                let schema = route.waf.json_schema.as_deref().and_then(|path| {
                    load_schema(path)
                        .inspect_err(|err| {
                            tracing::error!(route = %route.name, %err, "JSON Schema not applied")
                        })
                        .ok()
                });
                (
                    route.name.clone(),
                    RouteWafPolicy {
                        config: route.waf.clone(),
                        custom,
                        schema,
                    },
                )
            })
            .collect();
        Self { routes }
    }

    /// The route's WAF, unless it is off.
    pub fn route(&self, name: &str) -> Option<&RouteWafPolicy> {
        self.routes.get(name).filter(|policy| {
            policy.config.mode != WafMode::Off
                || !policy.custom.is_empty()
                || policy.schema.is_some()
        })
    }
}

/// The request head as the WAF sees it.
pub struct Head<'a> {
    pub method: &'a Method,
    /// The normalized path.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl RouteWafPolicy {
    /// How many body bytes this route's WAF wants to see.
    pub fn inspect_body_bytes(&self) -> usize {
        self.config.inspect_body_bytes
    }

    /// Checks the head: anomalies, content type, then signatures and custom
    /// rules on the path, query and header values.
    pub fn check_head(&self, route: &str, head: &Head<'_>) -> Result<(), Verdict> {
        self.check_content_type(head.headers)?;
        let mut values = vec![(Place::Path, decode(head.path.as_bytes(), false))];
        if let Some(query) = head.query {
            values.extend(form_values(query).map(|v| (Place::Query, v)));
        }
        for (name, value) in head.headers {
            if *name == header::AUTHORIZATION {
                continue;
            }
            values.push((Place::Header, decode(value.as_bytes(), false)));
        }
        for (place, value) in &values {
            self.check_value(route, *place, value)?;
        }
        self.check_custom(route, head, None)
    }

    /// Checks a buffered body (at most [`Self::inspect_body_bytes`] of it).
    pub fn check_body(&self, route: &str, head: &Head<'_>, body: &Bytes) -> Result<(), Verdict> {
        if let Some(schema) = &self.schema {
            check_schema(schema, body)?;
        }
        let body = &body[..body.len().min(self.config.inspect_body_bytes)];
        let content_type = media_type(head.headers);
        let values: Vec<Vec<u8>> = match content_type.as_deref() {
            Some(t) if t == "application/json" || t.ends_with("+json") => {
                match serde_json::from_slice::<serde_json::Value>(body) {
                    Ok(json) => {
                        let mut strings = Vec::new();
                        json_strings(&json, &mut strings);
                        strings.into_iter().map(String::into_bytes).collect()
                    }
                    Err(_) => vec![body.to_vec()],
                }
            }
            Some("application/x-www-form-urlencoded") => {
                form_values(&String::from_utf8_lossy(body)).collect()
            }
            Some(t)
                if t.starts_with("image/")
                    || t.starts_with("audio/")
                    || t.starts_with("video/")
                    || t == "application/octet-stream" =>
            {
                Vec::new()
            }
            _ => vec![body.to_vec()],
        };
        for value in &values {
            self.check_value(route, Place::Body, value)?;
        }
        self.check_custom(route, head, Some(body))
    }

    /// Whether every body must be seen whole (a JSON Schema is configured).
    pub fn needs_whole_body(&self) -> bool {
        self.schema.is_some()
    }

    fn check_content_type(&self, headers: &HeaderMap) -> Result<(), Verdict> {
        if self.config.content_types.is_empty() {
            return Ok(());
        }
        let has_body = headers.contains_key(header::TRANSFER_ENCODING)
            || headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|len| len.as_bytes() != b"0");
        if !has_body {
            return Ok(());
        }
        let media = media_type(headers).unwrap_or_default();
        if self
            .config
            .content_types
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(&media))
        {
            Ok(())
        } else {
            Err(Verdict::ContentType(media))
        }
    }

    /// The built-in signatures on one decoded value.
    fn check_value(&self, route: &str, place: Place, value: &[u8]) -> Result<(), Verdict> {
        if self.config.mode == WafMode::Off {
            return Ok(());
        }
        if place != Place::Header
            && OVERLONG
                .iter()
                .any(|seq| value.windows(seq.len()).any(|w| w == *seq))
        {
            self.hit(route, "traversal-002", "path_traversal")?;
        }
        let text = String::from_utf8_lossy(value);
        let matched = COMPILED.matches(&text);
        for rule in matched.iter().filter_map(|index| BUILTINS.get(index)) {
            if rule.html_only && !self.config.renders_html {
                continue;
            }
            self.hit(route, rule.id, rule.class)?;
        }
        if place != Place::Header && COMMAND.is_match(&text) {
            self.hit(route, "cmdi-001", "command_injection")?;
        }
        Ok(())
    }

    /// A built-in rule matched: block, or log and go on, per its mode.
    fn hit(&self, route: &str, id: &'static str, class: &'static str) -> Result<(), Verdict> {
        if self.config.disabled_rules.iter().any(|d| d == id) {
            return Ok(());
        }
        let mode = self
            .config
            .rule_modes
            .get(id)
            .copied()
            .unwrap_or(self.config.mode);
        verdict(route, id, class, mode)
    }

    fn check_custom(
        &self,
        route: &str,
        head: &Head<'_>,
        body: Option<&[u8]>,
    ) -> Result<(), Verdict> {
        for custom in &self.custom {
            let rule = &custom.rule;
            let value: Option<String> = match (rule.field.as_str(), body) {
                ("body", Some(body)) => Some(String::from_utf8_lossy(body).into_owned()),
                ("body", None) | (_, Some(_)) => None,
                ("path", None) => Some(head.path.to_owned()),
                ("query", None) => head.query.map(str::to_owned),
                ("method", None) => Some(head.method.as_str().to_owned()),
                (field, None) => field
                    .strip_prefix("header:")
                    .and_then(|name| head.headers.get(name))
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            };
            let Some(value) = value else { continue };
            let matched = match rule.operator {
                Operator::Regex => custom.regex.as_ref().is_some_and(|r| r.is_match(&value)),
                Operator::Contains => value.contains(&rule.value),
                Operator::Equals => value == rule.value,
                Operator::StartsWith => value.starts_with(&rule.value),
                Operator::EndsWith => value.ends_with(&rule.value),
            };
            if matched {
                verdict(route, &rule.id, "custom", rule.action)?;
            }
        }
        Ok(())
    }
}

fn check_schema(schema: &jsonschema::Validator, body: &[u8]) -> Result<(), Verdict> {
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|err| Verdict::Schema {
        path: String::new(),
        message: format!("the body is not JSON ({err})"),
    })?;
    schema.validate(&json).map_err(|err| Verdict::Schema {
        path: err.instance_path().to_string(),
        message: err.to_string(),
    })
}

fn verdict(route: &str, id: &str, class: &'static str, mode: WafMode) -> Result<(), Verdict> {
    match mode {
        WafMode::Off => Ok(()),
        WafMode::Monitor => {
            metrics::counter!("gateway_waf_matches_total", "rule" => id.to_owned(), "action" => "monitor").increment(1);
            warn!(target: "audit", event = "waf_match", route, rule = id, class, action = "monitor", "WAF rule matched (monitor mode: request passed)");
            Ok(())
        }
        WafMode::Block => {
            metrics::counter!("gateway_waf_matches_total", "rule" => id.to_owned(), "action" => "block").increment(1);
            Err(Verdict::Block {
                rule: id.to_owned(),
                class,
            })
        }
    }
}

/// Request smuggling shapes hyper may let through: both framing headers,
/// several lengths, or a transfer coding other than plain `chunked`. Checked
/// on every route, whatever its WAF mode: a message whose framing two parsers
/// could read differently is never forwarded.
pub fn check_protocol(headers: &HeaderMap) -> Result<(), Verdict> {
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    let codings: Vec<_> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    if lengths > 0 && !codings.is_empty() {
        return Err(Verdict::Anomaly(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if lengths > 1 {
        return Err(Verdict::Anomaly("more than one Content-Length"));
    }
    if codings.len() > 1 || codings.first().is_some_and(|c| c.as_bytes() != b"chunked") {
        return Err(Verdict::Anomaly(
            "a Transfer-Encoding other than plain chunked",
        ));
    }
    Ok(())
}

/// The `Content-Type` without parameters, lower case.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        value
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase(),
    )
}

/// `a=1&b=2` as decoded keys and values.
fn form_values(text: &str) -> impl Iterator<Item = Vec<u8>> + '_ {
    text.split('&')
        .flat_map(|pair| pair.splitn(2, '='))
        .filter(|part| !part.is_empty())
        .map(|part| decode(part.as_bytes(), true))
}

fn json_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                out.push(key.clone());
                json_strings(v, out);
            }
        }
        _ => {}
    }
}

/// Percent-decodes up to three times (double and triple encoding), `+` as a
/// space in form data.
fn decode(input: &[u8], plus_is_space: bool) -> Vec<u8> {
    let mut current = input.to_vec();
    for round in 0..3 {
        let mut out = Vec::with_capacity(current.len());
        let mut i = 0;
        while i < current.len() {
            match current[i] {
                b'%' if i + 2 < current.len() => {
                    match (hex_value(current[i + 1]), hex_value(current[i + 2])) {
                        (Some(h), Some(l)) => {
                            out.push(h << 4 | l);
                            i += 3;
                            continue;
                        }
                        _ => out.push(b'%'),
                    }
                }
                b'+' if plus_is_space && round == 0 => out.push(b' '),
                b => out.push(b),
            }
            i += 1;
        }
        if out == current {
            break;
        }
        current = out;
    }
    current
}

#[cfg(test)]
mod tests;

//! The WAF: built-in signatures by attack family (the OWASP Core Rule Set's
//! 920 protocol, 930 traversal/LFI, 931 RFI/SSRF, 932 RCE, 933 PHP, 941 XSS,
//! 942 SQLi and 944 Java families, plus NUL bytes), a `Content-Type`
//! allowlist, an optional JSON Schema and the operator's own rules, checked
//! against the request target, its header values and buffered bodies (JSON
//! and form keys and values one by one).
//!
//! Every value goes through one decode chain first (`waf/decode.rs`:
//! percent-decoding until stable, HTML entities, `\uXXXX`, JSON escapes,
//! SQL comments, case folding), so an encoding never hides an attack; the
//! signatures (`waf/signatures.rs`) want the shape of an attack, not a
//! keyword, so `O'Brien`, `select shoes` and `1..5` pass.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, header};
use regex::Regex;
use tracing::warn;

use self::signatures::Place;
use crate::config::{CustomRule, Operator, RouteConfig, RouteWaf, WafMode, waf::load_schema};

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

/// Whether `id` names a built-in rule (for config validation).
pub fn is_builtin(id: &str) -> bool {
    signatures::is_builtin(id)
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

    /// What a body longer than that gets.
    pub fn oversize(&self) -> crate::config::Oversize {
        self.config.oversize
    }

    /// Checks the head: content type, protocol rules, then signatures and
    /// custom rules on the path, every query key and value and every header
    /// value but credentials.
    pub fn check_head(&self, route: &str, head: &Head<'_>) -> Result<(), Verdict> {
        self.check_content_type(head.headers)?;
        self.check_protocol_rules(route, head)?;
        self.inspect(route, Place::PATH, head.path.as_bytes(), false)?;
        if let Some(query) = head.query {
            for part in form_parts(query.as_bytes()) {
                self.inspect(route, Place::QUERY, part, true)?;
            }
        }
        for (name, value) in head.headers {
            // Credentials are the auth stage's business: a password or an
            // opaque token may hold any character, and matching them would
            // also put them in the WAF's logs.
            if *name == header::AUTHORIZATION || *name == header::PROXY_AUTHORIZATION {
                continue;
            }
            self.inspect(
                route,
                Place::of_header(name.as_str()),
                value.as_bytes(),
                false,
            )?;
        }
        self.check_custom(route, head, None)
    }

    /// Checks a buffered body (at most [`Self::inspect_body_bytes`] of it):
    /// JSON keys and string values one by one (at any depth the JSON parser
    /// accepts), form keys and values one by one, other text as a whole.
    /// A body that is not UTF-8 under a binary type (`image/*`,
    /// `application/octet-stream`…) is skipped; the same bytes as text under
    /// such a type are not.
    pub fn check_body(&self, route: &str, head: &Head<'_>, body: &Bytes) -> Result<(), Verdict> {
        if let Some(schema) = &self.schema {
            check_schema(schema, body)?;
        }
        let body = &body[..body.len().min(self.config.inspect_body_bytes)];
        let media = media_type(head.headers).unwrap_or_default();
        let binary = media.starts_with("image/")
            || media.starts_with("audio/")
            || media.starts_with("video/")
            || media == "application/octet-stream";
        let json_type = media == "application/json" || media.ends_with("+json");
        let looks_json = matches!(body.trim_ascii_start().first(), Some(b'{' | b'['));
        if (json_type || looks_json)
            && let Ok(json) = serde_json::from_slice::<serde_json::Value>(body)
        {
            for value in json_strings(&json) {
                self.inspect(route, Place::BODY, value.as_bytes(), false)?;
            }
            return self.check_custom(route, head, Some(body));
        }
        if binary && std::str::from_utf8(body).is_err() {
            return self.check_custom(route, head, Some(body));
        }
        if media == "application/x-www-form-urlencoded" || looks_like_form(body) {
            for part in form_parts(body) {
                self.inspect(route, Place::BODY, part, true)?;
            }
        }
        if media != "application/x-www-form-urlencoded" {
            self.inspect(route, Place::BODY, body, false)?;
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

    /// The built-in signatures on one value, after the decode chain.
    fn inspect(&self, route: &str, place: Place, raw: &[u8], form: bool) -> Result<(), Verdict> {
        if self.config.mode == WafMode::Off {
            return Ok(());
        }
        let decoded = decode::decode(raw, form);
        for rule in signatures::matches(&decoded, place) {
            if rule.html_only && !self.config.renders_html {
                continue;
            }
            self.hit(route, rule.id, rule.class)?;
        }
        Ok(())
    }

    /// The protocol rules (920) that look at the request as a whole.
    fn check_protocol_rules(&self, route: &str, head: &Head<'_>) -> Result<(), Verdict> {
        // A charset a backend may decode differently from the WAF (UTF-7
        // smuggles `<script>` as `+ADw-script+AD4-`).
        if let Some(charset) = head
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(charset)
            && !ALLOWED_CHARSETS.contains(&charset.as_str())
        {
            self.hit(route, "protocol-001", "protocol")?;
        }
        // More than a few ranges: the overlapping-ranges denial of service.
        for name in [header::RANGE, REQUEST_RANGE] {
            if let Some(range) = head.headers.get(name)
                && range.as_bytes().iter().filter(|b| **b == b',').count() >= MAX_RANGES
            {
                self.hit(route, "protocol-002", "protocol")?;
            }
        }
        // httpoxy: CGI turns `Proxy` into `HTTP_PROXY`.
        if head.headers.contains_key(PROXY) {
            self.hit(route, "protocol-003", "protocol")?;
        }
        // Case-insensitive without a lower-cased copy: folding moves no '.' or '/'.
        if head.path.ends_with('~')
            || head.path.rsplit_once('.').is_some_and(|(stem, ext)| {
                !stem.ends_with('/')
                    && BACKUP_EXTENSIONS
                        .iter()
                        .any(|backup| backup.eq_ignore_ascii_case(ext))
            })
        {
            self.hit(route, "protocol-004", "protocol")?;
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

/// Charsets a request body may declare (protocol-001).
const ALLOWED_CHARSETS: &[&str] = &[
    "utf-8",
    "utf8",
    "us-ascii",
    "ascii",
    "iso-8859-1",
    "iso-8859-15",
    "latin1",
    "windows-1252",
];

/// A `Range` with this many commas (ranges − 1) is refused (protocol-002).
const MAX_RANGES: usize = 5;

/// Backup and dump files left next to the real ones (protocol-004).
/// Headers the protocol rules read, parsed once rather than per request.
const REQUEST_RANGE: HeaderName = HeaderName::from_static("request-range");
const PROXY: HeaderName = HeaderName::from_static("proxy");

const BACKUP_EXTENSIONS: &[&str] = &[
    "bak", "backup", "old", "orig", "swp", "swo", "sav", "save", "tmp", "sql", "sqlite", "mdb",
    "dist",
];

/// The `charset` parameter of a `Content-Type`, lower case, unquoted.
fn charset(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"').to_ascii_lowercase())
    })
}

/// The keys and values of `a=1&b=2`, still encoded (the decode chain runs
/// on each).
fn form_parts(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|b| *b == b'&')
        .flat_map(|pair| pair.splitn(2, |b| *b == b'='))
        .filter(|part| !part.is_empty())
}

/// A body without a form type that still reads as one (`a=1&b=2`, no
/// whitespace): an upstream may parse it as a form whatever the type says.
fn looks_like_form(body: &[u8]) -> bool {
    body.contains(&b'=') && !body.iter().any(u8::is_ascii_whitespace)
}

/// Every key and string value of a JSON document, without recursion.
fn json_strings(root: &serde_json::Value) -> Vec<&str> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::String(s) => out.push(s.as_str()),
            serde_json::Value::Array(items) => stack.extend(items),
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    out.push(key.as_str());
                    stack.push(v);
                }
            }
            _ => {}
        }
    }
    out
}

mod decode;
mod signatures;
#[cfg(test)]
mod tests;

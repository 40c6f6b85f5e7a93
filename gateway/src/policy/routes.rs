//! Route matching: which `[[route]]` serves a request, chosen by host, then path
//! prefix, then method. Built once per config so the per-request lookup is a few
//! hash lookups and string comparisons.

use std::{borrow::Cow, collections::HashMap, sync::Arc, time::Duration};

use http::{HeaderValue, Method};

use crate::{
    config::{ListenerConfig, proxy::RouteConfig},
    observe::metrics::RouteMetrics,
};

/// Why no route serves a request; each becomes exactly one response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// 404.
    #[error("no route matches this host and path")]
    NotFound,
    /// 405; `allow` is the value for the `Allow` header.
    #[error("method not allowed on this route; allowed: {allow}")]
    MethodNotAllowed { allow: String },
    /// 421: the route for this host and path is served by other listeners.
    #[error("this host and path are not served on this listener")]
    Misdirected,
}

/// One `[[route]]`, with its strings parsed for the request path.
#[derive(Clone, Debug)]
pub struct Route {
    /// Name used in logs and metrics.
    pub name: String,
    /// The upstream pool's name.
    pub upstream: String,
    /// Prefix of the normalized path this route serves.
    pub path_prefix: String,
    /// Replaces `path_prefix` before forwarding; see [`Route::rewrite`].
    pub rewrite_prefix: Option<String>,
    /// `Host` sent upstream; `None` keeps the client's.
    pub upstream_host: Option<HeaderValue>,
    /// Overrides the listener's body limit.
    pub max_body_bytes: Option<u64>,
    /// Whole-request deadline, retries included.
    pub timeout: Duration,
    /// `None` allows every method. Methods are case-sensitive (RFC 9110 §9.1),
    /// so a configured `"get"` does not allow `GET`.
    pub methods: Option<Vec<Method>>,
    /// `methods` joined for the `Allow` header, computed once.
    allow: String,
    /// Listeners serving this route; `None` means all.
    listeners: Option<Vec<String>>,
    /// Overrides the listener's minimum body rate.
    pub min_body_rate: Option<crate::config::byte_rate::ByteRate>,
    /// Who may call this route.
    pub auth: crate::config::RouteAuth,
    /// This route's request metrics, registered once.
    pub metrics: Arc<RouteMetrics>,
}

impl Route {
    fn from_config(config: &RouteConfig) -> Self {
        // A name that does not parse is dropped but the restriction stays, so a
        // bad entry can only refuse requests, never allow more of them.
        let methods = (!config.methods.is_empty()).then(|| {
            config
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect::<Vec<_>>()
        });
        let allow = methods
            .iter()
            .flatten()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            name: config.name.clone(),
            upstream: config.upstream.clone(),
            path_prefix: config.path_prefix.clone(),
            rewrite_prefix: config.rewrite_prefix.clone(),
            upstream_host: config
                .upstream_host
                .as_deref()
                .and_then(|host| HeaderValue::from_str(host).ok()),
            max_body_bytes: config.max_body_bytes,
            listeners: (!config.listeners.is_empty()).then(|| config.listeners.clone()),
            min_body_rate: config.min_body_rate,
            timeout: config.timeout,
            methods,
            allow,
            auth: config.auth.clone(),
            metrics: Arc::new(RouteMetrics::new(&config.name, Some(&config.upstream))),
        }
    }

    /// Whether this route's prefix covers `path` on a segment boundary: `/api`
    /// covers `/api` and `/api/x` but not `/apix`; a prefix ending in '/' covers
    /// everything below it.
    fn matches_path(&self, path: &str) -> bool {
        path.strip_prefix(self.path_prefix.as_str())
            .is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('/') || self.path_prefix.ends_with('/')
            })
    }

    /// Whether the listener called `listener` serves this route.
    fn serves(&self, listener: &str) -> bool {
        self.listeners
            .as_ref()
            .is_none_or(|names| names.iter().any(|name| name == listener))
    }

    fn allows(&self, method: &Method) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|methods| methods.contains(method))
    }

    /// The path to send upstream: the matched prefix replaced by
    /// `rewrite_prefix`, joined with exactly one '/' (prefix `/api/` → `/` maps
    /// `/api/x` to `/x`; `/api` → `/v1` maps `/api/x` to `/v1/x` and `/api` to
    /// `/v1`). Without a rewrite, or for a path this route did not match, the
    /// path is returned as it is. The query is the caller's to append.
    pub fn rewrite<'a>(&self, path: &'a str) -> Cow<'a, str> {
        let Some(rewrite) = &self.rewrite_prefix else {
            return Cow::Borrowed(path);
        };
        let Some(rest) = path.strip_prefix(self.path_prefix.as_str()) else {
            return Cow::Borrowed(path);
        };
        let mut out = String::with_capacity(rewrite.len() + rest.len() + 1);
        if rest.is_empty() {
            out.push_str(rewrite);
        } else if rest.starts_with('/') {
            out.push_str(rewrite.trim_end_matches('/'));
            out.push_str(rest);
        } else {
            out.push_str(rewrite);
            if !rewrite.ends_with('/') {
                out.push('/');
            }
            out.push_str(rest);
        }
        if out.is_empty() {
            out.push('/');
        }
        Cow::Owned(out)
    }
}

/// Every route, grouped by how specifically it names the host.
///
/// Each group lists route indexes by descending prefix length (config order on
/// ties), so the first match in a group is the longest prefix.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Exact host (lower case, no trailing dot) → routes.
    exact: HashMap<String, Vec<usize>>,
    /// Wildcard suffix with its leading dot (`.example.com` for `*.example.com`)
    /// → routes. Looked up once per dot in the request host, longest first.
    wildcard: HashMap<String, Vec<usize>>,
    /// Routes without `hosts`.
    any: Vec<usize>,
}

impl RouteTable {
    /// Builds the table from routes that already passed config validation.
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut table = Self {
            routes: routes.iter().map(Route::from_config).collect(),
            ..Self::default()
        };
        for (index, config) in routes.iter().enumerate() {
            if config.hosts.is_empty() {
                table.any.push(index);
            }
            for host in &config.hosts {
                let host = host.trim_end_matches('.').to_ascii_lowercase();
                let group = match host.strip_prefix('*') {
                    Some(suffix) => table.wildcard.entry(suffix.to_owned()).or_default(),
                    None => table.exact.entry(host).or_default(),
                };
                if !group.contains(&index) {
                    group.push(index);
                }
            }
        }
        let routes = &table.routes;
        let by_prefix_len = |group: &mut Vec<usize>| {
            group.sort_by_key(|&i| std::cmp::Reverse(routes[i].path_prefix.len()));
        };
        table.exact.values_mut().for_each(by_prefix_len);
        table.wildcard.values_mut().for_each(by_prefix_len);
        by_prefix_len(&mut table.any);
        table
    }

    /// The route for a request on the listener called `listener`: `host` is
    /// the `Host` header or `:authority` (any case, optional port, optional
    /// trailing dot), `path` the normalized path.
    ///
    /// Host groups are tried from the most specific down (exact name, then
    /// wildcards from the longest suffix, then routes for any host); the first
    /// group with a matching prefix decides, and within it the longest prefix.
    /// Listener bindings never make the search fall through to a less
    /// specific route: when the routes that decide are all bound to other
    /// listeners the answer is [`RouteError::Misdirected`], so a host meant for
    /// one listener is never served by another listener's catch-all.
    /// Methods are checked only on the chosen route, so a 405 names what the
    /// route the client meant would accept.
    pub fn find(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
        listener: &str,
    ) -> Result<&Route, RouteError> {
        let host = host.map(normalize_host);
        let host = host.as_deref().filter(|h| !h.is_empty());
        for group in self.host_groups(host) {
            let mut matching = group
                .iter()
                .map(|&i| &self.routes[i])
                .filter(|route| route.matches_path(path))
                .peekable();
            let Some(longest) = matching.peek().map(|route| route.path_prefix.len()) else {
                continue;
            };
            let route = matching
                .take_while(|route| route.path_prefix.len() == longest)
                .find(|route| route.serves(listener))
                .ok_or(RouteError::Misdirected)?;
            return if route.allows(method) {
                Ok(route)
            } else {
                Err(RouteError::MethodNotAllowed {
                    allow: route.allow.clone(),
                })
            };
        }
        Err(RouteError::NotFound)
    }

    /// The route groups that apply to `host`, most specific first.
    fn host_groups<'a>(&'a self, host: Option<&'a str>) -> impl Iterator<Item = &'a Vec<usize>> {
        let exact = host.and_then(|h| self.exact.get(h));
        // `*.example.com` needs at least one label before `.example.com`, so a
        // dot at position 0 (never produced by `normalize_host`) is skipped.
        let wildcards = host.into_iter().flat_map(move |h| {
            h.match_indices('.')
                .filter(|&(at, _)| at > 0)
                .filter_map(move |(at, _)| self.wildcard.get(&h[at..]))
        });
        exact
            .into_iter()
            .chain(wildcards)
            .chain(std::iter::once(&self.any))
    }
}

/// `gateway check`'s warnings: a route served on a listener that requires
/// client certificates whose host and prefix another listener, without that
/// requirement, also answers (through the same route or another one), so the
/// certificate can be skipped by sending the request there. Asked of the same
/// route table the proxy uses, so shadowing by more specific routes counts.
pub fn listener_warnings(listeners: &[ListenerConfig], routes: &[RouteConfig]) -> Vec<String> {
    let table = RouteTable::new(routes);
    let mut warnings = Vec::new();
    for strict in listeners
        .iter()
        .filter(|l| l.requires_client_certificates())
    {
        for route in routes.iter().filter(|r| r.serves(&strict.name)) {
            // One host per pattern: the name itself, a name under a wildcard,
            // or none for a route that serves any host.
            let hosts: Vec<Option<String>> = if route.hosts.is_empty() {
                vec![None]
            } else {
                route
                    .hosts
                    .iter()
                    .map(|h| Some(h.replace('*', "any")))
                    .collect()
            };
            for open in listeners
                .iter()
                .filter(|l| !l.requires_client_certificates())
            {
                for host in &hosts {
                    let reached = match table.find(
                        host.as_deref(),
                        &route.path_prefix,
                        &Method::GET,
                        &open.name,
                    ) {
                        Ok(other) => Some(other.name.as_str()),
                        Err(RouteError::MethodNotAllowed { .. }) => Some("(405)"),
                        Err(_) => None,
                    };
                    if let Some(other) = reached {
                        warnings.push(format!(
                            "route {:?}: {}{} is served on listener {:?}, which requires client \
                             certificates, and also on listener {:?} (route {other:?}), which does \
                             not; bind the routes with `listeners = [...]`",
                            route.name,
                            host.as_deref().unwrap_or("any host"),
                            route.path_prefix,
                            strict.name,
                            open.name,
                        ));
                    }
                }
            }
        }
    }
    warnings
}

/// Lower-cases a host and strips its port and trailing dot; borrows when it is
/// already in that form, which is the common case.
pub(crate) fn normalize_host(host: &str) -> Cow<'_, str> {
    let name = if host.starts_with('[') {
        // IPv6 literal: keep the brackets, drop anything after them.
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, hosts: &[&str], prefix: &str) -> RouteConfig {
        RouteConfig {
            name: name.to_owned(),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            listeners: Vec::new(),
            min_body_rate: None,
            path_prefix: prefix.to_owned(),
            methods: Vec::new(),
            upstream: format!("pool-{name}"),
            rewrite_prefix: None,
            upstream_host: None,
            max_body_bytes: None,
            timeout: Duration::from_secs(30),
            auth: Default::default(),
            waf: Default::default(),
            limits: Vec::new(),
            quotas: Vec::new(),
        }
    }

    fn name<'a>(table: &'a RouteTable, host: Option<&str>, path: &str) -> Option<&'a str> {
        table
            .find(host, path, &Method::GET, "public")
            .ok()
            .map(|r| r.name.as_str())
    }

    #[test]
    fn empty_table_finds_nothing() {
        let table = RouteTable::new(&[]);
        assert_eq!(
            table
                .find(Some("a.example"), "/", &Method::GET, "public")
                .map(|r| &r.name),
            Err(RouteError::NotFound)
        );
    }

    #[test]
    fn prefix_matches_on_segment_boundary() {
        let table = RouteTable::new(&[route("api", &[], "/api")]);
        assert_eq!(name(&table, None, "/api"), Some("api"));
        assert_eq!(name(&table, None, "/api/"), Some("api"));
        assert_eq!(name(&table, None, "/api/x/y"), Some("api"));
        assert_eq!(name(&table, None, "/apix"), None);
        assert_eq!(name(&table, None, "/ap"), None);
        assert_eq!(name(&table, None, "/"), None);
    }

    #[test]
    fn prefix_with_trailing_slash() {
        let table = RouteTable::new(&[route("api", &[], "/api/")]);
        assert_eq!(name(&table, None, "/api/x"), Some("api"));
        assert_eq!(name(&table, None, "/api/"), Some("api"));
        assert_eq!(name(&table, None, "/api"), None);
        assert_eq!(name(&table, None, "/apix"), None);
    }

    #[test]
    fn root_prefix_matches_everything() {
        let table = RouteTable::new(&[route("root", &[], "/")]);
        for path in ["/", "/a", "/a/b/"] {
            assert_eq!(name(&table, None, path), Some("root"), "{path}");
        }
    }

    #[test]
    fn longest_prefix_wins_whatever_the_order() {
        let table = RouteTable::new(&[
            route("root", &[], "/"),
            route("api", &[], "/api"),
            route("v1", &[], "/api/v1"),
        ]);
        assert_eq!(name(&table, None, "/api/v1/users"), Some("v1"));
        assert_eq!(name(&table, None, "/api/v2"), Some("api"));
        assert_eq!(name(&table, None, "/api/v1x"), Some("api"));
        assert_eq!(name(&table, None, "/other"), Some("root"));
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any() {
        let table = RouteTable::new(&[
            route("any", &[], "/"),
            route("wild", &["*.example.com"], "/"),
            route("exact", &["api.example.com"], "/"),
        ]);
        assert_eq!(name(&table, Some("api.example.com"), "/"), Some("exact"));
        assert_eq!(name(&table, Some("www.example.com"), "/"), Some("wild"));
        assert_eq!(name(&table, Some("other.test"), "/"), Some("any"));
        assert_eq!(name(&table, None, "/"), Some("any"));
    }

    #[test]
    fn wildcard_matches_deeper_names_but_not_the_apex() {
        let table = RouteTable::new(&[route("wild", &["*.example.com"], "/")]);
        assert_eq!(name(&table, Some("a.example.com"), "/"), Some("wild"));
        assert_eq!(name(&table, Some("a.b.example.com"), "/"), Some("wild"));
        assert_eq!(name(&table, Some("example.com"), "/"), None);
        assert_eq!(name(&table, Some(".example.com"), "/"), None);
        assert_eq!(name(&table, Some("badexample.com"), "/"), None);
        assert_eq!(name(&table, Some("example.com.evil"), "/"), None);
    }

    #[test]
    fn longer_wildcard_suffix_wins() {
        let table = RouteTable::new(&[
            route("short", &["*.example.com"], "/"),
            route("long", &["*.eu.example.com"], "/"),
        ]);
        assert_eq!(name(&table, Some("a.eu.example.com"), "/"), Some("long"));
        assert_eq!(name(&table, Some("a.b.eu.example.com"), "/"), Some("long"));
        assert_eq!(name(&table, Some("eu.example.com"), "/"), Some("short"));
        assert_eq!(name(&table, Some("a.us.example.com"), "/"), Some("short"));
    }

    #[test]
    fn falls_through_to_less_specific_host_group() {
        let table = RouteTable::new(&[
            route("exact-api", &["api.example.com"], "/api"),
            route("wild-static", &["*.example.com"], "/static"),
            route("any", &[], "/"),
        ]);
        let host = Some("api.example.com");
        assert_eq!(name(&table, host, "/api/x"), Some("exact-api"));
        assert_eq!(name(&table, host, "/static/x"), Some("wild-static"));
        assert_eq!(name(&table, host, "/other"), Some("any"));
    }

    #[test]
    fn specific_host_group_wins_over_longer_prefix_elsewhere() {
        let table = RouteTable::new(&[
            route("any-deep", &[], "/api/v1/users"),
            route("exact-root", &["api.example.com"], "/"),
        ]);
        assert_eq!(
            name(&table, Some("api.example.com"), "/api/v1/users"),
            Some("exact-root")
        );
        assert_eq!(
            name(&table, Some("other.example"), "/api/v1/users"),
            Some("any-deep")
        );
    }

    #[test]
    fn host_is_lower_cased_and_loses_port_and_trailing_dot() {
        let table = RouteTable::new(&[
            route("exact", &["API.Example.com"], "/"),
            route("wild", &["*.example.org."], "/"),
        ]);
        for host in [
            "api.example.com",
            "API.EXAMPLE.COM",
            "api.example.com:8443",
            "api.example.com.",
            "Api.Example.Com.:443",
        ] {
            assert_eq!(name(&table, Some(host), "/"), Some("exact"), "{host}");
        }
        assert_eq!(name(&table, Some("WWW.example.ORG:443"), "/"), Some("wild"));
        assert_eq!(name(&table, Some("www.example.org."), "/"), Some("wild"));
    }

    #[test]
    fn ipv6_host_with_port() {
        assert_eq!(normalize_host("[2001:db8::1]:8443"), "[2001:db8::1]");
        assert_eq!(normalize_host("[2001:DB8::1]"), "[2001:db8::1]");
        assert_eq!(normalize_host("198.18.0.1:443"), "198.18.0.1");
        assert_eq!(normalize_host("example.com:"), "example.com");
        assert_eq!(normalize_host("example.com"), "example.com");
        assert!(matches!(normalize_host("example.com"), Cow::Borrowed(_)));
        let table = RouteTable::new(&[route("any", &[], "/")]);
        assert_eq!(name(&table, Some("[2001:db8::1]:8443"), "/"), Some("any"));
    }

    #[test]
    fn method_restriction_gives_allow_list() {
        let mut config = route("api", &[], "/api");
        config.methods = vec!["GET".to_owned(), "POST".to_owned()];
        let table = RouteTable::new(&[config, route("root", &[], "/")]);
        assert!(table.find(None, "/api/x", &Method::GET, "public").is_ok());
        assert!(table.find(None, "/api/x", &Method::POST, "public").is_ok());
        assert_eq!(
            table
                .find(None, "/api/x", &Method::DELETE, "public")
                .map(|r| &r.name),
            Err(RouteError::MethodNotAllowed {
                allow: "GET, POST".to_owned()
            })
        );
        // The chosen route decides; a less specific route does not take over.
        assert!(
            table
                .find(None, "/other", &Method::DELETE, "public")
                .is_ok()
        );
    }

    #[test]
    fn unparsable_method_keeps_the_restriction() {
        let mut config = route("api", &[], "/");
        config.methods = vec!["BAD METHOD".to_owned()];
        let table = RouteTable::new(&[config]);
        assert_eq!(
            table
                .find(None, "/", &Method::GET, "public")
                .map(|r| &r.name),
            Err(RouteError::MethodNotAllowed {
                allow: String::new()
            })
        );
    }

    #[test]
    fn route_fields_are_carried_over() {
        let mut config = route("api", &["api.example.com"], "/api");
        config.rewrite_prefix = Some("/v1".to_owned());
        config.upstream_host = Some("internal.api".to_owned());
        config.max_body_bytes = Some(1024);
        config.timeout = Duration::from_secs(5);
        let table = RouteTable::new(&[config]);
        let found = table
            .find(Some("api.example.com"), "/api", &Method::PUT, "public")
            .expect("route");
        assert_eq!(found.upstream, "pool-api");
        assert_eq!(found.path_prefix, "/api");
        assert_eq!(found.rewrite_prefix.as_deref(), Some("/v1"));
        assert_eq!(
            found.upstream_host,
            Some(HeaderValue::from_static("internal.api"))
        );
        assert_eq!(found.max_body_bytes, Some(1024));
        assert_eq!(found.timeout, Duration::from_secs(5));
        assert_eq!(found.methods, None);
    }

    fn bound(name: &str, hosts: &[&str], prefix: &str, listeners: &[&str]) -> RouteConfig {
        RouteConfig {
            listeners: listeners.iter().map(|l| (*l).to_owned()).collect(),
            ..route(name, hosts, prefix)
        }
    }

    fn on<'a>(
        table: &'a RouteTable,
        listener: &str,
        host: &str,
        path: &str,
    ) -> Result<&'a str, RouteError> {
        table
            .find(Some(host), path, &Method::GET, listener)
            .map(|r| r.name.as_str())
    }

    #[test]
    fn a_host_bound_to_another_listener_is_misdirected_not_caught_by_a_catch_all() {
        let table = RouteTable::new(&[
            bound("admin", &["admin.example"], "/", &["mtls"]),
            bound("admin-docs", &["admin.example"], "/docs", &["public"]),
            route("catch-all", &[], "/"),
            bound("wild", &["*.internal.example"], "/", &["mtls"]),
        ]);
        assert_eq!(on(&table, "mtls", "admin.example", "/x"), Ok("admin"));
        assert_eq!(
            on(&table, "public", "ADMIN.example.:443", "/x"),
            Err(RouteError::Misdirected)
        );
        assert_eq!(
            on(&table, "public", "admin.example", "/docs/a"),
            Ok("admin-docs")
        );
        // The longer prefix decides even where a shorter one serves this listener.
        assert_eq!(
            on(&table, "mtls", "admin.example", "/docs"),
            Err(RouteError::Misdirected)
        );
        assert_eq!(
            on(&table, "public", "a.internal.example", "/"),
            Err(RouteError::Misdirected)
        );
        assert_eq!(on(&table, "public", "other.example", "/"), Ok("catch-all"));
        assert_eq!(on(&table, "mtls", "other.example", "/"), Ok("catch-all"));
    }

    #[test]
    fn the_same_host_and_prefix_may_go_to_different_pools_per_listener() {
        let table = RouteTable::new(&[
            bound("outside", &["api.example"], "/", &["public"]),
            bound("inside", &["api.example"], "/", &["mtls", "internal"]),
        ]);
        assert_eq!(on(&table, "public", "api.example", "/"), Ok("outside"));
        assert_eq!(on(&table, "internal", "api.example", "/"), Ok("inside"));
        assert_eq!(
            on(&table, "other", "api.example", "/"),
            Err(RouteError::Misdirected)
        );
    }

    fn rewrite(prefix: &str, rewrite: Option<&str>, path: &str) -> String {
        let mut config = route("r", &[], prefix);
        config.rewrite_prefix = rewrite.map(str::to_owned);
        Route::from_config(&config).rewrite(path).into_owned()
    }

    #[test]
    fn rewrite_joins_with_one_slash() {
        assert_eq!(rewrite("/api/", Some("/"), "/api/x"), "/x");
        assert_eq!(rewrite("/api/", Some("/"), "/api/"), "/");
        assert_eq!(rewrite("/api/", Some("/v1"), "/api/x"), "/v1/x");
        assert_eq!(rewrite("/api/", Some("/v1/"), "/api/x"), "/v1/x");
        assert_eq!(rewrite("/api", Some("/v1"), "/api"), "/v1");
        assert_eq!(rewrite("/api", Some("/v1"), "/api/x"), "/v1/x");
        assert_eq!(rewrite("/api", Some("/v1/"), "/api/x"), "/v1/x");
        assert_eq!(rewrite("/api", Some("/"), "/api"), "/");
        assert_eq!(rewrite("/api", Some("/"), "/api/x/"), "/x/");
        assert_eq!(rewrite("/", Some("/v1"), "/x"), "/v1/x");
        assert_eq!(rewrite("/", Some("/v1"), "/"), "/v1");
    }

    #[test]
    fn rewrite_without_rewrite_prefix_keeps_the_path() {
        assert_eq!(rewrite("/api", None, "/api/x"), "/api/x");
        assert_eq!(rewrite("/api", Some("/v1"), "/other"), "/other");
    }
}

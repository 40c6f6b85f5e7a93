//! The scanner on whole byte streams, fed at once and one byte at a time.

use super::*;

const HOST: &str = "Host: api.test\r\n";

/// What hyper would read from `input`, and how the stream ends; the same
/// whether the bytes come at once or one by one.
fn scan(input: &[u8]) -> (Vec<u8>, Option<End>) {
    let mut whole = Scanner::new(16 * 1024, 100);
    whole.feed(input);
    let mut bytewise = Scanner::new(16 * 1024, 100);
    for byte in input {
        bytewise.feed(std::slice::from_ref(byte));
    }
    assert_eq!(
        whole.out,
        bytewise.out,
        "{:?}",
        String::from_utf8_lossy(input)
    );
    assert_eq!(
        whole.end,
        bytewise.end,
        "{:?}",
        String::from_utf8_lossy(input)
    );
    (whole.out.to_vec(), whole.end)
}

fn refused(input: &str) -> FramingError {
    let mut scanner = Scanner::new(16 * 1024, 100);
    scanner.feed(input.as_bytes());
    let (out, end) = scan(input.as_bytes());
    if let Some(err) = scanner.take_refused() {
        assert!(out.ends_with(UNPARSABLE), "{input:?}");
        assert_eq!(end, Some(End::Eof), "{input:?}");
        return err;
    }
    match end {
        Some(End::Error(err)) => err,
        other => panic!("{input:?} was not refused: {other:?}"),
    }
}

#[test]
fn sound_messages_pass_unchanged() {
    let stream = format!(
        "\r\nGET /a HTTP/1.1\r\n{HOST}\r\n\
         POST /b HTTP/1.1\r\n{HOST}Content-Length: 5\r\n\r\nhello\
         POST /c HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked\r\n\r\n\
         5;name=value;q=\"a \\\" b\"\r\nhello\r\n1\r\n!\r\n0\r\nX-Sum: 1\r\n\r\n\
         GET https://api.test/d HTTP/1.1\r\nhost: API.test\r\n\r\n\
         OPTIONS * HTTP/1.1\r\nHost: [2001:2::1]:8443\r\n\r\n\
         GET / HTTP/1.0\r\nHost: 198.18.0.1\r\nContent-Length: 0\r\n\r\n"
    );
    let (out, end) = scan(stream.as_bytes());
    assert_eq!(String::from_utf8_lossy(&out), stream);
    assert_eq!(end, None);
}

#[test]
fn body_bytes_are_not_read_as_heads() {
    let stream =
        format!("POST / HTTP/1.1\r\n{HOST}Content-Length: 19\r\n\r\nGET /x HTTP/1.1\r\n\r\n\r\n");
    let (out, end) = scan(stream.as_bytes());
    assert_eq!(out, stream.as_bytes());
    assert_eq!(end, None);
}

#[test]
fn ambiguous_lengths_are_refused() {
    let post = |fields: &str| format!("POST / HTTP/1.1\r\n{HOST}{fields}\r\n0\r\n\r\n");
    for (fields, want) in [
        (
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
            FramingError::LengthAndEncoding,
        ),
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            FramingError::LengthAndEncoding,
        ),
        (
            "Content-Length: 3\r\nContent-Length: 3\r\n",
            FramingError::DuplicateLength,
        ),
        ("Content-Length: 010\r\n", FramingError::BadLength),
        ("Content-Length: 00\r\n", FramingError::BadLength),
        ("Content-Length: +3\r\n", FramingError::BadLength),
        ("Content-Length: -3\r\n", FramingError::BadLength),
        ("Content-Length: 3, 3\r\n", FramingError::BadLength),
        ("Content-Length: 3 \r\n", FramingError::BadLength),
        ("Content-Length:  3\r\n", FramingError::BadLength),
        ("Content-Length:\t3\r\n", FramingError::BadLength),
        ("Content-Length: 0x3\r\n", FramingError::BadLength),
        ("Content-Length: 3e0\r\n", FramingError::BadLength),
        ("Content-Length: \r\n", FramingError::BadLength),
        (
            "Content-Length: 99999999999999999999\r\n",
            FramingError::BadLength,
        ),
        ("Transfer-Encoding: Chunked\r\n", FramingError::BadEncoding),
        (
            "Transfer-Encoding: chunked, chunked\r\n",
            FramingError::BadEncoding,
        ),
        (
            "Transfer-Encoding: gzip, chunked\r\n",
            FramingError::BadEncoding,
        ),
        ("Transfer-Encoding: xchunked\r\n", FramingError::BadEncoding),
        ("Transfer-Encoding: chunked \r\n", FramingError::BadEncoding),
        ("Transfer-Encoding:\tchunked\r\n", FramingError::BadEncoding),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            FramingError::BadEncoding,
        ),
        ("Transfer-Encoding: identity\r\n", FramingError::BadEncoding),
        (
            "Transfer-Encoding : chunked\r\n",
            FramingError::MalformedHead,
        ),
        ("X-Folded: a\r\n b\r\n", FramingError::MalformedHead),
    ] {
        assert_eq!(refused(&post(fields)), want, "{fields:?}");
    }
    let http10 = format!("POST / HTTP/1.0\r\n{HOST}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(refused(&http10), FramingError::BadEncoding);
}

#[test]
fn host_rules() {
    let get = |target: &str, fields: &str| format!("GET {target} HTTP/1.1\r\n{fields}\r\n");
    for (target, fields, want) in [
        ("/", "", FramingError::MissingHost),
        (
            "/",
            "Host: a.test\r\nHost: a.test\r\n",
            FramingError::DuplicateHost,
        ),
        (
            "/",
            "Host: a.test\r\nhost: b.test\r\n",
            FramingError::DuplicateHost,
        ),
        ("/", "Host: \r\n", FramingError::InvalidHost),
        ("/", "Host: a b\r\n", FramingError::InvalidHost),
        ("/", "Host: user@a.test\r\n", FramingError::InvalidHost),
        ("/", "Host: a.test:99999\r\n", FramingError::InvalidHost),
        ("/", "Host: a.test:\r\n", FramingError::InvalidHost),
        ("/", "Host: a.test, b.test\r\n", FramingError::InvalidHost),
        ("/", "Host: [not-v6]\r\n", FramingError::InvalidHost),
        ("/", "Host: a%2etest\r\n", FramingError::InvalidHost),
        (
            "https://b.test/",
            "Host: a.test\r\n",
            FramingError::AuthorityMismatch,
        ),
        (
            "https://a.test:444/",
            "Host: a.test\r\n",
            FramingError::AuthorityMismatch,
        ),
        (
            "https://u@a.test/",
            "Host: a.test\r\n",
            FramingError::AuthorityMismatch,
        ),
        ("ftp://a.test/", "Host: a.test\r\n", FramingError::BadTarget),
        ("*", "Host: a.test\r\n", FramingError::BadTarget),
        (
            "a.test:443",
            "Host: a.test:443\r\n",
            FramingError::BadTarget,
        ),
    ] {
        assert_eq!(refused(&get(target, fields)), want, "{target} {fields:?}");
    }
    let connect = "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n";
    assert_eq!(refused(connect), FramingError::Connect);
}

#[test]
fn bare_line_endings_are_refused() {
    for head in [
        "GET / HTTP/1.1\nHost: a.test\n\n",
        "GET / HTTP/1.1\r\nHost: a.test\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.test\rX: y\r\n\r\n",
        "\nGET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
    ] {
        assert_eq!(refused(head), FramingError::BareLineEnding, "{head:?}");
    }
}

#[test]
fn malformed_chunked_framing_is_refused_at_the_first_bad_byte() {
    let head = format!("POST / HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked\r\n\r\n");
    for (body, want) in [
        ("10000000000000000\r\n", FramingError::BadChunkSize),
        (
            "00000000000000001\r\na\r\n0\r\n\r\n",
            FramingError::BadChunkSize,
        ),
        (" 5\r\nhello\r\n0\r\n\r\n", FramingError::BadChunkSize),
        ("5 \r\nhello\r\n0\r\n\r\n", FramingError::BadChunkSize),
        ("\t5\r\nhello\r\n0\r\n\r\n", FramingError::BadChunkSize),
        ("0x5\r\nhello\r\n0\r\n\r\n", FramingError::BadChunkSize),
        ("-5\r\nhello\r\n0\r\n\r\n", FramingError::BadChunkSize),
        ("+5\r\nhello\r\n0\r\n\r\n", FramingError::BadChunkSize),
        ("\r\nhello\r\n0\r\n\r\n", FramingError::BadChunkSize),
        ("5\nhello\r\n0\r\n\r\n", FramingError::BadChunkSize),
        ("5;a\nhello\r\n0\r\n\r\n", FramingError::BadChunkExtension),
        (
            "5;a=b\nc\r\nhello\r\n0\r\n\r\n",
            FramingError::BadChunkExtension,
        ),
        (
            "5; a\r\nhello\r\n0\r\n\r\n",
            FramingError::BadChunkExtension,
        ),
        ("5;\r\nhello\r\n0\r\n\r\n", FramingError::BadChunkExtension),
        (
            "5;a=\"b\r\nhello\r\n0\r\n\r\n",
            FramingError::BadChunkExtension,
        ),
        (
            "5;a=b c\r\nhello\r\n0\r\n\r\n",
            FramingError::BadChunkExtension,
        ),
        ("5\r\nhello!\r\n0\r\n\r\n", FramingError::ChunkOverrun),
        ("5\r\nhello\n0\r\n\r\n", FramingError::ChunkOverrun),
        (
            "5\r\nhello\r\n0\r\nX-Sum 1\r\n\r\n",
            FramingError::BadTrailer,
        ),
        (
            "5\r\nhello\r\n0\r\nX-Sum: 1\n\r\n",
            FramingError::BadTrailer,
        ),
        (
            "5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n",
            FramingError::BadTrailer,
        ),
        (
            "5\r\nhello\r\n0\r\nX: a\r\n b\r\n\r\n",
            FramingError::BadTrailer,
        ),
        ("5\r\nhello\r\n0\n\r\n", FramingError::BadChunkSize),
        ("5\r\nhello\r\n0\r\r\n", FramingError::BadChunkLine),
        ("5\r\nhello\r\r\n0\r\n\r\n", FramingError::BadChunkLine),
    ] {
        let stream = format!("{head}{body}GET /canary HTTP/1.1\r\n{HOST}\r\n");
        assert_eq!(refused(&stream), want, "{body:?}");
        let (out, _) = scan(stream.as_bytes());
        assert!(
            !String::from_utf8_lossy(&out).contains("canary"),
            "{body:?}: nothing after the fault is passed on"
        );
    }
}

#[test]
fn a_refused_head_passes_nothing_of_itself_or_what_follows() {
    let stream = format!(
        "GET /first HTTP/1.1\r\n{HOST}\r\nPOST / HTTP/1.1\r\n{HOST}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhelloGET /canary HTTP/1.1\r\n{HOST}\r\n"
    );
    let (out, end) = scan(stream.as_bytes());
    let want = format!("GET /first HTTP/1.1\r\n{HOST}\r\n");
    let mut expected = want.into_bytes();
    expected.extend_from_slice(UNPARSABLE);
    assert_eq!(out, expected);
    assert_eq!(end, Some(End::Eof));
}

#[test]
fn oversized_and_crowded_heads_are_left_to_hyper() {
    let mut scanner = Scanner::new(64, 100);
    scanner.feed(
        format!(
            "GET / HTTP/1.1\r\n{HOST}X-Long: {}\r\n\r\n",
            "a".repeat(100)
        )
        .as_bytes(),
    );
    assert_eq!(scanner.end(), Some(End::Eof));
    assert!(scanner.take_refused().is_none());
    let mut scanner = Scanner::new(16 * 1024, 2);
    scanner.feed(format!("GET / HTTP/1.1\r\n{HOST}A: 1\r\nB: 2\r\n\r\n").as_bytes());
    assert_eq!(scanner.end(), Some(End::Eof));
    assert!(scanner.take_refused().is_none());
}

#[test]
fn the_head_limit_holds_at_the_exact_byte_however_the_bytes_are_split() {
    // A long value (a bearer token) ending exactly at the limit, one byte
    // under it and one over it; fed at once, one byte at a time and split at
    // every offset.
    let start = format!("GET / HTTP/1.1\r\n{HOST}Authorization: Bearer ");
    let max_head = 256;
    for fill in [
        max_head - start.len() - 5,
        max_head - start.len() - 4,
        max_head,
    ] {
        let head = format!("{start}{}\r\n\r\n", "t".repeat(fill));
        let mut whole = Scanner::new(max_head, 100);
        whole.feed(head.as_bytes());
        for split in 0..head.len() {
            let mut parts = Scanner::new(max_head, 100);
            parts.feed(&head.as_bytes()[..split]);
            parts.feed(&head.as_bytes()[split..]);
            assert_eq!(
                (&parts.out, parts.end),
                (&whole.out, whole.end),
                "split at {split}"
            );
        }
        let mut bytewise = Scanner::new(max_head, 100);
        for byte in head.as_bytes() {
            bytewise.feed(std::slice::from_ref(byte));
        }
        assert_eq!((&bytewise.out, bytewise.end), (&whole.out, whole.end));
        if head.len() <= max_head {
            assert_eq!(
                &whole.out[..],
                head.as_bytes(),
                "a head within the limit passes"
            );
            assert_eq!(whole.end, None);
        } else {
            // hyper gets one byte over its limit, and nothing after it.
            assert_eq!(whole.out.len(), max_head + 1);
            assert_eq!(whole.end, Some(End::Eof));
        }
    }
}

#[test]
fn hosts() {
    for good in [
        "api.test",
        "API.test:8443",
        "198.18.0.1",
        "198.18.0.1:1",
        "[2001:2::1]",
        "[::1]:443",
        "under_score.test",
    ] {
        assert!(valid_host(good.as_bytes()), "{good}");
    }
    for bad in [
        "",
        ":443",
        "a.test:",
        "a.test:0x1",
        "a.test:65536",
        "[::1",
        "[::1]x",
        "a b",
        "a\tb",
        "a@b",
        "a/b",
        "a?b",
        "a#b",
        "a%41",
        "[fe80::1%eth0]",
    ] {
        assert!(!valid_host(bad.as_bytes()), "{bad}");
    }
}

#[test]
fn http2_authority_and_host_must_agree() {
    let uri = |s: &str| s.parse::<Uri>().expect("uri");
    let hosts = |values: &[&str]| {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(header::HOST, value.parse().expect("value"));
        }
        map
    };
    assert_eq!(check_host(&uri("https://a.test/"), &hosts(&[])), Ok(()));
    assert_eq!(
        check_host(&uri("https://a.test/"), &hosts(&["A.test"])),
        Ok(())
    );
    assert_eq!(check_host(&uri("/"), &hosts(&["a.test"])), Ok(()));
    assert_eq!(
        check_host(&uri("https://a.test/"), &hosts(&["b.test"])),
        Err(FramingError::AuthorityMismatch)
    );
    assert_eq!(
        check_host(&uri("/"), &hosts(&[])),
        Err(FramingError::MissingHost)
    );
    assert_eq!(
        check_host(&uri("/"), &hosts(&["a.test", "a.test"])),
        Err(FramingError::DuplicateHost)
    );
    assert_eq!(
        check_host(&uri("/"), &hosts(&["a b"])),
        Err(FramingError::InvalidHost)
    );
}

//! Keeps the documentation's links true: every relative link in the top-level
//! `*.md` files and `docs/` names a file of the repository (and a heading of it, for
//! `#anchor`s into Markdown), and no link leaves the repository except to a web page.
//! Runs with the unit tests (`cargo xtask test`, step d), so a moved heading or file
//! fails the suite instead of leaving a dead link.
//!
//! A small scanner, not a full CommonMark parser: it skips fenced code blocks and
//! code spans, reads inline links and images (`[text](dest "title")`), reference
//! definitions (`[label]: dest`) and autolinks (`<https://…>`), and takes anchors
//! from ATX headings (`## Title`) with GitHub's slug rules.

use std::{
    collections::HashMap,
    fs,
    path::{Component, Path, PathBuf},
};

/// A link that is wrong, and where.
#[derive(Debug, PartialEq, Eq)]
struct Problem {
    file: PathBuf,
    line: usize,
    dest: String,
    why: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: ({}) {}",
            self.file.display(),
            self.line,
            self.dest,
            self.why
        )
    }
}

/// The documents whose links are checked: the top-level `*.md` files and every
/// `*.md` under `docs/`, as paths relative to `root`.
fn documents(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(root)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") && path.is_file() {
            found.push(path);
        }
    }
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                found.push(path);
            }
        }
    }
    let mut relative: Vec<PathBuf> = found
        .iter()
        .filter_map(|p| p.strip_prefix(root).ok().map(Path::to_path_buf))
        .collect();
    relative.sort();
    Ok(relative)
}

/// Each line of `text` with fenced code blocks blanked and code spans replaced by
/// `x`s of the same length, so neither yields links or headings.
fn prose_lines(text: &str) -> Vec<String> {
    let mut fence: Option<String> = None;
    let mut lines = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let marker: String = trimmed
            .chars()
            .take_while(|&c| c == '`' || c == '~')
            .collect();
        let opens = marker.len() >= 3 && marker.chars().all(|c| c == marker.as_bytes()[0] as char);
        match &fence {
            Some(open) => {
                if opens
                    && marker.starts_with(open.as_str())
                    && trimmed[marker.len()..].trim().is_empty()
                {
                    fence = None;
                }
                lines.push(String::new());
            }
            None if opens => {
                fence = Some(marker);
                lines.push(String::new());
            }
            None => lines.push(blank_code_spans(line)),
        }
    }
    lines
}

/// Replaces every code span (a run of backticks up to the next run of the same
/// length) by `x`s; an unclosed run stays as it is.
fn blank_code_spans(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&c| c == '`').count();
        let close = (i + run..chars.len()).find(|&j| {
            chars[j..].iter().take_while(|&&c| c == '`').count() == run
                && (j == 0 || chars[j - 1] != '`')
        });
        match close {
            Some(j) => {
                out.extend(std::iter::repeat_n('x', j + run - i));
                i = j + run;
            }
            None => {
                out.extend(&chars[i..i + run]);
                i += run;
            }
        }
    }
    out
}

/// The destinations of the links on one prose line.
fn link_destinations(line: &str) -> Vec<String> {
    let mut dests = Vec::new();
    let trimmed = line.trim_start();
    if line.len() - trimmed.len() <= 3
        && trimmed.starts_with('[')
        && let Some(end) = trimmed.find("]:")
        && !trimmed[..end].contains(['(', ']'])
    {
        if let Some(dest) = trimmed[end + 2..].split_whitespace().next() {
            dests.push(
                dest.trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned(),
            );
        }
        return dests;
    }
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let (dest, consumed) = if let Some(inner) = after.strip_prefix('<') {
            let end = inner.find('>').unwrap_or(inner.len());
            (inner[..end].to_owned(), end + 1)
        } else {
            let mut depth = 0usize;
            let mut end = after.len();
            for (k, c) in after.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' if depth == 0 => {
                        end = k;
                        break;
                    }
                    ')' => depth -= 1,
                    c if c.is_whitespace() => {
                        end = k;
                        break;
                    }
                    _ => {}
                }
            }
            (after[..end].to_owned(), end)
        };
        dests.push(dest);
        rest = &after[consumed.min(after.len())..];
    }
    let mut rest = line;
    while let Some(at) = rest.find('<') {
        let after = &rest[at + 1..];
        let end = after.find('>').unwrap_or(0);
        let candidate = &after[..end];
        if candidate.contains("://") && !candidate.contains(char::is_whitespace) {
            dests.push(candidate.to_owned());
        }
        rest = after;
    }
    dests
}

/// The anchors GitHub gives the ATX headings of a Markdown document: the heading's
/// text without markup, lower-cased, with everything but letters, digits, `_`, `-`
/// and spaces removed and each space made a `-`; a repeated slug gets `-1`, `-2`, ….
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    let raw: Vec<&str> = text.lines().collect();
    for (n, line) in prose_lines(text).iter().enumerate() {
        let trimmed = line.trim_start();
        let level = trimmed.chars().take_while(|&c| c == '#').count();
        if line.len() - trimmed.len() > 3
            || !(1..=6).contains(&level)
            || !(trimmed.len() == level || trimmed[level..].starts_with([' ', '\t']))
        {
            continue;
        }
        // The heading's own text (code spans included), without a closing `#` run.
        let heading = raw[n].trim_start()[level..].trim();
        let heading = heading.trim_end_matches('#').trim_end();
        let base = slug(&strip_link_destinations(heading));
        let count = seen.entry(base.clone()).or_insert(0);
        out.push(if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    out
}

/// A heading's text as rendered: `[text](dest)` becomes `text`.
fn strip_link_destinations(heading: &str) -> String {
    let mut out = String::new();
    let mut rest = heading;
    while let Some(at) = rest.find("](") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        rest = after.find(')').map_or("", |end| &after[end + 1..]);
    }
    out.push_str(rest);
    out
}

fn slug(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '_' || c == '-' => Some(c),
            _ => None,
        })
        .collect()
}

/// Decodes `%XX` escapes; anything malformed is kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What is wrong with `dest`, a link in the document `file` (relative to `root`), if
/// anything.
fn check_destination(root: &Path, file: &Path, dest: &str) -> Option<String> {
    if dest.is_empty() {
        return Some("empty link destination".into());
    }
    if let Some(rest) = dest
        .strip_prefix("https://")
        .or_else(|| dest.strip_prefix("http://"))
    {
        return rest
            .is_empty()
            .then(|| "a web link without a host".to_owned());
    }
    if dest.starts_with("mailto:") {
        return None;
    }
    // `scheme:` before any `/`, `?` or `#`: file:, ftp:, … lead outside.
    let head = &dest[..dest.find(['/', '?', '#']).unwrap_or(dest.len())];
    if let Some((scheme, _)) = head.split_once(':')
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return Some("points outside the repository (only http(s) links may)".into());
    }
    let (path, anchor) = match dest.split_once('#') {
        Some((p, a)) => (percent_decode(p), Some(percent_decode(a))),
        None => (percent_decode(dest), None),
    };
    if path.starts_with('/') || path.starts_with('\\') {
        return Some("an absolute path: links must be relative to the document".into());
    }
    let target = if path.is_empty() {
        file.to_path_buf()
    } else {
        let mut resolved = PathBuf::new();
        for part in file
            .parent()
            .unwrap_or(Path::new(""))
            .join(&path)
            .components()
        {
            match part {
                Component::ParentDir => {
                    if !resolved.pop() {
                        return Some("points outside the repository".into());
                    }
                }
                Component::Normal(p) => resolved.push(p),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => {
                    return Some("an absolute path: links must be relative".into());
                }
            }
        }
        resolved
    };
    let full = root.join(&target);
    if !full.exists() {
        return Some(format!("{} does not exist", target.display()));
    }
    let anchor = anchor?;
    if full.extension().is_none_or(|e| e != "md") {
        return None;
    }
    let text = match fs::read_to_string(&full) {
        Ok(text) => text,
        Err(e) => return Some(format!("cannot read {}: {e}", target.display())),
    };
    (!anchors(&text).contains(&anchor)).then(|| {
        format!(
            "{} has no heading with the anchor #{anchor}",
            target.display()
        )
    })
}

/// Every link problem of one document.
fn check_document(root: &Path, file: &Path, text: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (n, line) in prose_lines(text).iter().enumerate() {
        for dest in link_destinations(line) {
            if let Some(why) = check_destination(root, file, &dest) {
                problems.push(Problem {
                    file: file.to_path_buf(),
                    line: n + 1,
                    dest,
                    why,
                });
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives in the workspace")
            .to_path_buf()
    }

    /// The problems `text` would have as the document `file` of this repository.
    fn problems(file: &str, text: &str) -> Vec<String> {
        check_document(&root(), Path::new(file), text)
            .into_iter()
            .map(|p| p.why)
            .collect()
    }

    #[test]
    fn every_document_link_resolves_inside_the_repository() -> anyhow::Result<()> {
        let root = root();
        let docs = documents(&root)?;
        for expected in ["README.md", "BENCHMARKS.md", "docs/configuration.md"] {
            assert!(
                docs.iter().any(|d| d == Path::new(expected)),
                "{expected} is not among the checked documents: {docs:?}"
            );
        }
        let mut all = Vec::new();
        for doc in &docs {
            all.extend(check_document(
                &root,
                doc,
                &fs::read_to_string(root.join(doc))?,
            ));
        }
        let report: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert!(report.is_empty(), "broken links:\n{}", report.join("\n"));
        Ok(())
    }

    #[test]
    fn the_readme_links_every_document_under_docs() -> anyhow::Result<()> {
        let root = root();
        let readme = fs::read_to_string(root.join("README.md"))?;
        for doc in documents(&root)?.iter().filter(|d| d.starts_with("docs")) {
            let link = format!("]({})", doc.display());
            assert!(
                readme.contains(&link),
                "README.md does not link {}",
                doc.display()
            );
        }
        Ok(())
    }

    #[test]
    fn finds_broken_files_and_anchors() {
        assert_eq!(
            problems("README.md", "see [it](docs/no-such-file.md)"),
            ["docs/no-such-file.md does not exist"]
        );
        assert_eq!(
            problems(
                "docs/cli.md",
                "[x](concepts.md#no-such-heading) and [y](#nor-this)"
            ),
            [
                "docs/concepts.md has no heading with the anchor #no-such-heading",
                "docs/cli.md has no heading with the anchor #nor-this",
            ]
        );
        // A link whose text spans lines, and one after a code span.
        assert_eq!(
            problems(
                "docs/cli.md",
                "a [long\ntext](missing.md), `x` [y](gone.md)"
            )
            .len(),
            2
        );
    }

    #[test]
    fn refuses_links_that_leave_the_repository() {
        for dest in [
            "../shared/DESIGN.md",
            "../../etc/passwd",
            "/etc/gateway.toml",
            "file:///usr/share/doc/gateway/README.md",
        ] {
            for doc in ["README.md", "docs/operations.md"] {
                let text = format!("[x]({dest})");
                assert_eq!(problems(doc, &text).len(), 1, "{doc}: {text} passed");
            }
        }
        assert_eq!(problems("README.md", "[x]: ../shared/DESIGN.md").len(), 1);
        assert_eq!(problems("README.md", "<file:///etc/passwd>").len(), 1);
    }

    #[test]
    fn accepts_good_links_and_ignores_code() {
        let text = "[a](docs/concepts.md#what-survives-a-crash), \
                    [b](BENCHMARKS.md), [c](https://example.com/x_(y)), \
                    <https://example.com>, [d](#two-commands), [e](deploy/), \
                    `[f](missing.md)`\n```\n[g](missing.md)\n```\n[h]: docs/cli.md";
        assert_eq!(problems("README.md", text), Vec::<String>::new());
        assert_eq!(
            problems("docs/testing.md", "[x](../README.md#two-commands)"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn slugs_follow_github() {
        let text = "# Title\n## `gateway top`\n### WAF and input validation (`[route.waf]`)\n\
                    ## Abuse control: from a bad request to a dropped packet\n## Title\n\
                    ```\n# not a heading\n```\n## Kernel plane — the run\n## [Linked](x.md) text";
        assert_eq!(
            anchors(text),
            [
                "title",
                "gateway-top",
                "waf-and-input-validation-routewaf",
                "abuse-control-from-a-bad-request-to-a-dropped-packet",
                "title-1",
                "kernel-plane--the-run",
                "linked-text",
            ]
        );
    }
}

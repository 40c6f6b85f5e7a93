//! Secrets in the configuration: a [`Secret`] cannot be printed (Debug,
//! Display and Serialize all give [`REDACTED`]), so `/config`, a log line or an
//! error message shows it only by someone calling [`Secret::expose`] on purpose.
//!
//! Every secret key `KEY` has two siblings: `KEY_file` (a file holding the
//! value, such as a systemd credential) and `KEY_env` (an environment variable
//! holding it). [`resolve`] reads whichever one is given.

use std::{
    fmt,
    io::Read as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize, Serializer};

/// What a secret reads as wherever it is shown.
pub const REDACTED: &str = "[redacted]";

/// A secret file larger than this is refused: a secret is a line, not a log.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// A value that must not be shown: a client secret, a password, a token.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that sends it where it belongs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// A URL that may carry credentials (`user:password@`, a `?token=`): shown, logged
/// and serialized as [`redacted_url`] (scheme, host, port and path only).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(Secret);

impl SecretUrl {
    /// The full URL, for the request that uses it.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    fn secret(&self) -> &Secret {
        &self.0
    }
}

impl From<Secret> for SecretUrl {
    fn from(secret: Secret) -> Self {
        Self(secret)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({self})")
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redacted_url(self.expose()))
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `url` as `scheme://host[:port]/path`: without user information, query and
/// fragment, where credentials and tokens travel. Something that does not parse
/// as an absolute URL is shown as [`REDACTED`].
pub fn redacted_url(url: &str) -> String {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return REDACTED.to_owned();
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return REDACTED.to_owned();
    };
    let port = authority
        .port_u16()
        .map(|port| format!(":{port}"))
        .unwrap_or_default();
    format!("{scheme}://{}{port}{}", authority.host(), uri.path())
}

/// The three keys one secret can be given by, as the config holds them.
pub struct SecretKeys<'a> {
    /// The key path of the inline value (`auth.issuers.corp.introspection.client_secret`).
    pub key: String,
    pub inline: Option<&'a Secret>,
    pub file: Option<&'a Path>,
    pub env: Option<&'a str>,
}

/// The secret from whichever of `KEY`, `KEY_file` and `KEY_env` is given (none:
/// `None`), or the problem with its key path. A file's one trailing line break
/// is not part of the secret.
pub fn resolve(keys: &SecretKeys<'_>) -> Result<Option<Secret>, String> {
    let key = &keys.key;
    match (keys.inline, keys.file, keys.env) {
        (None, None, None) => Ok(None),
        (Some(inline), None, None) => {
            if inline.expose().is_empty() {
                Err(format!("{key}: is empty"))
            } else {
                Ok(Some(inline.clone()))
            }
        }
        (None, Some(path), None) => read_file(path)
            .map(Some)
            .map_err(|err| format!("{key}_file: {}: {err}", path.display())),
        (None, None, Some(name)) => match std::env::var(name) {
            Ok(value) if !value.is_empty() => Ok(Some(Secret(value))),
            Ok(_) => Err(format!(
                "{key}_env: the environment variable {name} is empty"
            )),
            Err(std::env::VarError::NotPresent) => Err(format!(
                "{key}_env: the environment variable {name} is not set"
            )),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!(
                "{key}_env: the environment variable {name} is not UTF-8"
            )),
        },
        _ => Err(format!(
            "{key}: give only one of {key}, {key}_file and {key}_env"
        )),
    }
}

fn read_file(path: &Path) -> Result<Secret, String> {
    let file = std::fs::File::open(path).map_err(|err| err.to_string())?;
    let meta = file.metadata().map_err(|err| err.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|err| err.to_string())?;
    let value = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if value.is_empty() {
        return Err("is empty".to_owned());
    }
    Ok(Secret(value.to_owned()))
}

/// A warning when the file holding a secret can be read by its group or by
/// everyone (mode `g+r` or `o+r`); `chmod 600` it.
pub fn file_mode_warning(key: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o044 != 0).then(|| {
        format!(
            "{key}_file: {} holds a secret and is readable by {} (mode {:o}); chmod 600 it",
            path.display(),
            if mode & 0o004 != 0 {
                "everyone"
            } else {
                "its group"
            },
            mode & 0o777
        )
    })
}

/// Resolves one secret in place: the inline field ends up holding the value
/// whatever key gave it. Pushes a problem instead when it cannot be read.
pub fn resolve_into<T: From<Secret> + AsSecret>(
    key: String,
    inline: &mut Option<T>,
    file: Option<&PathBuf>,
    env: Option<&String>,
    problems: &mut Vec<String>,
) {
    let keys = SecretKeys {
        key,
        inline: inline.as_ref().map(AsSecret::as_secret),
        file: file.map(PathBuf::as_path),
        env: env.map(String::as_str),
    };
    match resolve(&keys) {
        Ok(value) => *inline = value.map(T::from),
        Err(problem) => problems.push(problem),
    }
}

/// The [`Secret`] inside a secret-holding config value.
pub trait AsSecret {
    fn as_secret(&self) -> &Secret;
}

impl AsSecret for Secret {
    fn as_secret(&self) -> &Secret {
        self
    }
}

impl AsSecret for SecretUrl {
    fn as_secret(&self) -> &Secret {
        self.secret()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_secret_cannot_be_printed() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret}"), REDACTED);
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert!(!format!("{secret:#?}").contains("hunter2"));
        assert_eq!(
            serde_json::to_value(&secret).expect("serializes"),
            serde_json::json!(REDACTED)
        );
        assert_eq!(secret.expose(), "hunter2");
        let parsed: Secret = serde_json::from_str("\"hunter2\"").expect("parses");
        assert_eq!(parsed, secret);
    }

    #[test]
    fn urls_lose_credentials_query_and_fragment() {
        for (url, shown) in [
            (
                "https://ops:hunter2@hooks.example:8443/a/b?token=s3cr3t#frag",
                "https://hooks.example:8443/a/b",
            ),
            ("http://user@198.18.0.1/hook?x=1", "http://198.18.0.1/hook"),
            ("https://[2001:2::1]:9/p", "https://[2001:2::1]:9/p"),
            ("https://idp.example", "https://idp.example/"),
            ("not a url with hunter2", REDACTED),
            ("/relative?token=s3cr3t", REDACTED),
        ] {
            assert_eq!(redacted_url(url), shown, "{url}");
        }
        let url = SecretUrl::from(Secret::new("https://a:hunter2@h/p?token=s3cr3t"));
        for text in [
            format!("{url}"),
            format!("{url:?}"),
            serde_json::to_string(&url).expect("serializes"),
        ] {
            assert!(
                !text.contains("hunter2") && !text.contains("s3cr3t"),
                "{text}"
            );
            assert!(text.contains("https://h/p"), "{text}");
        }
    }

    fn keys<'a>(
        inline: Option<&'a Secret>,
        file: Option<&'a Path>,
        env: Option<&'a str>,
    ) -> SecretKeys<'a> {
        SecretKeys {
            key: "x.secret".to_owned(),
            inline,
            file,
            env,
        }
    }

    #[test]
    fn a_secret_comes_from_one_of_three_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-file\n").expect("write");
        let inline = Secret::new("inline");
        assert_eq!(resolve(&keys(None, None, None)), Ok(None));
        assert_eq!(
            resolve(&keys(Some(&inline), None, None)),
            Ok(Some(inline.clone()))
        );
        assert_eq!(
            resolve(&keys(None, Some(&path), None)),
            Ok(Some(Secret::new("from-file")))
        );
        // PATH is set in every test environment; its value stands in for a secret.
        let path_var = std::env::var("PATH").expect("PATH is set");
        assert_eq!(
            resolve(&keys(None, None, Some("PATH"))),
            Ok(Some(Secret::new(path_var)))
        );
        let both = resolve(&keys(Some(&inline), Some(&path), None)).expect_err("two keys");
        assert!(
            both.contains("give only one of x.secret, x.secret_file"),
            "{both}"
        );
        let unset =
            resolve(&keys(None, None, Some("GATEWAY_TEST_SURELY_UNSET"))).expect_err("unset");
        assert!(
            unset.starts_with("x.secret_env:") && unset.contains("not set"),
            "{unset}"
        );
        let missing =
            resolve(&keys(None, Some(&dir.path().join("none")), None)).expect_err("missing");
        assert!(missing.starts_with("x.secret_file:"), "{missing}");
        std::fs::write(&path, "\n").expect("write");
        let empty = resolve(&keys(None, Some(&path), None)).expect_err("empty");
        assert!(empty.contains("is empty"), "{empty}");
        let device = resolve(&keys(None, Some(Path::new("/dev/zero")), None)).expect_err("dev");
        assert!(device.contains("not a regular file"), "{device}");
        std::fs::write(&path, vec![b'a'; 70_000]).expect("write");
        let huge = resolve(&keys(None, Some(&path), None)).expect_err("huge");
        assert!(huge.contains("larger than"), "{huge}");
        // Only the one trailing line break goes; inner whitespace is the secret's.
        std::fs::write(&path, " a b\r\n").expect("write");
        assert_eq!(
            resolve(&keys(None, Some(&path), None)),
            Ok(Some(Secret::new(" a b")))
        );
    }

    #[test]
    fn a_secret_file_readable_by_others_is_warned_about() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "s").expect("write");
        let chmod = |mode| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod")
        };
        chmod(0o600);
        assert_eq!(file_mode_warning("k", &path), None);
        chmod(0o400);
        assert_eq!(file_mode_warning("k", &path), None);
        chmod(0o640);
        let group = file_mode_warning("k", &path).expect("group-readable");
        assert!(
            group.contains("its group") && group.contains("640"),
            "{group}"
        );
        chmod(0o604);
        let all = file_mode_warning("k", &path).expect("world-readable");
        assert!(
            all.starts_with("k_file:") && all.contains("everyone"),
            "{all}"
        );
    }
}

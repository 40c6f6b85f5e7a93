//! What operators watch: the admin listener (`[admin]`) and where the access and
//! audit logs go (`[log]`).

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

use super::ListenerConfig;

/// `[admin]`: the listener serving `/metrics`, `/healthz`, `/readyz` and
/// `/config`. Plain HTTP: it belongs on loopback or a management network,
/// never on the public listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    /// Off turns the admin listener (and with it metrics and `gateway top`) off.
    pub enabled: bool,
    /// `ip:port` to bind.
    pub address: SocketAddr,
}

/// The admin port when the config names none.
pub const DEFAULT_ADMIN_ADDRESS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            enabled: true,
            address: DEFAULT_ADMIN_ADDRESS,
        }
    }
}

/// `[log]`: where each stream goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// Access log (one line per request): `"stdout"` or a file path.
    pub access: LogOutput,
    /// Access log line format: `json` or `clf` (Common Log Format).
    pub access_format: AccessFormat,
    /// Audit log (security decisions, administrative changes): `"stdout"` or a
    /// file path.
    pub audit: LogOutput,
    /// Everything else (the daemon's own messages): `"stdout"` or a file path.
    pub daemon: LogOutput,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            access: LogOutput::Stdout,
            access_format: AccessFormat::Json,
            audit: LogOutput::Stdout,
            daemon: LogOutput::Stdout,
        }
    }
}

/// Where a log stream is written. Files are opened for appending and reopened
/// on SIGUSR1, so logrotate can move them away (`postrotate: kill -USR1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogOutput {
    Stdout,
    File(PathBuf),
}

impl Serialize for LogOutput {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Stdout => serializer.serialize_str("stdout"),
            Self::File(path) => path.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for LogOutput {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(if text == "stdout" {
            Self::Stdout
        } else {
            Self::File(PathBuf::from(text))
        })
    }
}

/// The access log's line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessFormat {
    /// One JSON object per line with every field.
    Json,
    /// `host ident user [time] "request" status bytes`, for people who grep.
    Clf,
}

/// What is wrong with `[admin]` and `[log]`, with key paths.
pub fn problems(
    admin: &AdminSection,
    log: &LogSection,
    listeners: &[ListenerConfig],
) -> Vec<String> {
    let mut problems = Vec::new();
    if admin.enabled {
        for (i, listener) in listeners.iter().enumerate() {
            let same_port = listener.address.port() == admin.address.port();
            let overlaps = listener.address.ip() == admin.address.ip()
                || listener.address.ip().is_unspecified()
                || admin.address.ip().is_unspecified();
            if same_port && overlaps {
                problems.push(format!(
                    "admin.address: {} would share listener[{i}] ({})'s socket {}; the admin \
                     endpoint must never be on a public listener: pick another port",
                    admin.address, listener.name, listener.address
                ));
            }
        }
    }
    for (key, output) in [
        ("log.access", &log.access),
        ("log.audit", &log.audit),
        ("log.daemon", &log.daemon),
    ] {
        if let LogOutput::File(path) = output
            && !path.is_absolute()
        {
            problems.push(format!(
                "{key}: {} is relative; use \"stdout\" or an absolute path",
                path.display()
            ));
        }
    }
    problems
}

//! The log streams. Every line is a `tracing` event; the target decides the
//! stream:
//!
//! - `target: "access"`: one line per request, JSON or Common Log Format.
//! - `target: "audit"`: security decisions and administrative changes, JSON,
//!   each with the time, the process's user id (and `sudo_uid` when run
//!   through sudo) and pid, so "who changed what when" needs nothing else.
//! - everything else: the daemon's own messages, filtered by `RUST_LOG`.
//!
//! One schema for all three: every JSON line carries `timestamp` (RFC 3339,
//! UTC, milliseconds), `level` and `stream`; HTTP fields are named after
//! OpenTelemetry's semantic conventions (`http.request.method`,
//! `client.address`, ...; docs/operations.md has the table). The daemon's
//! text format carries the same timestamp, and colour only on a terminal.
//!
//! Each stream goes to stdout or to a file. Files are opened for appending
//! and reopened by [`reopen`] (the daemon calls it on SIGUSR1 and SIGHUP), so
//! logrotate can rename them and signal.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::{DirBuilder, File, OpenOptions},
    io::{IsTerminal as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

use serde_json::Value;
use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{FilterExt as _, LevelFilter, filter_fn},
    fmt::{MakeWriter, format::Writer, time::FormatTime},
    layer::{Context, SubscriberExt as _},
    util::SubscriberInitExt as _,
};

use crate::config::{AccessFormat, LogOutput, LogSection};

/// The target of access-log events.
pub const ACCESS: &str = "access";
/// The target of audit events.
pub const AUDIT: &str = "audit";
/// The `stream` of the daemon's own lines.
const DAEMON: &str = "daemon";
/// The key of every line's time, on every stream.
const TIMESTAMP: &str = "timestamp";

/// A log file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "opening log file {path}: {source} (check the directory exists and is writable, or log to \"stdout\")"
)]
pub struct LogError {
    path: PathBuf,
    source: std::io::Error,
}

/// Every file the streams write to, for [`reopen`].
static FILES: Mutex<Vec<Arc<LogFile>>> = Mutex::new(Vec::new());

/// A file that can be reopened at its path after logrotate moved it.
struct LogFile {
    path: PathBuf,
    /// `None` until first opened (lazily for the CLI's audit file).
    file: Mutex<Option<File>>,
}

impl LogFile {
    fn new(path: &Path, open_now: bool) -> Result<Arc<Self>, LogError> {
        let file = if open_now {
            Some(open_append(path)?)
        } else {
            None
        };
        let log = Arc::new(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
        });
        FILES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(log.clone());
        Ok(log)
    }

    fn write_line(&self, line: &str) {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if file.is_none() {
            match open_append(&self.path) {
                Ok(opened) => *file = Some(opened),
                Err(err) => {
                    eprintln!("warning: {err}; dropping log line: {line}");
                    return;
                }
            }
        }
        if let Some(file) = file.as_mut()
            && let Err(err) = file.write_all(line.as_bytes())
        {
            eprintln!(
                "warning: writing {}: {err}; dropping log line",
                self.path.display()
            );
        }
    }

    fn reopen(&self) -> Result<(), LogError> {
        let reopened = open_append(&self.path)?;
        *self.file.lock().unwrap_or_else(PoisonError::into_inner) = Some(reopened);
        Ok(())
    }
}

/// Opens a log file for appending, creating it 0640 (and a missing directory
/// 0750): logs name clients and tokens, so they are not for every local user.
fn open_append(path: &Path) -> Result<File, LogError> {
    let error = |source| LogError {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(error)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(error)
}

/// Reopens every log file at its path (after logrotate renamed it); a file
/// that cannot be reopened keeps writing to the old one and is reported.
pub fn reopen() -> Vec<LogError> {
    let files = FILES.lock().unwrap_or_else(PoisonError::into_inner).clone();
    files
        .iter()
        .filter_map(|file| file.reopen().err())
        .collect()
}

/// Where one stream's lines go.
#[derive(Clone)]
enum Sink {
    Stdout,
    File(Arc<LogFile>),
}

impl Sink {
    fn new(output: &LogOutput, open_now: bool) -> Result<Self, LogError> {
        Ok(match output {
            LogOutput::Stdout | LogOutput::Off => Self::Stdout,
            LogOutput::File(path) => Self::File(LogFile::new(path, open_now)?),
        })
    }

    /// Whether colour would reach a terminal (and `NO_COLOR` is unset).
    fn is_terminal(&self) -> bool {
        matches!(self, Self::Stdout)
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
    }

    fn write_line(&self, line: &str) {
        match self {
            Self::Stdout => {
                // One write per line under the lock, so streams never interleave
                // mid-line; a closed stdout only loses the line.
                let _ = std::io::stdout().lock().write_all(line.as_bytes());
            }
            Self::File(file) => file.write_line(line),
        }
    }
}

/// `MakeWriter` for the daemon's own `fmt` layer: buffers one event, then
/// writes it as one line.
struct SinkWriter {
    sink: Sink,
    buffer: Vec<u8>,
}

impl std::io::Write for SinkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SinkWriter {
    fn drop(&mut self) {
        if !self.buffer.is_empty() {
            self.sink.write_line(&String::from_utf8_lossy(&self.buffer));
        }
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> SinkWriter {
        SinkWriter {
            sink: self.clone(),
            buffer: Vec::new(),
        }
    }
}

/// How a [`StreamLayer`] writes its events.
#[derive(Clone, Copy)]
enum Format {
    Json,
    Clf,
}

/// Writes the events its filter lets through to one sink, as one stream.
struct StreamLayer {
    /// The `stream` field: `access`, `audit` or `daemon`.
    stream: &'static str,
    format: Format,
    sink: Sink,
    /// Add uid, sudo_uid and pid (audit lines say who).
    who: bool,
}

impl<S: Subscriber> Layer<S> for StreamLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut map = serde_json::Map::new();
        map.insert(TIMESTAMP.to_owned(), Value::String(now_rfc3339()));
        map.insert(
            "level".to_owned(),
            Value::String(event.metadata().level().to_string()),
        );
        map.insert("stream".to_owned(), Value::String(self.stream.to_owned()));
        if self.stream == DAEMON {
            map.insert(
                "target".to_owned(),
                Value::String(event.metadata().target().to_owned()),
            );
        }
        if self.who {
            for (key, value) in who() {
                map.insert(key.to_owned(), value);
            }
        }
        map.extend(fields.0);
        let mut line = match self.format {
            Format::Json => Value::Object(map).to_string(),
            Format::Clf => common_log_format(&map),
        };
        line.push('\n');
        self.sink.write_line(&line);
    }
}

/// The event's fields as JSON values (numbers stay numbers).
#[derive(Default)]
struct Fields(BTreeMap<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
}

/// Who the process runs as, for audit lines.
fn who() -> Vec<(&'static str, Value)> {
    // SAFETY: getuid and getpid have no preconditions and cannot fail.
    let (uid, pid) = unsafe { (libc::getuid(), libc::getpid()) };
    let mut who = vec![("uid", Value::from(uid)), ("pid", Value::from(pid))];
    if let Some(sudo_uid) = std::env::var("SUDO_UID")
        .ok()
        .and_then(|uid| uid.parse::<u32>().ok())
    {
        who.push(("sudo_uid", Value::from(sudo_uid)));
    }
    who
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The daemon's text lines start with the same timestamp as the JSON ones.
struct Rfc3339;

impl FormatTime for Rfc3339 {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        w.write_str(&now_rfc3339())
    }
}

/// `client - user [timestamp] "METHOD path HTTP/version" status bytes_out`:
/// the access fields an Apache-style grep expects.
fn common_log_format(map: &serde_json::Map<String, Value>) -> String {
    let field = |key: &str| match map.get(key) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    };
    let mut line = String::new();
    let _ = write!(
        line,
        "{} - {} [{}] \"{} {} HTTP/{}\" {} {}",
        field("client.address"),
        field("user.id"),
        field(TIMESTAMP),
        field("http.request.method"),
        field("url.path"),
        field("network.protocol.version"),
        field("http.response.status_code"),
        field("http.response.body.size"),
    );
    line
}

/// Installs the daemon's logging: access, audit and daemon streams as `log`
/// says; `json` picks the daemon stream's format.
///
/// Each stream's filter looks at the target alone, so tracing caches the
/// answer per call site: an access log that is off costs nothing per request
/// (its fields are never even evaluated).
pub fn init_daemon(log: &LogSection, json: bool) -> Result<(), LogError> {
    let access = StreamLayer {
        stream: ACCESS,
        format: match log.access_format {
            AccessFormat::Json => Format::Json,
            AccessFormat::Clf => Format::Clf,
        },
        sink: Sink::new(&log.access, true)?,
        who: false,
    };
    let audit = StreamLayer {
        stream: AUDIT,
        format: Format::Json,
        sink: Sink::new(&log.audit, true)?,
        who: true,
    };
    let daemon_sink = Sink::new(&log.daemon, true)?;
    let daemon_on = log.daemon != LogOutput::Off;
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // One filter, not two nested ones: a call site the inner filter takes and
    // the outer one refuses would be re-checked on every call (libraries'
    // `trace!` on the request path) instead of being switched off once.
    let daemon_filter =
        filter_fn(move |meta| daemon_on && meta.target() != ACCESS && meta.target() != AUDIT)
            .and(env);
    // A stream that is off keeps its layer with a filter that refuses
    // everything: an absent (`None`) layer would make tracing re-check every
    // call site of every library on each call.
    let registry = tracing_subscriber::registry()
        .with(access.with_filter(stream_filter(ACCESS, log.access != LogOutput::Off)))
        .with(audit.with_filter(stream_filter(AUDIT, log.audit != LogOutput::Off)));
    if json {
        let daemon = StreamLayer {
            stream: DAEMON,
            format: Format::Json,
            sink: daemon_sink,
            who: false,
        };
        registry.with(daemon.with_filter(daemon_filter)).init();
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_timer(Rfc3339)
                    .with_ansi(daemon_sink.is_terminal())
                    .with_writer(daemon_sink)
                    .with_filter(daemon_filter),
            )
            .init();
    }
    Ok(())
}

/// The events of one stream: its target, at INFO or above; none when the
/// stream is off. Filters that look only at call sites are decided once per
/// call site, so a stream that is off costs nothing per event.
fn stream_filter(
    target: &'static str,
    on: bool,
) -> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    filter_fn(move |meta| on && meta.target() == target && *meta.level() <= Level::INFO)
        .with_max_level_hint(if on {
            LevelFilter::INFO
        } else {
            LevelFilter::OFF
        })
}

/// Installs the CLI's logging: audit events only, appended to `path` (opened
/// on the first event, so read-only commands never touch it).
pub fn init_cli_audit(path: &Path) {
    let layer = StreamLayer {
        stream: AUDIT,
        format: Format::Json,
        sink: Sink::File(Arc::new(LogFile {
            path: path.to_owned(),
            file: Mutex::new(None),
        })),
        who: true,
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter_fn(|meta| meta.target() == AUDIT)))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clf_line_has_the_classic_shape() {
        let map = serde_json::json!({
            "client.address": "198.18.0.7", "timestamp": "2026-11-28T03:00:00.000Z",
            "http.request.method": "GET", "url.path": "/api/x", "network.protocol.version": "1.1",
            "http.response.status_code": 200, "http.response.body.size": 12,
        });
        let Value::Object(map) = map else {
            unreachable!("a JSON object literal")
        };
        assert_eq!(
            common_log_format(&map),
            "198.18.0.7 - - [2026-11-28T03:00:00.000Z] \"GET /api/x HTTP/1.1\" 200 12"
        );
    }

    #[test]
    fn files_reopen_at_their_path_after_a_rename() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("access.log");
        let sink = Sink::new(&LogOutput::File(path.clone()), true).expect("open");
        sink.write_line("one\n");
        std::fs::rename(&path, dir.path().join("access.log.1")).expect("rename");
        sink.write_line("two\n");
        assert!(reopen().is_empty());
        sink.write_line("three\n");
        let rotated = std::fs::read_to_string(dir.path().join("access.log.1")).expect("old");
        let current = std::fs::read_to_string(&path).expect("new");
        assert_eq!(rotated, "one\ntwo\n");
        assert_eq!(current, "three\n");
    }

    #[test]
    fn log_files_and_their_new_directories_are_not_world_readable() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("logs").join("audit.log");
        let sink = Sink::new(&LogOutput::File(path.clone()), true).expect("open");
        sink.write_line("one\n");
        let mode = |path: &Path| {
            std::fs::metadata(path)
                .expect("metadata")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(&path), 0o640);
        assert_eq!(mode(&dir.path().join("logs")), 0o750);
    }
}

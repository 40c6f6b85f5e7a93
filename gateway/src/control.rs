//! The daemon's control socket (`control.sock` in the state directory, mode
//! 0600): how `gateway reload` gets the daemon's verdict instead of sending a
//! signal and hoping. A client writes one request line (`reload`) and reads
//! one JSON line back, the [`ReloadVerdict`] of a reload that started after
//! its request arrived; reloads run one at a time, so two concurrent clients
//! each get the verdict of their own reload. SIGHUP still reloads, for
//! `systemctl reload` and `kill -HUP`, and logs the same verdict.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
    sync::{mpsc, oneshot},
};

use crate::state::StateDir;

/// The socket's name in the state directory.
pub const SOCKET: &str = "control.sock";

/// Longest request line read; anything longer is not a request.
const MAX_REQUEST: u64 = 64;

/// How long the daemon waits for a client's request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The daemon's answer to a reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadVerdict {
    /// Whether the new configuration is running.
    pub accepted: bool,
    /// Why it was rejected (each problem with its key path); empty when accepted.
    #[serde(default)]
    pub errors: Vec<String>,
    /// What was accepted but needs a restart or failed to apply in part.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A reload asked for on the socket, answered by the daemon's main loop.
pub struct ReloadRequest {
    pub reply: oneshot::Sender<ReloadVerdict>,
}

/// Why `gateway reload` got no verdict.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "no gateway daemon runs with state directory {dir} (start one with `gateway run`, or pass --state-dir)"
    )]
    NotRunning { dir: PathBuf },
    #[error("connecting to the daemon's control socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error(
        "the daemon did not answer within {timeout:?}; it may still apply the reload (see its log)"
    )]
    Timeout { timeout: Duration },
    #[error("talking to the daemon over {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the daemon's answer is not a verdict: {0}")]
    Protocol(String),
}

/// The daemon rejected the new configuration; the old one keeps running.
#[derive(Debug, thiserror::Error)]
#[error("the daemon rejected the new configuration; the running one stays:\n  - {}", errors.join("\n  - "))]
pub struct ReloadRejected {
    pub errors: Vec<String>,
}

/// Binds the control socket. Only the daemon, holding the state directory's
/// daemon lock, calls this, so a socket file already there is a dead daemon's.
pub fn bind(state: &StateDir) -> io::Result<UnixListener> {
    let path = state.path().join(SOCKET);
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts clients until the daemon stops, handing each reload to `requests`.
pub async fn serve(listener: UnixListener, requests: mpsc::Sender<ReloadRequest>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            if let Err(err) = answer(stream, requests).await {
                tracing::warn!(%err, "control socket client failed");
            }
        });
    }
}

async fn answer(
    stream: tokio::net::UnixStream,
    requests: mpsc::Sender<ReloadRequest>,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request line"))??;
    let verdict = match line.trim() {
        "reload" => {
            let (reply, verdict) = oneshot::channel();
            if requests.send(ReloadRequest { reply }).await.is_err() {
                return Ok(()); // the daemon is stopping
            }
            match verdict.await {
                Ok(verdict) => verdict,
                Err(_) => return Ok(()),
            }
        }
        other => ReloadVerdict {
            accepted: false,
            errors: vec![format!(
                "unknown request {other:?}; the only one is `reload`"
            )],
            warnings: Vec::new(),
        },
    };
    let mut text = serde_json::to_string(&verdict).map_err(io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

/// Asks the daemon using `state` to reload and waits up to `timeout` for its
/// verdict.
pub fn request_reload(state: &StateDir, timeout: Duration) -> Result<ReloadVerdict, ControlError> {
    let path = state.path().join(SOCKET);
    let stream = UnixStream::connect(&path).map_err(|source| not_running(state, &path, source))?;
    let io_error = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
    (&stream).write_all(b"reload\n").map_err(io_error)?;
    let mut line = String::new();
    match BufReader::new(&stream).read_line(&mut line) {
        Ok(_) => {}
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(ControlError::Timeout { timeout });
        }
        Err(err) => return Err(io_error(err)),
    }
    if line.is_empty() {
        return Err(ControlError::Protocol(
            "the daemon closed the connection without one (it may be stopping)".to_owned(),
        ));
    }
    serde_json::from_str(&line).map_err(|err| ControlError::Protocol(err.to_string()))
}

/// A failed connect: no daemon at all, or one that cannot be reached.
fn not_running(state: &StateDir, path: &Path, source: io::Error) -> ControlError {
    let gone = matches!(
        source.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    );
    if gone && matches!(state.running_daemon(), Ok(None)) {
        ControlError::NotRunning {
            dir: state.path().to_owned(),
        }
    } else {
        ControlError::Connect {
            path: path.to_owned(),
            source,
        }
    }
}

//! `gateway top`: a live view of the gateway from its admin endpoint, so any
//! user who can reach the admin address (over SSH too) can watch it without
//! root: XDP packets per second by reason, the sources with the most drops,
//! requests per second by route and status, upstream health, recent blocks.
//! Fits 80×24; `q`, Esc or Ctrl-C quit and restore the terminal.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use gateway::observe::metrics::{Series, parse_text};
use ratatui::{
    Frame, Terminal,
    backend::TestBackend,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    widgets::{Block, Borders, Paragraph, Row, Table, Wrap},
};

/// How long one admin request may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

pub fn run(admin: SocketAddr, interval: Duration, once: bool, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(admin);
    }
    if once {
        return print_once(admin, interval);
    }
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let result = live(&mut terminal, admin, interval);
    ratatui::try_restore().context("restoring the terminal")?;
    result
}

/// One snapshot as JSON (`--json`): every metric sample, readiness and
/// `/xdp/top`, for scripts that want the numbers rather than a frame.
fn print_json(admin: SocketAddr) -> anyhow::Result<()> {
    let snapshot = Snapshot::fetch(admin)?;
    let metrics: serde_json::Map<String, serde_json::Value> = snapshot
        .metrics
        .iter()
        .map(|(name, series)| {
            let samples = series
                .iter()
                .map(|(labels, value)| {
                    let labels: BTreeMap<&str, &str> = labels
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    serde_json::json!({ "labels": labels, "value": value })
                })
                .collect();
            (name.clone(), serde_json::Value::Array(samples))
        })
        .collect();
    super::print_json(&serde_json::json!({
        "admin": admin,
        "ready": snapshot.ready,
        "metrics": metrics,
        "xdp_top": snapshot.top,
    }))
}

/// One frame at 80×24 on stdout, rates measured over `interval`: for scripts,
/// tests, and terminals that cannot take the full-screen view.
fn print_once(admin: SocketAddr, interval: Duration) -> anyhow::Result<()> {
    let first = Snapshot::fetch(admin)?;
    std::thread::sleep(interval);
    let second = Snapshot::fetch(admin)?;
    let view = View::new(admin, &second, Some((&first, interval)));
    let mut terminal = Terminal::new(TestBackend::new(80, 24))?;
    terminal.draw(|frame| view.draw(frame))?;
    let buffer = terminal.backend().buffer();
    let mut out = std::io::stdout().lock();
    for y in 0..buffer.area.height {
        let line: String = (0..buffer.area.width)
            .map(|x| buffer[(x, y)].symbol())
            .collect();
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn live(
    terminal: &mut ratatui::DefaultTerminal,
    admin: SocketAddr,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut previous: Option<(Snapshot, Instant)> = None;
    loop {
        let fetched = Snapshot::fetch(admin);
        let now = Instant::now();
        match &fetched {
            Ok(current) => {
                let since = previous
                    .as_ref()
                    .map(|(snapshot, at)| (snapshot, now.duration_since(*at)));
                let view = View::new(admin, current, since);
                terminal.draw(|frame| view.draw(frame))?;
            }
            Err(err) => {
                let message = format!("{admin}: {err:#}\n\nretrying every {interval:?}; q quits");
                terminal.draw(|frame| {
                    frame.render_widget(
                        Paragraph::new(message.as_str())
                            .wrap(Wrap { trim: true })
                            .block(Block::bordered().title(" gateway top ")),
                        frame.area(),
                    );
                })?;
            }
        }
        if let Ok(current) = fetched {
            previous = Some((current, now));
        }
        let deadline = now + interval;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if !event::poll(left)? {
                break;
            }
            if let Event::Key(key) = event::read()?
                && key.kind == KeyEventKind::Press
                && (matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
                    || (key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL)))
            {
                return Ok(());
            }
        }
    }
}

/// `GET path` over plain HTTP/1.1: (status, body).
fn get(admin: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&admin, FETCH_TIMEOUT).with_context(|| {
        format!("connecting to the admin endpoint {admin} (is the daemon running with [admin] enabled? pass --admin)")
    })?;
    stream.set_read_timeout(Some(FETCH_TIMEOUT))?;
    stream.set_write_timeout(Some(FETCH_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .with_context(|| format!("reading {path} from {admin}"))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .with_context(|| format!("{admin}{path}: not an HTTP response"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("{admin}{path}: no status line"))?;
    Ok((status, body.to_owned()))
}

/// What one refresh read from the admin endpoint.
struct Snapshot {
    metrics: BTreeMap<String, Series>,
    ready: String,
    /// `/xdp/top`, when XDP is enabled.
    top: Option<serde_json::Value>,
}

impl Snapshot {
    fn fetch(admin: SocketAddr) -> anyhow::Result<Self> {
        let (status, text) = get(admin, "/metrics")?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        let (_, ready) = get(admin, "/readyz")?;
        let top = match get(admin, "/xdp/top")? {
            (200, body) => serde_json::from_str(&body).ok(),
            _ => None,
        };
        Ok(Self {
            metrics: parse_text(&text),
            ready: ready.lines().collect::<Vec<_>>().join("; "),
            top,
        })
    }

    fn series(&self, name: &str) -> impl Iterator<Item = (&[(String, String)], f64)> {
        self.metrics
            .get(name)
            .into_iter()
            .flat_map(|series| series.iter().map(|(labels, v)| (labels.as_slice(), *v)))
    }
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> &'a str {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// The numbers of one frame, ready to draw.
struct View {
    title: String,
    /// (reason, packets/s, total)
    xdp: Vec<(String, Option<f64>, f64)>,
    /// (route, status, requests/s, total)
    requests: Vec<(String, String, Option<f64>, f64)>,
    /// (pool, healthy, endpoints, breaker open)
    upstreams: Vec<(String, f64, f64, bool)>,
    sources: Vec<[String; 3]>,
    blocks: Vec<[String; 3]>,
}

impl View {
    fn new(admin: SocketAddr, now: &Snapshot, since: Option<(&Snapshot, Duration)>) -> Self {
        let rate = |name: &str, labels: &[(String, String)], value: f64| {
            since.map(|(before, elapsed)| {
                let old = before
                    .metrics
                    .get(name)
                    .and_then(|s| s.get(labels))
                    .copied()
                    .unwrap_or(0.0);
                (value - old).max(0.0) / elapsed.as_secs_f64().max(1e-3)
            })
        };
        let mut xdp: Vec<_> = now
            .series("gateway_xdp_packets_total")
            .filter(|(_, total)| *total > 0.0)
            .map(|(labels, total)| {
                let pps = rate("gateway_xdp_packets_total", labels, total);
                (label(labels, "reason").to_owned(), pps, total)
            })
            .collect();
        xdp.sort_by(|a, b| b.1.unwrap_or(0.0).total_cmp(&a.1.unwrap_or(0.0)));
        let mut requests: Vec<_> = now
            .series("gateway_requests_total")
            .map(|(labels, total)| {
                let rps = rate("gateway_requests_total", labels, total);
                (
                    label(labels, "route").to_owned(),
                    label(labels, "status").to_owned(),
                    rps,
                    total,
                )
            })
            .collect();
        requests.sort_by(|a, b| {
            b.2.unwrap_or(0.0)
                .total_cmp(&a.2.unwrap_or(0.0))
                .then(b.3.total_cmp(&a.3))
        });
        let upstreams = now
            .series("gateway_upstream_endpoints")
            .map(|(labels, total)| {
                let pool = label(labels, "upstream").to_owned();
                let find = |name: &str| {
                    now.series(name)
                        .find(|(l, _)| label(l, "upstream") == pool)
                        .map_or(0.0, |(_, v)| v)
                };
                let healthy = find("gateway_upstream_healthy_endpoints");
                let open = find("gateway_upstream_breaker_open") > 0.0;
                (pool, healthy, total, open)
            })
            .collect();
        let rows = |key: &str, cells: &dyn Fn(&serde_json::Value) -> [String; 3]| {
            now.top
                .as_ref()
                .and_then(|top| top[key].as_array())
                .map(|items| items.iter().map(cells).collect())
                .unwrap_or_default()
        };
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".to_owned(),
            other => other.to_string(),
        };
        let sources = rows("sources", &|s| {
            [text(&s["source"]), text(&s["verdict"]), text(&s["dropped"])]
        });
        let blocks = rows("blocks", &|b| {
            [text(&b["cidr"]), text(&b["source"]), text(&b["reason"])]
        });
        Self {
            title: format!(
                " gateway top — {admin} — {} — {} ",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
                now.ready
            ),
            xdp,
            requests,
            upstreams,
            sources,
            blocks,
        }
    }

    fn draw(&self, frame: &mut Frame<'_>) {
        let [title, top, middle, bottom, help] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(6),
            Constraint::Min(6),
            Constraint::Min(6),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        frame.render_widget(
            Paragraph::new(self.title.as_str()).style(Style::new().add_modifier(Modifier::BOLD)),
            title,
        );
        let [xdp, upstreams] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(top);
        let [sources, blocks] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(bottom);
        let per_second =
            |rate: Option<f64>| rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
        table(
            frame,
            xdp,
            " XDP packets/s by reason ",
            ["reason", "pkt/s", "total"],
            [
                Constraint::Fill(1),
                Constraint::Length(9),
                Constraint::Length(10),
            ],
            self.xdp
                .iter()
                .map(|(reason, pps, total)| {
                    [reason.clone(), per_second(*pps), format!("{total:.0}")]
                })
                .collect(),
        );
        table(
            frame,
            upstreams,
            " Upstreams ",
            ["pool", "healthy", "breaker"],
            [
                Constraint::Fill(1),
                Constraint::Length(8),
                Constraint::Length(8),
            ],
            self.upstreams
                .iter()
                .map(|(pool, healthy, total, open)| {
                    [
                        pool.clone(),
                        format!("{healthy:.0}/{total:.0}"),
                        if *open { "OPEN" } else { "closed" }.to_owned(),
                    ]
                })
                .collect(),
        );
        table(
            frame,
            middle,
            " Requests/s by route and status ",
            ["route", "status", "req/s", "total"],
            [
                Constraint::Fill(1),
                Constraint::Length(7),
                Constraint::Length(9),
                Constraint::Length(10),
            ],
            self.requests
                .iter()
                .map(|(route, status, rps, total)| {
                    [
                        route.clone(),
                        status.clone(),
                        per_second(*rps),
                        format!("{total:.0}"),
                    ]
                })
                .collect(),
        );
        table(
            frame,
            sources,
            " Top sources ",
            ["source", "verdict", "drops"],
            [
                Constraint::Fill(1),
                Constraint::Length(12),
                Constraint::Length(8),
            ],
            self.sources.clone(),
        );
        table(
            frame,
            blocks,
            " Recent blocks ",
            ["entry", "by", "reason"],
            [
                Constraint::Fill(1),
                Constraint::Length(7),
                Constraint::Fill(1),
            ],
            self.blocks.clone(),
        );
        frame.render_widget(
            Paragraph::new("q: quit   data: admin /metrics, /readyz, /xdp/top"),
            help,
        );
    }
}

fn table<const N: usize>(
    frame: &mut Frame<'_>,
    area: Rect,
    title: &str,
    header: [&str; N],
    widths: [Constraint; N],
    rows: Vec<[String; N]>,
) {
    let widget = Table::new(rows.into_iter().map(Row::new), widths)
        .header(Row::new(header).style(Style::new().add_modifier(Modifier::UNDERLINED)))
        .block(Block::default().borders(Borders::ALL).title(title));
    frame.render_widget(widget, area);
}

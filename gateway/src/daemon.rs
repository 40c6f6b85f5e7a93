//! `gateway run`: attaches the XDP program (or adopts the one already pinned), applies
//! the config and starts the proxy, then keeps the lists honest: it sweeps expired
//! blocks, keeps the state file current and turns ring-buffer events into log lines.
//! SIGHUP or `gateway reload` (the control socket) reloads the config; SIGTERM
//! drains the proxy. Stopping the daemon leaves
//! the program attached and filtering.

use std::{path::Path, sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use gateway_common::{
    consts::event_kind,
    maps::{RateEvent, XdpConfig},
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};
use tracing::{error, info, warn};

use crate::{
    abuse::{Abuse, BlockRequest, Evidence, ProvenanceFile, Signal},
    addr::{self, Cidr, ipv6_mask},
    auth::revocation::Denylist,
    clock,
    config::Config,
    control::{self, ReloadVerdict},
    fleet::{Link, LinkSetupError, sync::Mirror},
    lists::{ListError, ListKind, Lists, Sweeper},
    observe::admin::{self, AdminState},
    policy::quota::Quotas,
    proxy::{Proxy, ProxyStartError},
    state::{Source, StateDir, StateError},
    xdp::{self, KernelMaps, PinDir, XdpError},
};

/// How often expired entries are swept and the state file reconciled.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The daemon stopped for a reason other than a signal.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Xdp(#[from] XdpError),
    #[error(transparent)]
    Capability(#[from] crate::caps::MissingCapability),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    List(#[from] ListError),
    #[error(transparent)]
    Proxy(#[from] ProxyStartError),
    #[error(transparent)]
    Fleet(#[from] LinkSetupError),
    #[error(
        "admin.address {address}: binding the admin listener: {source} (set [admin] address to a free port, or enabled = false)"
    )]
    Admin {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

/// The kernel plane as the daemon holds it.
struct KernelPlane {
    maps: KernelMaps,
    events: AsyncFd<RingBuf<MapData>>,
    /// The lists as of the last sweep, with their expiry index.
    sweeper: Sweeper,
}

impl KernelPlane {
    fn start(config: &Config, pins: &PinDir, state: &StateDir) -> Result<Self, DaemonError> {
        let maps = attach_or_adopt(config, pins, state)?;
        apply_settings(config, &maps)?;
        let lists = Lists::new(&maps, state);
        lists.replace_config(&config.xdp.allowlist, &config.xdp.blocklist)?;
        let (sweeper, restored) = Sweeper::start(&lists)?;
        info!(restored, "lists restored from the state file");
        // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns the
        // RingBuf, and always reports that same fd.
        let events =
            unsafe { AsyncFd::register(maps.events()?) }.map_err(|err| DaemonError::Io {
                what: "watching the event ring buffer",
                source: err.into_parts().1,
            })?;
        Ok(Self {
            maps,
            events,
            sweeper,
        })
    }

    /// Takes a reloaded config's XDP settings and static lists.
    fn reload(&self, config: &Config, state: &StateDir) -> Result<(), DaemonError> {
        apply_settings(config, &self.maps)?;
        Lists::new(&self.maps, state)
            .replace_config(&config.xdp.allowlist, &config.xdp.blocklist)?;
        Ok(())
    }
}

/// Waits for ring-buffer records; never resolves without a kernel plane.
async fn events_ready(
    kernel: &mut Option<KernelPlane>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match kernel {
        Some(kernel) => kernel.events.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// Runs until SIGTERM or SIGINT; SIGHUP reloads `config_path`.
pub async fn run(
    config_path: &Path,
    mut config: Config,
    pins: &PinDir,
    state: &StateDir,
) -> Result<(), DaemonError> {
    let signal_error = |source| DaemonError::Io {
        what: "installing signal handlers",
        source,
    };
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(signal_error)?;
    // `gateway token revoke|unrevoke` asks for the denylist to be re-read (SIGUSR2);
    // SIGUSR1 reopens the log files for logrotate.
    let mut user2 = signal(SignalKind::user_defined2()).map_err(signal_error)?;
    let mut reopen = signal(SignalKind::user_defined1()).map_err(signal_error)?;

    let _lock = state.lock_daemon()?;
    require_capabilities(&config)?;
    // Every state file is read before the kernel is touched: an unreadable one
    // stops the start here, and a program already attached keeps its entries.
    let mut provenance = ProvenanceFile::load(state)?;
    let quotas = Arc::new(Quotas::load(state)?);
    check_state(state)?;
    // Before the first request, so no request goes unrecorded.
    crate::observe::metrics::handle();
    let mut kernel = if config.xdp.enabled {
        Some(KernelPlane::start(&config, pins, state)?)
    } else {
        warn!(
            "XDP is disabled (xdp.enabled = false or --no-xdp): the proxy runs without the kernel plane"
        );
        None
    };
    for warning in config.warnings() {
        warn!("{warning}");
    }
    let (abuse, mut block_requests) = Abuse::new(&config);
    abuse.restore(&provenance);
    // The fleet link connects in the background: Redis never holds up the start.
    let fleet = config.fleet.as_ref().map(Link::new).transpose()?;
    let _fleet_tasks: Vec<AbortOnDrop> = fleet
        .iter()
        .flat_map(|link| {
            let mut tasks = vec![
                link.spawn_supervisor(),
                tokio::spawn(quotas.clone().keep_synced(link.clone())),
            ];
            if link.share().abuse {
                tasks.extend(abuse.share(link.clone()));
            }
            tasks
        })
        .map(AbortOnDrop)
        .collect();
    // Shared blocks and revocations: applied and published on this loop.
    let (mut mirror, _mirror_task) = match (&fleet, &config.fleet) {
        (Some(link), Some(section)) => {
            let (mirror, task) = Mirror::start(link, section, state);
            (Some(mirror), Some(AbortOnDrop(task)))
        }
        _ => (None, None),
    };
    let proxy = if config.listeners.is_empty() {
        None
    } else {
        Some(
            Proxy::start(
                &config,
                Some(state.revocations_path()),
                abuse.clone(),
                quotas.clone(),
                fleet.clone(),
            )
            .await?,
        )
    };

    let admin = start_admin(
        &config,
        proxy.as_ref(),
        kernel.is_some().then(|| (pins.clone(), state.clone())),
        fleet.as_ref(),
        mirror.as_ref(),
    )
    .await?;

    crate::observe::metrics::record_reload(true);
    crate::observe::metrics::record_certificates(&config);
    // `gateway reload` asks here and waits for the verdict.
    let (reload_sender, mut reload_requests) = tokio::sync::mpsc::channel(16);
    let control = control::bind(state).map_err(|source| DaemonError::Io {
        what: "binding the control socket (control.sock in the state directory)",
        source,
    })?;
    tokio::spawn(control::serve(control, reload_sender));

    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    let mut certificates = tokio::time::interval(config.proxy.certificate_check_interval);
    let mut revocations = tokio::time::interval(SWEEP_INTERVAL);
    info!(
        pin_dir = %pins.path().display(),
        state_dir = %state.path().display(),
        xdp = kernel.is_some(),
        listeners = config.listeners.len(),
        "gateway running"
    );
    let notify = crate::systemd::Notifier::from_env();
    notify.ready();
    // Pinged from this loop, so a wedged loop (not just a live process) is caught.
    let mut watchdog = notify.watchdog_interval().map_or_else(
        || tokio::time::interval(Duration::from_secs(3600)),
        tokio::time::interval,
    );
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = reopen.recv() => reopen_logs(),
            _ = hangup.recv() => {
                reopen_logs();
                let planes = Planes { kernel: kernel.as_ref(), proxy: proxy.as_ref(), admin: &admin, abuse: &abuse };
                notify.reloading();
                reload(config_path, &mut config, planes, state).await;
                notify.ready();
            }
            Some(request) = reload_requests.recv() => {
                let planes = Planes { kernel: kernel.as_ref(), proxy: proxy.as_ref(), admin: &admin, abuse: &abuse };
                notify.reloading();
                let verdict = reload(config_path, &mut config, planes, state).await;
                notify.ready();
                // A client that gave up waiting is no reason to stop.
                let _ = request.reply.send(verdict);
            }
            Some(request) = block_requests.recv() => {
                block(kernel.as_ref(), state, &mut provenance, mirror.as_ref(), request);
            }
            Some(request) = mirror_request(&mut mirror) => {
                if let Some(mirror) = &mut mirror
                    && mirror.handle(request, kernel.as_ref().map(|kernel| &kernel.maps))
                    && let Some(proxy) = &proxy
                {
                    proxy.reload_revocations();
                }
            }
            _ = watchdog.tick(), if notify.watchdog_interval().is_some() => notify.watchdog(),
            _ = sweep.tick() => {
                if let Some(kernel) = &mut kernel {
                    sweep_once(kernel, state);
                }
                end_blocks(kernel.as_ref(), state, &mut provenance, &abuse);
                save_quotas(&quotas, state);
                if let Some(mirror) = &mut mirror {
                    mirror.revocations_now();
                }
            }
            _ = user2.recv() => {
                if let Some(proxy) = &proxy {
                    proxy.reload_revocations();
                }
                if let Some(mirror) = &mut mirror {
                    mirror.revocations_now();
                }
            }
            _ = revocations.tick(), if proxy.is_some() => {
                if let Some(proxy) = &proxy {
                    proxy.check_revocations();
                }
            }
            _ = certificates.tick(), if proxy.is_some() => {
                if let Some(proxy) = &proxy {
                    proxy.check_certificates();
                }
            }
            ready = events_ready(&mut kernel) => match ready {
                Ok(mut guard) => {
                    drain_events(guard.get_inner_mut(), &abuse);
                    guard.clear_ready();
                }
                Err(err) => error!(%err, "polling the event ring buffer failed"),
            },
        }
    }
    notify.stopping();
    if let Some(proxy) = proxy {
        let deadline = config.proxy.drain_timeout;
        info!(deadline = %humantime::format_duration(deadline), "draining: no new connections; in-flight requests may finish");
        if proxy.drain(deadline).await {
            info!("drained: every connection closed");
        } else {
            warn!("drain deadline passed; closing the remaining connections");
        }
    }
    save_quotas(&quotas, state);
    // A client connecting now is told no daemon runs, not left waiting.
    let _ = std::fs::remove_file(state.path().join(control::SOCKET));
    if let Some(kernel) = &mut kernel {
        sweep_once(kernel, state);
        info!("stopping; the XDP program stays attached and keeps filtering");
    }
    Ok(())
}

/// Fails naming the capabilities this config needs and the process lacks:
/// CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON for the kernel plane, and
/// CAP_NET_BIND_SERVICE for a listener (or the admin endpoint) on a port below
/// `net.ipv4.ip_unprivileged_port_start`, before anything is started.
fn require_capabilities(config: &Config) -> Result<(), crate::caps::MissingCapability> {
    use crate::caps::{Cap, require};
    if config.xdp.enabled {
        require("running the XDP plane", &Cap::XDP)?;
    }
    let start = crate::caps::unprivileged_port_start();
    let low_port = config
        .listeners
        .iter()
        .map(|listener| listener.address.port())
        .chain(config.admin.enabled.then_some(config.admin.address.port()))
        .any(|port| port != 0 && port < start);
    if low_port {
        require(
            "binding a port below net.ipv4.ip_unprivileged_port_start",
            &[Cap::NetBindService],
        )?;
    }
    Ok(())
}

/// The admin state (metrics, readiness, `/config`), served on the admin
/// listener unless `[admin] enabled = false`, and judged by the alert rules.
async fn start_admin(
    config: &Config,
    proxy: Option<&Proxy>,
    kernel: Option<(PinDir, StateDir)>,
    fleet: Option<&Link>,
    mirror: Option<&Mirror>,
) -> Result<Arc<AdminState>, DaemonError> {
    let mut state = AdminState::new(config, proxy.map(Proxy::snapshots), kernel);
    let started = std::time::Instant::now();
    if let Some(mirror) = mirror {
        let ready = mirror.readiness();
        state.add_ready_check("fleet", Box::new(move || ready(started.elapsed())));
    } else if let Some(link) = fleet {
        let link = link.clone();
        state.add_ready_check("fleet", Box::new(move || link.ready(started.elapsed())));
    }
    let state = Arc::new(state);
    if config.admin.enabled {
        let address = config.admin.address;
        let listener = admin::bind(address)
            .await
            .map_err(|source| DaemonError::Admin { address, source })?;
        info!(address = %listener.local_addr().unwrap_or(address), "admin endpoint listening (/metrics, /healthz, /readyz, /config, /xdp/top)");
        tokio::spawn(admin::serve(listener, state.clone()));
    }
    crate::observe::alerts::spawn(&config.alerts, state.clone());
    Ok(state)
}

/// The fleet's next request; never resolves without a fleet.
async fn mirror_request(mirror: &mut Option<Mirror>) -> Option<crate::fleet::sync::Request> {
    match mirror {
        Some(mirror) => mirror.next().await,
        None => std::future::pending().await,
    }
}

/// A background task that ends with the daemon's loop.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// SIGUSR1 (and SIGHUP): reopen the log files at their paths, for logrotate.
fn reopen_logs() {
    for err in crate::observe::logs::reopen() {
        error!(%err, "reopening a log file failed; still writing to the old one");
    }
}

/// What a reload changes besides the config itself.
struct Planes<'a> {
    kernel: Option<&'a KernelPlane>,
    proxy: Option<&'a Proxy>,
    admin: &'a AdminState,
    abuse: &'a Abuse,
}

/// Re-reads the config file into `running`. An invalid file, or one the proxy
/// cannot apply, changes nothing; the verdict is logged and returned.
async fn reload(
    path: &Path,
    running: &mut Config,
    planes: Planes<'_>,
    state: &StateDir,
) -> ReloadVerdict {
    info!(path = %path.display(), "reloading the configuration");
    let rejected = |errors: Vec<String>| {
        crate::observe::metrics::record_reload(false);
        let err = errors.join("; ");
        error!(%err, "reload rejected; the running configuration stays");
        error!(target: "audit", event = "config_reload_rejected", path = %path.display(), %err);
        ReloadVerdict {
            accepted: false,
            errors,
            warnings: Vec::new(),
        }
    };
    let config = match Config::load_checked(path) {
        Ok(config) => config,
        Err(err) => return rejected(err.problems()),
    };
    let mut warnings = Vec::new();
    if config.log != running.log || config.admin != running.admin || config.alerts != running.alerts
    {
        warnings.push("[log], [admin] and [[alert]] changes need a restart".to_owned());
    }
    if config.fleet != running.fleet {
        warnings.push("[fleet] changes need a restart".to_owned());
    }
    if config.xdp.enabled != running.xdp.enabled || config.xdp.interface != running.xdp.interface {
        warnings.push("xdp.enabled and xdp.interface changes need a restart".to_owned());
    }
    if planes.proxy.is_none() && !config.listeners.is_empty() {
        warnings.push(
            "starting the proxy needs a restart (the daemon started without listeners)".to_owned(),
        );
    }
    if let Some(proxy) = planes.proxy
        && let Err(err) = proxy.reload(&config).await
    {
        return rejected(vec![err.to_string()]);
    }
    if let Some(kernel) = planes.kernel
        && let Err(err) = kernel.reload(&config, state)
    {
        error!(%err, "applying the reloaded XDP settings failed");
        warnings.push(format!("applying the reloaded XDP settings failed: {err}"));
    }
    for warning in &warnings {
        warn!("{warning}");
    }
    info!(
        routes = config.routes.len(),
        upstreams = config.upstreams.len(),
        "configuration reloaded"
    );
    info!(
        target: "audit",
        event = "config_reloaded",
        path = %path.display(),
        routes = config.routes.len(),
        upstreams = config.upstreams.len(),
        listeners = config.listeners.len(),
    );
    crate::observe::metrics::record_reload(true);
    crate::observe::metrics::record_certificates(&config);
    planes.admin.set_config(&config);
    planes.abuse.reconfigure(&config);
    *running = config;
    ReloadVerdict {
        accepted: true,
        errors: Vec::new(),
        warnings,
    }
}

/// Refuses to start over a state file that cannot be read: starting empty would
/// forget blocks and revocations that were acknowledged as saved.
fn check_state(state: &StateDir) -> Result<(), StateError> {
    crate::lists::check_saved(state)?;
    Denylist::load(&state.revocations_path())?;
    state.attachment()?;
    Ok(())
}

/// Adopts the pinned program when there is one, so a restart never opens a gap in
/// filtering; attaches a new one otherwise, or when the pinned one's interface is gone.
fn attach_or_adopt(
    config: &Config,
    pins: &PinDir,
    state: &StateDir,
) -> Result<KernelMaps, DaemonError> {
    if xdp::pinned_layout_is_old(pins)? && xdp::unpin_link(pins)? {
        // Its maps cannot be read by this gateway: attaching afresh replaces program
        // and maps, and the sweeper's start restores the lists from the state files.
        warn!(
            "the pinned XDP program and maps come from an older gateway with another map \
             layout; replacing them (the lists are restored from the state directory, \
             rate-limit buckets and counters start afresh)"
        );
    }
    if let Some(program_id) = xdp::pinned_program_id(pins)? {
        match state.attachment()? {
            Some(attachment) if !xdp::attachment_is_live(&attachment) => {
                warn!(
                    interface = %attachment.interface,
                    ifindex = attachment.ifindex,
                    "the pinned program's interface is gone or was recreated; attaching again \
                     (the maps and their lists are kept)"
                );
                xdp::unpin_link(pins)?;
            }
            attachment => {
                if let Some(attachment) = attachment
                    && attachment.interface != config.xdp.interface
                {
                    warn!(
                        attached_to = %attachment.interface,
                        configured = %config.xdp.interface,
                        "the pinned program is attached to another interface than the config \
                         names; keeping it (run `gateway xdp detach` and restart to move it)"
                    );
                }
                info!(program_id, "adopted the pinned XDP program");
                return Ok(KernelMaps::open(pins)?);
            }
        }
    }
    let attachment = xdp::attach(
        pins,
        &config.xdp.interface,
        config.xdp.mode,
        &config.xdp.capacity,
    )?;
    state.save_attachment(&attachment)?;
    info!(
        interface = %attachment.interface,
        mode = attachment.mode.as_str(),
        program_id = attachment.program_id,
        "attached the XDP program"
    );
    Ok(KernelMaps::open(pins)?)
}

/// Writes the config's rate limits, monitor switches and IPv6 grouping into the
/// program's config map.
fn apply_settings(config: &Config, maps: &KernelMaps) -> Result<(), DaemonError> {
    let mut settings = XdpConfig {
        ipv6_rate_mask: ipv6_mask(config.xdp.ipv6_rate_limit_prefix),
        monitor: config.xdp.monitor.bits(),
        ..XdpConfig::default()
    };
    config.xdp.rate_limit.apply_to(&mut settings);
    maps.set_config(&settings)?;
    info!(
        pps = config.xdp.rate_limit.pps,
        burst = config.xdp.rate_limit.burst,
        syn_pps = config.xdp.rate_limit.syn_pps,
        syn_burst = config.xdp.rate_limit.syn_burst,
        monitor = settings.monitor,
        "applied XDP settings"
    );
    Ok(())
}

fn sweep_once(kernel: &mut KernelPlane, state: &StateDir) {
    match kernel.sweeper.sweep(&Lists::new(&kernel.maps, state)) {
        Ok(sweep) => {
            for (kind, cidr) in sweep.expired {
                info!(target: "audit", event = "list_expired", list = kind.name(), %cidr, source = "daemon");
            }
        }
        Err(err) => error!(%err, "sweeping the lists failed; retrying in a second"),
    }
}

/// Puts an abuse block into the kernel (when the kernel plane runs), records
/// why, and says so in the audit log. With XDP off the block is still decided
/// and recorded, so the operator sees what the loop would have done.
fn block(
    kernel: Option<&KernelPlane>,
    state: &StateDir,
    provenance: &mut ProvenanceFile,
    mirror: Option<&Mirror>,
    mut request: BlockRequest,
) {
    let signals: Vec<String> = request
        .provenance
        .signals
        .iter()
        .map(|(signal, count)| format!("{signal}={count}"))
        .collect();
    let reason = format!("abuse: {}", signals.join(" "));
    let applied = kernel.is_some_and(|kernel| {
        let lists = Lists::new(&kernel.maps, state);
        let added = match mirror.filter(|mirror| mirror.shares_blocks()) {
            Some(mirror) => lists
                .add_shared(&[request.cidr], Some(request.ttl), &reason, Source::Daemon, mirror.node())
                .map(|shared| mirror.publish_block(&request.cidr, &reason, &shared)),
            None => lists.add(
                ListKind::Block,
                &[request.cidr],
                Some(request.ttl),
                &reason,
                Source::Daemon,
            ),
        };
        match added {
            Ok(()) => true,
            Err(err) => {
                error!(address = %request.cidr, %err, "putting an abuse block into the kernel failed");
                false
            }
        }
    });
    request.provenance.kernel = applied;
    // Saved before the audit line, so whoever reads that line can explain it.
    provenance.push(request.cidr, request.provenance.clone());
    save_provenance(state, provenance);
    let p = &request.provenance;
    warn!(
        target: "audit",
        event = "abuse_block",
        address = %request.cidr,
        ttl_secs = p.ttl_secs,
        offence = p.offence,
        score = p.score,
        threshold = p.threshold,
        signals = %signals.join(" "),
        first_route = p.first.route.as_deref(),
        first_rule = p.first.rule.as_deref(),
        last_route = p.last.route.as_deref(),
        last_rule = p.last.rule.as_deref(),
        last_token_id = p.last.token_id.as_deref(),
        last_forwarded_by = p.last.forwarded_by.map(|ip| ip.to_string()),
        aggregated_from = p.aggregated_from.map(|c| c.to_string()),
        kernel_plane = if kernel.is_some() { "on" } else { "off" },
        applied,
        "address blocked for abuse{}",
        if kernel.is_some() { "" } else { " (decision only: the kernel plane is off)" }
    );
    metrics::counter!("gateway_abuse_blocks_total", "applied" => if applied { "true" } else { "false" }).increment(1);
}

/// Ends the open blocks whose TTL ran out or that someone removed from the
/// blocklist, each with an audit event; the proxy stops enforcing them.
fn end_blocks(
    kernel: Option<&KernelPlane>,
    state: &StateDir,
    provenance: &mut ProvenanceFile,
    abuse: &Abuse,
) {
    let now = clock::unix_now();
    let open: Vec<(Cidr, u64)> = provenance
        .blocks
        .iter()
        .filter_map(|(cidr, history)| {
            let last = history.last()?;
            last.unblocked_at
                .is_none()
                .then_some((*cidr, last.expires_at))
        })
        .collect();
    if open.is_empty() {
        return;
    }
    let mut changed = false;
    for (cidr, expires_at) in open {
        let reason = if expires_at <= now {
            "expired"
        } else if kernel.is_some_and(|kernel| !kernel.sweeper.contains(ListKind::Block, &cidr)) {
            "removed"
        } else {
            continue;
        };
        abuse.lift(&cidr);
        if let Some(ended) = provenance.end(&cidr, now, reason) {
            info!(
                target: "audit",
                event = "abuse_unblock",
                address = %cidr,
                reason,
                offence = ended.offence,
                blocked_at = ended.blocked_at,
                "abuse block ended"
            );
            changed = true;
        }
    }
    if changed {
        save_provenance(state, provenance);
    }
}

fn save_quotas(quotas: &Quotas, state: &StateDir) {
    if let Err(err) = quotas.save(state) {
        error!(%err, "saving the quota counts failed; retrying in a second");
    }
}

fn save_provenance(state: &StateDir, provenance: &ProvenanceFile) {
    if let Err(err) = provenance.save(state) {
        error!(%err, "saving the abuse provenance failed; `gateway explain` may miss this block");
    }
}

fn drain_events(ring: &mut RingBuf<MapData>, abuse: &Arc<Abuse>) {
    while let Some(item) = ring.next() {
        let Some(event) = parse_event(&item) else {
            warn!(
                len = item.len(),
                "ignoring a ring-buffer record of unexpected size"
            );
            continue;
        };
        let kind = match event.kind {
            event_kind::SYN_RATE_LIMIT => "syn",
            _ => "packets",
        };
        let source = addr::addr_to_ip(event.addr);
        abuse.record(
            source,
            Signal::XdpRateExceeded,
            Evidence {
                code: Some(format!("xdp_{kind}_rate_exceeded")),
                ..Evidence::new(Signal::XdpRateExceeded)
            },
        );
        warn!(
            event = "rate_limit_exceeded",
            %source,
            limit = kind,
            "source ran out of rate-limit tokens; its excess packets are dropped in XDP"
        );
    }
}

fn parse_event(bytes: &[u8]) -> Option<RateEvent> {
    if bytes.len() != size_of::<RateEvent>() {
        return None;
    }
    // SAFETY: the length matches and RateEvent is plain old data valid for any bytes;
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    Some(unsafe { bytes.as_ptr().cast::<RateEvent>().read_unaligned() })
}

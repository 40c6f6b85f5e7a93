//! Keeps this edge's blocklist and denylist in step with the fleet's shared
//! sets, both ways.
//!
//! A background task ([`tail`]) owns the Redis side: on every new link epoch
//! (first connect, reconnect, Redis restarted empty) it publishes what this
//! edge holds (its own blocks made while Redis was away, and the fleet's, so
//! an emptied Redis is made whole), then the removals it could not publish
//! (`fleet-pending.json`), then takes a snapshot of both sets and hands it to
//! the daemon; after that it tails the event stream. The daemon's loop owns
//! the kernel maps and state files, so every change lands through [`Mirror`]
//! on the loop, through the same list code a local block takes.
//!
//! Redis is never on the request path here: everything is background work.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{
    FleetError, Link,
    blocks::{self, Bounds, Pending, Refused},
    revocations,
    stream::{self, Event, Set, Snapshot, Wire},
};
use crate::{
    addr::Cidr,
    auth::revocation::Denylist,
    clock,
    config::FleetSection,
    lists::{ListError, Lists, SharedRemoval},
    state::{Shared, StateDir, StateError},
    xdp::KernelMaps,
};

/// What the tail task asks of the daemon's loop.
pub enum Request {
    /// The shared entries this edge holds, to republish.
    Held(oneshot::Sender<Vec<(Set, Wire)>>),
    /// The fleet's whole sets as of `taken_ms`; answered once applied.
    Resync {
        snapshot: Snapshot,
        taken_ms: u64,
        done: oneshot::Sender<()>,
    },
    /// One change from the stream.
    Event(Event),
}

/// The daemon's end: applies what the fleet shares and publishes what this
/// edge decides.
pub struct Mirror {
    link: Link,
    bounds: Bounds,
    state: StateDir,
    requests: mpsc::Receiver<Request>,
    synced: Arc<AtomicU64>,
    /// The denylist as last seen, to find what the CLI changed.
    seen: Option<Denylist>,
    seen_modified: Option<std::time::SystemTime>,
}

impl Mirror {
    /// Starts the tail task; the mirror must be driven by the daemon's loop
    /// ([`Mirror::next`], [`Mirror::handle`]).
    pub fn start(
        link: &Link,
        config: &FleetSection,
        state: &StateDir,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (sender, requests) = mpsc::channel(1024);
        let synced = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(tail(link.clone(), sender, state.clone(), synced.clone()));
        (
            Self {
                link: link.clone(),
                bounds: Bounds::new(config),
                state: state.clone(),
                requests,
                synced,
                seen: None,
                seen_modified: None,
            },
            task,
        )
    }

    /// `/readyz`'s check: ready once the shared sets were applied after the
    /// link came up, or once Redis stayed away as long as the link's own
    /// check allows (an edge restarted while Redis is down serves from its
    /// local state).
    pub fn readiness(&self) -> impl Fn(Duration) -> Result<(), String> + Send + Sync + 'static {
        let (link, synced) = (self.link.clone(), self.synced.clone());
        move |running| {
            link.ready(running)?;
            if synced.load(Ordering::Acquire) > 0 || !link.is_connected() {
                Ok(())
            } else {
                Err("shared blocks and revocations not synchronised yet".to_owned())
            }
        }
    }

    /// This edge's name in the fleet.
    pub fn node(&self) -> &str {
        &self.bounds.node
    }

    /// Whether blocks are shared (`fleet.share.blocks`).
    pub fn shares_blocks(&self) -> bool {
        self.link.share().blocks
    }

    /// The next request of the tail task.
    pub async fn next(&mut self) -> Option<Request> {
        self.requests.recv().await
    }

    /// Applies `request`; returns whether `revocations.json` changed (the
    /// daemon then has the proxy re-read it).
    pub fn handle(&mut self, request: Request, maps: Option<&KernelMaps>) -> bool {
        let changed = self.apply(request, maps);
        if changed {
            self.saw_revocations();
        }
        changed
    }

    fn apply(&mut self, request: Request, maps: Option<&KernelMaps>) -> bool {
        let share = self.link.share().clone();
        let now = clock::unix_now_ms();
        match request {
            Request::Held(reply) => {
                let mut held = Vec::new();
                if share.blocks
                    && let Some(maps) = maps
                {
                    match Lists::new(maps, &self.state).shared() {
                        Ok(entries) => held.extend(entries.iter().filter_map(|(cidr, record)| {
                            let shared = record.fleet.as_ref()?;
                            Some((Set::Blocks, blocks::wire(cidr, &record.reason, shared)))
                        })),
                        Err(err) => warn!(%err, "reading the shared blocks to republish failed"),
                    }
                }
                if share.revocations {
                    match Denylist::load(&self.state.revocations_path()) {
                        Ok(list) => held.extend(
                            revocations::held(&list, &self.bounds.node)
                                .into_iter()
                                .map(|wire| (Set::Revocations, wire)),
                        ),
                        Err(err) => warn!(%err, "reading the revocations to republish failed"),
                    }
                }
                let _ = reply.send(held);
                false
            }
            Request::Resync {
                snapshot,
                taken_ms,
                done,
            } => {
                let mut changed = false;
                if share.blocks
                    && let Some(maps) = maps
                {
                    let accepted = self.accept_blocks(&snapshot.blocks, now);
                    let keep: HashSet<Cidr> = accepted.iter().map(|(cidr, _)| *cidr).collect();
                    let lists = Lists::new(maps, &self.state);
                    let result = lists.put_shared(&accepted).and_then(|added| {
                        let removed = lists.remove_shared(SharedRemoval::AllBut {
                            keep: &keep,
                            before: taken_ms,
                        })?;
                        Ok((added, removed))
                    });
                    match result {
                        Ok((added, removed)) => info!(
                            shared = keep.len(),
                            added = added.len(),
                            removed = removed.len(),
                            "blocklist synchronised with the fleet"
                        ),
                        Err(err) => warn!(%err, "applying the fleet's blocks failed"),
                    }
                }
                if share.revocations {
                    let accepted = self.accept_revocations(&snapshot.revocations, now);
                    let keep: HashSet<String> = snapshot
                        .revocations
                        .iter()
                        .map(|(key, _)| key.clone())
                        .collect();
                    changed =
                        revocations::apply(&self.state, accepted, &[], Some((&keep, taken_ms)))
                            .unwrap_or_else(|err| {
                                warn!(%err, "applying the fleet's revocations failed");
                                false
                            });
                }
                let _ = done.send(());
                changed
            }
            Request::Event(Event::Put(set, wire)) => {
                let wire = match wire {
                    Ok(wire) => wire,
                    Err(why) => {
                        warn!(set = set.name(), %why, "ignoring a shared entry from Redis that is not one");
                        return false;
                    }
                };
                match set {
                    Set::Blocks if share.blocks => {
                        let Some(maps) = maps else { return false };
                        let accepted = self.accept_wires(&[wire], now);
                        match Lists::new(maps, &self.state).put_shared(&accepted) {
                            Ok(added) => {
                                for (cidr, record) in &accepted {
                                    let Some(shared) =
                                        record.fleet.as_ref().filter(|_| added.contains(cidr))
                                    else {
                                        continue;
                                    };
                                    info!(target: "audit", event = "fleet_block", address = %cidr, origin = %shared.origin, version = shared.version, reason = %record.reason.escape_debug(), "shared block applied");
                                }
                            }
                            Err(err) => warn!(%err, "applying a shared block failed"),
                        }
                        false
                    }
                    Set::Revocations if share.revocations => {
                        let accepted: Vec<_> = match revocations::accept(&wire, now) {
                            Ok(accepted) => vec![accepted],
                            Err(refused) => {
                                refused_warning(set, &wire.key, refused);
                                return false;
                            }
                        };
                        revocations::apply(&self.state, accepted, &[], None).unwrap_or_else(|err| {
                            warn!(%err, "applying a shared revocation failed");
                            false
                        })
                    }
                    _ => false,
                }
            }
            Request::Event(Event::Remove { set, key, version }) => match set {
                Set::Blocks if share.blocks => {
                    let (Some(maps), Ok(cidr)) = (maps, key.parse::<Cidr>()) else {
                        return false;
                    };
                    match Lists::new(maps, &self.state)
                        .remove_shared(SharedRemoval::Each(&[(cidr, version)]))
                    {
                        Ok(removed) => {
                            for cidr in removed {
                                info!(target: "audit", event = "fleet_unblock", address = %cidr, "shared block removed");
                            }
                        }
                        Err(err) => warn!(%err, "removing a shared block failed"),
                    }
                    false
                }
                Set::Revocations if share.revocations => {
                    revocations::apply(&self.state, Vec::new(), &[(key, version)], None)
                        .unwrap_or_else(|err| {
                            warn!(%err, "removing a shared revocation failed");
                            false
                        })
                }
                _ => false,
            },
        }
    }

    fn accept_wires(&self, wires: &[Wire], now: u64) -> Vec<(Cidr, crate::state::Record)> {
        wires
            .iter()
            .filter_map(|wire| match blocks::accept(wire, &self.bounds, now) {
                Ok(accepted) => Some(accepted),
                Err(refused) => {
                    refused_warning(Set::Blocks, &wire.key, refused);
                    None
                }
            })
            .collect()
    }

    fn accept_blocks(
        &self,
        raw: &[(String, String)],
        now: u64,
    ) -> Vec<(Cidr, crate::state::Record)> {
        let wires: Vec<Wire> = raw
            .iter()
            .filter_map(|(field, text)| match Wire::parse(field, text) {
                Ok(wire) => Some(wire),
                Err(why) => {
                    refused_warning(Set::Blocks, field, Refused::Invalid(why));
                    None
                }
            })
            .collect();
        self.accept_wires(&wires, now)
    }

    fn accept_revocations(
        &self,
        raw: &[(String, String)],
        now: u64,
    ) -> Vec<(
        revocations::Kind,
        String,
        crate::auth::revocation::Revocation,
    )> {
        raw.iter()
            .filter_map(|(field, text)| {
                let accepted = Wire::parse(field, text)
                    .map_err(Refused::Invalid)
                    .and_then(|wire| revocations::accept(&wire, now));
                accepted
                    .map_err(|refused| refused_warning(Set::Revocations, field, refused))
                    .ok()
            })
            .collect()
    }

    /// Publishes a block this edge just made (off the loop; when Redis does
    /// not take it, it stays local and goes out on the next link epoch).
    pub fn publish_block(&self, cidr: &Cidr, reason: &str, shared: &Shared) {
        let wire = blocks::wire(cidr, reason, shared);
        let link = self.link.clone();
        tokio::spawn(async move {
            if let Err(err) = stream::put(&link, Set::Blocks, &wire).await {
                debug!(%err, key = %wire.key, "block kept local; published when Redis is back");
            }
        });
    }

    /// Publishes what the CLI changed in `revocations.json` since last seen
    /// (removals that cannot go out now are held in `fleet-pending.json`).
    /// Cheap when nothing changed: the file's modification time is compared.
    pub fn revocations_now(&mut self) {
        if !self.link.share().revocations {
            return;
        }
        let path = self.state.revocations_path();
        let modified = std::fs::metadata(&path)
            .and_then(|meta| meta.modified())
            .ok();
        if self.seen.is_some() && modified == self.seen_modified {
            return;
        }
        let current = match Denylist::load(&path) {
            Ok(current) => current,
            Err(err) => {
                warn!(%err, "reading the revocations to share failed");
                return;
            }
        };
        self.seen_modified = modified;
        // The first look is the baseline: what was there is published by the
        // resync on every link epoch.
        let Some(seen) = self.seen.replace(current.clone()) else {
            return;
        };
        let (puts, removed) = revocations::changes(&seen, &current, &self.bounds.node);
        self.publish_revocations(puts, removed);
    }

    /// Sends revocations made here, and removals, to the fleet in the background.
    fn publish_revocations(&self, puts: Vec<Wire>, removed: Vec<String>) {
        if puts.is_empty() && removed.is_empty() {
            return;
        }
        let link = self.link.clone();
        let state = self.state.clone();
        tokio::spawn(async move {
            for wire in puts {
                if let Err(err) = stream::put(&link, Set::Revocations, &wire).await {
                    debug!(%err, key = %wire.key, "revocation kept local; published when Redis is back");
                }
            }
            let version = clock::unix_now_ms();
            let removals: Vec<(String, u64)> =
                removed.into_iter().map(|key| (key, version)).collect();
            publish_removals(&link, &state, Set::Revocations, &removals, true).await;
        });
    }

    /// Takes the denylist as it is after the fleet changed it, so those
    /// changes are not taken for the CLI's and published back.
    /// A revocation the CLI wrote just before the fleet's change is in the file
    /// too: it is published now rather than taken as seen (a revocation must not
    /// wait for the next reconnect; an unrevoke racing the fleet does, which
    /// errs on the side of refusing).
    fn saw_revocations(&mut self) {
        let path = self.state.revocations_path();
        if let Ok(current) = Denylist::load(&path) {
            self.seen_modified = std::fs::metadata(&path)
                .and_then(|meta| meta.modified())
                .ok();
            if let Some(seen) = self.seen.replace(current.clone()) {
                let (puts, _) = revocations::changes(&seen, &current, &self.bounds.node);
                let local = puts
                    .into_iter()
                    .filter(|wire| wire.origin == self.bounds.node);
                self.publish_revocations(local.collect(), Vec::new());
            }
        }
    }
}

fn refused_warning(set: Set, key: &str, refused: Refused) {
    if let Refused::Invalid(why) = refused {
        warn!(set = set.name(), key = %key.escape_debug(), %why, "ignoring a shared entry from Redis");
    }
}

/// Publishes removals; those Redis did not take are held for the next epoch
/// (when `hold`), those it took are forgotten from the held record.
pub async fn publish_removals(
    link: &Link,
    state: &StateDir,
    set: Set,
    removals: &[(String, u64)],
    hold: bool,
) -> bool {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (key, version) in removals {
        match stream::remove(link, set, key, *version).await {
            Ok(_) => done.push((key.clone(), *version)),
            Err(err) => {
                debug!(%err, %key, "removal held; published when Redis is back");
                failed.push((key.clone(), *version));
            }
        }
    }
    let saved = if hold && !failed.is_empty() {
        Pending::hold(state, set, &failed)
    } else {
        Pending::forget(state, set, &done)
    };
    if let Err(err) = saved {
        warn!(%err, "saving the fleet's pending removals failed");
    }
    failed.is_empty()
}

/// How long one `XREAD` waits: under the connection's response timeout.
fn read_block(link: &Link) -> Duration {
    (link.background_timeout() / 2).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// The tail task: resynchronise on every epoch, then follow the stream.
async fn tail(
    link: Link,
    requests: mpsc::Sender<Request>,
    state: StateDir,
    synced: Arc<AtomicU64>,
) {
    let mut epochs = link.epochs();
    loop {
        let epoch = *epochs.borrow_and_update();
        if epoch == 0 || !link.is_connected() {
            if epochs.changed().await.is_err() {
                return;
            }
            continue;
        }
        let last_id = match resync(&link, &requests, &state).await {
            Ok(last_id) => last_id,
            Err(err) => {
                // While the link is going down this is expected; the link logs that.
                if link.is_connected() {
                    warn!(%err, "synchronising with the fleet's shared sets failed; retrying");
                } else {
                    debug!(%err, "synchronising with the fleet's shared sets failed; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        synced.store(epoch, Ordering::Release);
        if let Err(err) = follow(&link, &requests, &mut epochs, last_id).await {
            debug!(%err, "the fleet's event stream broke; resynchronising");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    List(#[from] ListError),
    #[error("the daemon stopped")]
    Stopped,
    #[error("{0} held entries could not be published")]
    Unpublished(usize),
}

/// Publishes what this edge holds and owes, then applies the fleet's sets;
/// returns the stream position to follow from.
async fn resync(
    link: &Link,
    requests: &mpsc::Sender<Request>,
    state: &StateDir,
) -> Result<String, SyncError> {
    let pending = Pending::load(state)?;
    for (set, removals) in [
        (Set::Blocks, pending.blocks),
        (Set::Revocations, pending.revocations),
    ] {
        let removals: Vec<(String, u64)> = removals.into_iter().collect();
        if !removals.is_empty() && !publish_removals(link, state, set, &removals, false).await {
            return Err(SyncError::Unpublished(removals.len()));
        }
    }
    let (reply, held) = oneshot::channel();
    requests
        .send(Request::Held(reply))
        .await
        .map_err(|_| SyncError::Stopped)?;
    let held = held.await.map_err(|_| SyncError::Stopped)?;
    let mut published = 0;
    let mut failed = 0;
    for chunk in held.chunks(64) {
        let results = futures_util::future::join_all(
            chunk
                .iter()
                .map(|(set, wire)| stream::put(link, *set, wire)),
        )
        .await;
        for result in results {
            match result {
                Ok(true) => published += 1,
                Ok(false) => {}
                Err(_) => failed += 1,
            }
        }
    }
    if failed > 0 {
        return Err(SyncError::Unpublished(failed));
    }
    if published > 0 {
        info!(
            published,
            "republished shared entries the fleet's Redis lacked"
        );
    }
    let taken_ms = clock::unix_now_ms();
    let snapshot = stream::snapshot(link, taken_ms).await?;
    let last_id = snapshot.last_id.clone();
    let (done, applied) = oneshot::channel();
    requests
        .send(Request::Resync {
            snapshot,
            taken_ms,
            done,
        })
        .await
        .map_err(|_| SyncError::Stopped)?;
    applied.await.map_err(|_| SyncError::Stopped)?;
    Ok(last_id)
}

/// Reads the stream from `last_id` until it breaks or the link's epoch moves.
async fn follow(
    link: &Link,
    requests: &mpsc::Sender<Request>,
    epochs: &mut tokio::sync::watch::Receiver<u64>,
    mut last_id: String,
) -> Result<(), SyncError> {
    let block = read_block(link);
    let mut conn = link.dedicated(block).await?;
    loop {
        if epochs.has_changed().unwrap_or(true) {
            return Ok(());
        }
        let (events, last) = stream::read(link, &mut conn, &last_id, block).await?;
        last_id = last;
        for event in events {
            requests
                .send(Request::Event(event))
                .await
                .map_err(|_| SyncError::Stopped)?;
        }
    }
}

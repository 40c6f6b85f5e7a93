//! Quotas: requests per key (usually the verified subject) per calendar hour,
//! day or month in UTC. Counts live in memory and in `quota.json` in the state
//! directory; the daemon writes them every second and when it stops, so a
//! restart neither forgets nor double-counts (a crash loses at most the last
//! second's counts, in the client's favour).
//!
//! With `[fleet]` and `share.quotas`, the count is the fleet's: one atomic
//! script in Redis checks and counts (see [`super::shared`]), so the fleet
//! admits exactly the quota while Redis answers, and the local count follows
//! the fleet's (it never drops below what Redis reported). A request waits
//! on Redis for at most `fleet.budget`; then `fleet.quota_when_unreachable`
//! decides: `open` counts locally from the last fleet count seen and
//! admits, `closed` refuses with 503. Charges counted locally while the link
//! was down are added to Redis when it returns, and a Redis that came back
//! empty is raised again to every count this gateway holds.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::{
    ratelimit::key_for,
    shared::{self, Charge},
};
use crate::{
    auth::Identity,
    clock,
    config::{Period, QuotaConfig, RouteConfig, fleet::Unreachable},
    fleet::{FleetError, Link},
    state::{StateDir, StateError},
};

/// The state file's name.
pub const FILE: &str = "quota.json";

/// One key's use of one quota in one period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// Unix seconds at which the counted period began.
    pub period_start: u64,
    pub used: u64,
}

/// The contents of `quota.json`: `route/quota/key` → count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaFile {
    pub counts: BTreeMap<String, Count>,
}

/// A spent quota: 429 until `reset_secs` from now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exhausted {
    pub quota: String,
    pub limit: u64,
    pub reset_secs: u64,
}

/// Why a request gets no quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The quota is spent (429).
    Exhausted(Exhausted),
    /// The quota is shared, the fleet's Redis gave no answer within the
    /// budget and `fleet.quota_when_unreachable = "closed"` (503): the
    /// fleet's fault, not the client's.
    Unavailable { quota: String },
}

/// Seconds a shared count outlives its period, so a gateway whose clock is
/// a little behind still finds it.
const COUNT_GRACE: u64 = 300;

/// How often owed counts are offered to Redis.
const RESYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How a charge was counted, so a refund gives it back in the same place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Where {
    /// Here only (no fleet, or the fleet's answer did not come in time).
    #[default]
    Local,
    /// In Redis; the local count follows.
    Fleet(Vec<shared::Count>),
    /// Here, and queued for Redis (the link was down).
    Pending(Vec<shared::Count>),
}

/// What a passed request has left, for the `Quota-Remaining` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remaining {
    pub quota: String,
    pub remaining: u64,
    pub reset_secs: u64,
    /// The counts this request was charged to (slot, period start): what a
    /// refund gives back. Empty for a look that charged nothing.
    charged: Vec<(String, u64)>,
    counted: Where,
}

/// Every quota's counts, shared by all snapshots (a reload keeps them).
#[derive(Default)]
pub struct Quotas {
    counts: Mutex<QuotaFile>,
    dirty: AtomicBool,
    fleet: Mutex<FleetCounts>,
}

/// What the local counts owe the fleet's Redis.
#[derive(Default)]
struct FleetCounts {
    /// Charges (refunds negative) counted here while the link was down, by
    /// Redis key: added to Redis when it returns.
    pending: HashMap<String, (shared::Count, i64)>,
    /// The Redis key of every local count seen in the fleet: raised again
    /// when Redis comes back empty.
    known: HashMap<String, shared::Count>,
}

impl Quotas {
    /// The counts saved in `state`.
    pub fn load(state: &StateDir) -> Result<Self, StateError> {
        Ok(Self {
            counts: Mutex::new(state.read_file(FILE)?.unwrap_or_default()),
            dirty: AtomicBool::new(false),
            fleet: Mutex::default(),
        })
    }

    /// Writes the counts when they changed since the last save.
    pub fn save(&self, state: &StateDir) -> Result<(), StateError> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let snapshot = self.lock().clone();
        state.write_file(FILE, &snapshot).inspect_err(|_| {
            self.dirty.store(true, Ordering::Release);
        })
    }

    /// Counts one request against every quota of `route`; refuses it, without
    /// counting, when one is spent. Returns the tightest remaining quota.
    pub fn check(
        &self,
        route: &str,
        quotas: &[QuotaConfig],
        client: IpAddr,
        identity: Option<&Identity>,
        headers: &HeaderMap,
    ) -> Result<Option<Remaining>, Exhausted> {
        if quotas.is_empty() {
            return Ok(None);
        }
        self.check_at(route, quotas, clock::unix_now(), |quota| {
            key_for(&quota.key, client, identity, headers)
        })
    }

    fn check_at(
        &self,
        route: &str,
        quotas: &[QuotaConfig],
        now: u64,
        key: impl Fn(&QuotaConfig) -> String,
    ) -> Result<Option<Remaining>, Exhausted> {
        let slots = slots(route, quotas, now, key);
        let mut file = self.lock();
        for (quota, (slot, start, end)) in quotas.iter().zip(&slots) {
            let used = file
                .counts
                .get(slot)
                .filter(|count| count.period_start == *start)
                .map_or(0, |count| count.used);
            if used >= quota.requests {
                metrics::counter!("gateway_quota_exhausted_total", "route" => route.to_owned(), "quota" => quota.name.clone()).increment(1);
                return Err(Exhausted {
                    quota: quota.name.clone(),
                    limit: quota.requests,
                    reset_secs: end - now,
                });
            }
        }
        let mut tightest: Option<Remaining> = None;
        let charged = slots
            .iter()
            .map(|(slot, start, _)| (slot.clone(), *start))
            .collect();
        for (quota, (slot, start, end)) in quotas.iter().zip(slots) {
            let count = file.counts.entry(slot).or_default();
            if count.period_start != start {
                *count = Count {
                    period_start: start,
                    used: 0,
                };
            }
            count.used += 1;
            let remaining = quota.requests - count.used;
            if tightest.as_ref().is_none_or(|t| remaining < t.remaining) {
                tightest = Some(Remaining {
                    quota: quota.name.clone(),
                    remaining,
                    reset_secs: end - now,
                    charged: Vec::new(),
                    counted: Where::Local,
                });
            }
        }
        self.dirty.store(true, Ordering::Release);
        Ok(tightest.map(|t| Remaining { charged, ..t }))
    }

    /// What is left of the tightest quota, charging nothing.
    fn peek_at(
        &self,
        route: &str,
        quotas: &[QuotaConfig],
        now: u64,
        key: impl Fn(&QuotaConfig) -> String,
    ) -> Option<Remaining> {
        let slots = slots(route, quotas, now, key);
        let file = self.lock();
        quotas
            .iter()
            .zip(slots)
            .map(|(quota, (slot, start, end))| {
                let used = file
                    .counts
                    .get(&slot)
                    .filter(|count| count.period_start == start)
                    .map_or(0, |count| count.used);
                Remaining {
                    quota: quota.name.clone(),
                    remaining: quota.requests.saturating_sub(used),
                    reset_secs: end - now,
                    charged: Vec::new(),
                    counted: Where::Local,
                }
            })
            .min_by_key(|r| r.remaining)
    }

    /// Gives back what `charge` took here, in the periods it was taken in,
    /// and counts it in its `remaining`.
    fn refund(&self, charge: &mut Remaining) {
        let mut file = self.lock();
        for (slot, start) in charge.charged.drain(..) {
            if let Some(count) = file.counts.get_mut(&slot)
                && count.period_start == start
            {
                count.used = count.used.saturating_sub(1);
            }
        }
        charge.remaining += 1;
        self.dirty.store(true, Ordering::Release);
    }

    /// Takes the fleet's counts (`used`, after a charge or at a refusal)
    /// for the local slots: a local count never drops below the fleet's.
    fn follow(
        &self,
        slots: &[(String, u64, u64)],
        counts: &[shared::Count],
        used: &[(usize, u64)],
    ) {
        {
            let mut file = self.lock();
            for &(index, used) in used {
                let (slot, start, _) = &slots[index];
                let count = file.counts.entry(slot.clone()).or_default();
                if count.period_start != *start {
                    *count = Count {
                        period_start: *start,
                        used: 0,
                    };
                }
                count.used = count.used.max(used);
            }
        }
        self.dirty.store(true, Ordering::Release);
        let mut fleet = self.fleet_lock();
        for ((slot, _, _), count) in slots.iter().zip(counts) {
            fleet.known.insert(slot.clone(), count.clone());
        }
    }

    /// Queues `amount` for each of `counts`, to be added to Redis when the
    /// link is back.
    fn owe(&self, counts: &[shared::Count], amount: i64) {
        let mut fleet = self.fleet_lock();
        for count in counts {
            fleet
                .pending
                .entry(count.key.clone())
                .or_insert_with(|| (count.clone(), 0))
                .1 += amount;
        }
    }

    /// Adds what was counted here while the link was down to Redis; after a
    /// new epoch (Redis restarted or was flushed) also raises every count
    /// Redis should hold to this gateway's. What fails stays owed.
    pub async fn resync(&self, link: &Link, new_epoch: bool) {
        let now = clock::unix_now();
        let pending: Vec<(shared::Count, i64)> = {
            let mut fleet = self.fleet_lock();
            fleet.known.retain(|_, count| count.expires_at > now);
            fleet.pending.drain().map(|(_, owed)| owed).collect()
        };
        let mut failed = Vec::new();
        for (count, amount) in pending {
            if amount == 0 || count.expires_at <= now {
                continue;
            }
            let counts = [count];
            let added = link
                .within(link.background_timeout(), |mut conn| {
                    let counts = counts.clone();
                    async move { shared::add(&mut conn, &counts, amount).await }
                })
                .await;
            if added.is_err() {
                let [count] = counts;
                failed.push((count, amount));
            }
        }
        if new_epoch {
            let raise: Vec<(shared::Count, u64)> = {
                let known = self.fleet_lock().known.clone();
                let file = self.lock();
                known
                    .into_iter()
                    .filter_map(|(slot, count)| {
                        let used = file.counts.get(&slot)?.used;
                        Some((count, used))
                    })
                    .collect()
            };
            for (count, used) in raise {
                let _ = link
                    .within(link.background_timeout(), |mut conn| async move {
                        shared::raise(&mut conn, &count, used).await
                    })
                    .await;
            }
        }
        let mut fleet = self.fleet_lock();
        for (count, amount) in failed {
            fleet
                .pending
                .entry(count.key.clone())
                .or_insert_with(|| (count, 0))
                .1 += amount;
        }
    }

    /// Keeps Redis in step with what this gateway counted: resynchronises
    /// on every new epoch of the link, and every `RESYNC_EVERY` while
    /// anything is owed. Runs until the runtime stops.
    pub async fn keep_synced(self: Arc<Self>, link: Link) {
        let mut epochs = link.epochs();
        let mut tick = tokio::time::interval(RESYNC_EVERY);
        loop {
            tokio::select! {
                changed = epochs.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.resync(&link, true).await;
                }
                _ = tick.tick() => {
                    if link.is_connected() && !self.fleet_lock().pending.is_empty() {
                        self.resync(&link, false).await;
                    }
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QuotaFile> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fleet_lock(&self) -> std::sync::MutexGuard<'_, FleetCounts> {
        self.fleet.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Each quota's count key (`route/quota/key`) and period bounds at `now`.
fn slots(
    route: &str,
    quotas: &[QuotaConfig],
    now: u64,
    key: impl Fn(&QuotaConfig) -> String,
) -> Vec<(String, u64, u64)> {
    quotas
        .iter()
        .map(|quota| {
            let (start, end) = period_bounds(quota.period, now);
            (format!("{route}/{}/{}", quota.name, key(quota)), start, end)
        })
        .collect()
}

/// One configuration's quotas per route, over the counts every
/// configuration shares.
pub struct RouteQuotas {
    routes: HashMap<String, Vec<QuotaConfig>>,
    counts: Arc<Quotas>,
    /// The fleet's Redis, when quotas are shared.
    fleet: Option<Link>,
}

impl RouteQuotas {
    pub fn new(routes: &[RouteConfig], counts: Arc<Quotas>, fleet: Option<&Link>) -> Self {
        Self {
            routes: routes
                .iter()
                .filter(|route| !route.quotas.is_empty())
                .map(|route| (route.name.clone(), route.quotas.clone()))
                .collect(),
            counts,
            fleet: fleet.filter(|link| link.share().quotas).cloned(),
        }
    }

    /// The counts, to carry into the next configuration.
    pub fn counts(&self) -> &Arc<Quotas> {
        &self.counts
    }

    /// Counts one request against every quota of the route (see
    /// [`Quotas::check`]); shared quotas count in the fleet's Redis.
    pub async fn check(
        &self,
        route: &str,
        client: IpAddr,
        identity: Option<&Identity>,
        headers: &HeaderMap,
    ) -> Result<Option<Remaining>, Refusal> {
        let Some(quotas) = self.routes.get(route) else {
            return Ok(None);
        };
        let Some(link) = &self.fleet else {
            return self
                .counts
                .check(route, quotas, client, identity, headers)
                .map_err(Refusal::Exhausted);
        };
        let now = clock::unix_now();
        let key = |quota: &QuotaConfig| key_for(&quota.key, client, identity, headers);
        let slots = slots(route, quotas, now, key);
        let counts: Vec<shared::Count> = quotas
            .iter()
            .zip(&slots)
            .map(|(quota, (slot, start, end))| shared::Count {
                key: link.spread_key(route, &format!("q:{}:{start}", shared::key_part(slot))),
                limit: quota.requests,
                expires_at: end + COUNT_GRACE,
            })
            .collect();
        let asked = counts.clone();
        let answer = link
            .within_budget(|mut conn| async move { shared::charge(&mut conn, &asked).await })
            .await;
        match answer {
            Ok(Charge::Counted(used)) => {
                let used: Vec<(usize, u64)> = used.into_iter().enumerate().collect();
                self.counts.follow(&slots, &counts, &used);
                let tightest = quotas
                    .iter()
                    .zip(&slots)
                    .zip(&used)
                    .map(|((quota, (_, _, end)), (_, used))| Remaining {
                        quota: quota.name.clone(),
                        remaining: quota.requests.saturating_sub(*used),
                        reset_secs: end - now,
                        charged: Vec::new(),
                        counted: Where::Local,
                    })
                    .min_by_key(|r| r.remaining);
                Ok(tightest.map(|t| Remaining {
                    charged: slots
                        .iter()
                        .map(|(slot, start, _)| (slot.clone(), *start))
                        .collect(),
                    counted: Where::Fleet(counts),
                    ..t
                }))
            }
            Ok(Charge::Spent { index, used }) => {
                self.counts.follow(&slots, &counts, &[(index, used)]);
                let quota = &quotas[index];
                metrics::counter!("gateway_quota_exhausted_total", "route" => route.to_owned(), "quota" => quota.name.clone()).increment(1);
                Err(Refusal::Exhausted(Exhausted {
                    quota: quota.name.clone(),
                    limit: quota.requests,
                    reset_secs: slots[index].2 - now,
                }))
            }
            Err(err) => {
                metrics::counter!("gateway_fleet_fallback_total", "feature" => "quotas", "reason" => err.reason()).increment(1);
                if link.quota_when_unreachable() == Unreachable::Closed {
                    return Err(Refusal::Unavailable {
                        quota: quotas[0].name.clone(),
                    });
                }
                let mut charged = self
                    .counts
                    .check_at(route, quotas, now, key)
                    .map_err(Refusal::Exhausted)?;
                // Only a call that was never sent is surely missing from
                // Redis; one cut off by the budget most likely arrived.
                if matches!(err, FleetError::Unreachable)
                    && let Some(charged) = &mut charged
                {
                    self.counts.owe(&counts, 1);
                    charged.counted = Where::Pending(counts);
                }
                Ok(charged)
            }
        }
    }

    /// What is left of the route's tightest quota for this caller, charging
    /// nothing: for the headers of answers that were not charged.
    pub fn peek(
        &self,
        route: &str,
        client: IpAddr,
        identity: Option<&Identity>,
        headers: &HeaderMap,
    ) -> Option<Remaining> {
        let quotas = self.routes.get(route)?;
        self.counts
            .peek_at(route, quotas, clock::unix_now(), |quota| {
                key_for(&quota.key, client, identity, headers)
            })
    }

    /// Gives back a charge: the request was not served after all (the
    /// client broke its body, or no endpoint could take it). A look that
    /// charged nothing is left as it is.
    pub fn refund(&self, route: &str, charge: &mut Remaining) {
        if !self.routes.contains_key(route) || charge.charged.is_empty() {
            return;
        }
        self.counts.refund(charge);
        match std::mem::take(&mut charge.counted) {
            Where::Local => {}
            Where::Pending(counts) => self.counts.owe(&counts, -1),
            Where::Fleet(counts) => {
                let (Some(link), Ok(runtime)) =
                    (self.fleet.clone(), tokio::runtime::Handle::try_current())
                else {
                    return;
                };
                let owed = self.counts.clone();
                // Off the request path; a refund that cannot be given now is
                // given at the next resync.
                runtime.spawn(async move {
                    let given = link
                        .within(link.background_timeout(), |mut conn| {
                            let counts = counts.clone();
                            async move { shared::add(&mut conn, &counts, -1).await }
                        })
                        .await;
                    if given.is_err() {
                        owed.owe(&counts, -1);
                    }
                });
            }
        }
    }
}

/// The UTC calendar period around `now`: `[start, end)` in Unix seconds.
fn period_bounds(period: Period, now: u64) -> (u64, u64) {
    match period {
        Period::Hour => {
            let start = now - now % 3600;
            (start, start + 3600)
        }
        Period::Day => {
            let start = now - now % 86_400;
            (start, start + 86_400)
        }
        Period::Month => {
            let (year, month, _) = civil_from_days(now / 86_400);
            let start = days_from_civil(year, month, 1) * 86_400;
            let (next_year, next_month) = if month == 12 {
                (year + 1, 1)
            } else {
                (year, month + 1)
            };
            (start, days_from_civil(next_year, next_month, 1) * 86_400)
        }
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard
/// Hinnant's algorithm, for dates after 1970).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) → days since 1970-01-01, the inverse of the above.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(requests: u64, period: Period) -> QuotaConfig {
        QuotaConfig {
            name: "q".to_owned(),
            key: crate::config::LimitKey::Subject,
            requests,
            period,
        }
    }

    /// 2026-02-28T23:59:59Z.
    const FEB_END: u64 = 1_772_323_199;

    #[test]
    fn calendar_periods_in_utc() {
        assert_eq!(
            period_bounds(Period::Hour, FEB_END),
            (FEB_END - 3599, FEB_END + 1)
        );
        assert_eq!(
            period_bounds(Period::Day, FEB_END),
            (FEB_END - 86_399, FEB_END + 1)
        );
        // February 2026 has 28 days; March starts one second later.
        let (start, end) = period_bounds(Period::Month, FEB_END);
        assert_eq!(end, FEB_END + 1);
        assert_eq!(end - start, 28 * 86_400);
        let (start, end) = period_bounds(Period::Month, FEB_END + 1);
        assert_eq!((start, end - start), (FEB_END + 1, 31 * 86_400));
        // A leap February and a December rolling into January.
        let leap = days_from_civil(2028, 2, 10) * 86_400;
        let (start, end) = period_bounds(Period::Month, leap);
        assert_eq!(end - start, 29 * 86_400);
        let december = days_from_civil(2026, 12, 31) * 86_400;
        assert_eq!(
            period_bounds(Period::Month, december).1,
            days_from_civil(2027, 1, 1) * 86_400
        );
        assert_eq!(
            civil_from_days(days_from_civil(2026, 11, 28)),
            (2026, 11, 28)
        );
    }

    #[test]
    fn spent_quota_refuses_without_counting_and_resets_with_the_period() {
        let quotas = Quotas::default();
        let config = [quota(2, Period::Hour)];
        let key = |_: &QuotaConfig| "alice".to_owned();
        let now = FEB_END - 100;
        assert_eq!(
            quotas
                .check_at("api", &config, now, key)
                .expect("first")
                .map(|r| r.remaining),
            Some(1)
        );
        assert_eq!(
            quotas
                .check_at("api", &config, now, key)
                .expect("second")
                .map(|r| r.remaining),
            Some(0)
        );
        let spent = quotas
            .check_at("api", &config, now, key)
            .expect_err("third");
        assert_eq!((spent.limit, spent.reset_secs), (2, 101));
        assert_eq!(
            quotas.lock().counts["api/q/alice"].used,
            2,
            "refusals are not counted"
        );
        let bob = |_: &QuotaConfig| "bob".to_owned();
        assert!(
            quotas.check_at("api", &config, now, bob).is_ok(),
            "bob has his own quota"
        );
        assert!(
            quotas.check_at("api", &config, FEB_END + 1, key).is_ok(),
            "a new hour"
        );
    }

    #[test]
    fn counts_survive_save_and_load_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let config = [quota(3, Period::Day)];
        let key = |_: &QuotaConfig| "alice".to_owned();
        let quotas = Quotas::default();
        let now = FEB_END - 10;
        for _ in 0..2 {
            quotas
                .check_at("api", &config, now, key)
                .expect("within quota");
        }
        quotas.save(&state).expect("save");
        let restarted = Quotas::load(&state).expect("load");
        assert_eq!(
            restarted
                .check_at("api", &config, now, key)
                .expect("third")
                .map(|r| r.remaining),
            Some(0)
        );
        assert!(restarted.check_at("api", &config, now, key).is_err());
    }
}

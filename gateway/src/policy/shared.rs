//! The Redis side of shared rate limits and quotas: Lua scripts that decide
//! atomically for the whole fleet, so N gateways under a concurrent burst
//! admit exactly what one would.
//!
//! - [`gcra`]: the generic cell rate algorithm (as redis-cell and
//!   envoyproxy/ratelimit's Redis backend do): one key per budget holds its
//!   theoretical arrival time in microseconds of the Redis server's clock, so
//!   gateways with skewed clocks still share one timeline.
//! - [`charge`]: quota counts per period, checked and counted in one step;
//!   [`add`] gives a refund back or publishes what a gateway counted alone
//!   while Redis was away; [`raise`] refills a Redis that came back empty.
//!
//! Every script touches only the keys it is given; the caller puts the route
//! in a hash tag (`{route}`) so one route's keys share a Redis Cluster slot.

use std::{sync::LazyLock, time::Duration};

use redis::{RedisError, Script, aio::ConnectionLike};

/// Checks every budget of one request and charges them all only when all
/// have room. Returns `{0, 0}` or `{index, wait_us}` of the first that has
/// none. A missing key is a full budget; a key lives until its budget is full
/// again, so idle clients cost no memory.
static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or now) or now
  if tat < now then tat = now end
  local next = tat + interval
  local wait = next - burst * interval - now
  if wait > 0 then return {i, wait} end
  tats[i] = next
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1)
end
return {0, 0}
",
    )
});

/// Counts one request against every quota when none is spent; refuses
/// without counting otherwise. Returns `{0, used...}` (after counting) or
/// `{index, used}` of the first spent quota.
static CHARGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local used = {0}
for i, key in ipairs(KEYS) do
  local n = tonumber(redis.call('GET', key) or 0) or 0
  if n >= tonumber(ARGV[2 * i - 1]) then return {i, n} end
end
for i, key in ipairs(KEYS) do
  used[i + 1] = redis.call('INCR', key)
  redis.call('EXPIREAT', key, ARGV[2 * i])
end
return used
",
    )
});

/// Adds a signed amount to each count, never below zero.
static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i, key in ipairs(KEYS) do
  local n = redis.call('INCRBY', key, ARGV[2 * i - 1])
  if n < 0 then redis.call('SET', key, 0) end
  redis.call('EXPIREAT', key, ARGV[2 * i])
end
return 0
",
    )
});

/// Raises a count to at least ARGV[1] (a Redis that came back empty learns
/// what the gateways counted).
static RAISE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = tonumber(redis.call('GET', KEYS[1]) or 0) or 0
if n < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('EXPIREAT', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// One GCRA budget: `burst` requests back to back, then one per `interval`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    pub key: String,
    pub interval: Duration,
    pub burst: u32,
}

/// What the fleet's budgets say about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellVerdict {
    /// Every budget had room and was charged.
    Allowed,
    /// The budget at `index` had none; nothing was charged.
    Refused { index: usize, retry_after: Duration },
}

/// Takes one request from every budget in `cells`, atomically.
pub async fn gcra<C: ConnectionLike>(
    connection: &mut C,
    cells: &[Cell],
) -> Result<CellVerdict, RedisError> {
    let mut invocation = GCRA.prepare_invoke();
    for cell in cells {
        invocation
            .key(&cell.key)
            .arg(micros(cell.interval).max(1))
            .arg(cell.burst);
    }
    let (index, wait): (usize, u64) = invocation.invoke_async(connection).await?;
    Ok(match index {
        0 => CellVerdict::Allowed,
        index => CellVerdict::Refused {
            index: index - 1,
            retry_after: Duration::from_micros(wait),
        },
    })
}

/// One quota's count in one period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Count {
    pub key: String,
    pub limit: u64,
    /// Unix seconds after which the count is of no use (its period ended).
    pub expires_at: u64,
}

/// The fleet-wide counts after a charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Charge {
    /// Every count was raised by one; these are the new values, in order.
    Counted(Vec<u64>),
    /// The count at `index` had reached its limit (`used`); nothing was counted.
    Spent { index: usize, used: u64 },
}

/// Counts one request against every quota in `counts`, atomically.
pub async fn charge<C: ConnectionLike>(
    connection: &mut C,
    counts: &[Count],
) -> Result<Charge, RedisError> {
    let mut invocation = CHARGE.prepare_invoke();
    for count in counts {
        invocation
            .key(&count.key)
            .arg(count.limit)
            .arg(count.expires_at);
    }
    let reply: Vec<u64> = invocation.invoke_async(connection).await?;
    Ok(match reply.as_slice() {
        [0, used @ ..] if used.len() == counts.len() => Charge::Counted(used.to_vec()),
        [index, used] if (1..=counts.len() as u64).contains(index) => Charge::Spent {
            index: *index as usize - 1,
            used: *used,
        },
        _ => {
            return Err(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "quota script reply",
                format!("{reply:?} for {} counts", counts.len()),
            )));
        }
    })
}

/// Adds `amount` (negative for a refund) to every count in `counts`.
pub async fn add<C: ConnectionLike>(
    connection: &mut C,
    counts: &[Count],
    amount: i64,
) -> Result<(), RedisError> {
    let mut invocation = ADD.prepare_invoke();
    for count in counts {
        invocation.key(&count.key).arg(amount).arg(count.expires_at);
    }
    invocation.invoke_async::<()>(connection).await
}

/// Raises `count` to at least `used`.
pub async fn raise<C: ConnectionLike>(
    connection: &mut C,
    count: &Count,
    used: u64,
) -> Result<(), RedisError> {
    RAISE
        .key(&count.key)
        .arg(used)
        .arg(count.expires_at)
        .invoke_async::<()>(connection)
        .await
}

/// A client's key as it goes into a Redis key name: itself when short, else
/// a SHA-256 prefix (a header-keyed limit takes whatever the client sends,
/// and a long value must not make every call carry it; finding a second
/// value with the same 64-bit prefix is out of reach).
pub fn key_part(key: &str) -> String {
    if key.len() <= MAX_KEY_PART {
        return key.to_owned();
    }
    format!("sha256:{}", crate::auth::log_hash(key))
}

/// The longest client key used as it is.
const MAX_KEY_PART: usize = 128;

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;

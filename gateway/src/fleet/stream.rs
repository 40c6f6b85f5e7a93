//! The shared sets (blocks, revocations) in Redis and the event stream every
//! gateway tails.
//!
//! Each set is a hash `{prefix}:<set>` (field: the entry's key, value: an
//! [`Wire`] entry as JSON) with a tombstone hash `{prefix}:<set>:gone` (field:
//! the key, value: the removal's version). Every change that takes effect is
//! also appended to the stream `{prefix}:events` in the same script, so the
//! hash and the stream never disagree; every gateway reads the stream with a
//! blocking `XREAD` on a connection of its own, so a change is pushed, not
//! polled. A put or removal only takes effect when it is newer (by version,
//! the deciding node's wall clock in ms) than what the set holds, so
//! republishing is idempotent and a late put cannot undo a removal.
//!
//! All keys share the fleet's hash tag, so in a Redis Cluster one script can
//! touch them all.

use std::{sync::LazyLock, time::Duration};

use redis::{Script, Value, streams::StreamReadOptions};
use serde::{Deserialize, Serialize};

use super::link::{FleetError, Link};

/// About how many events the stream keeps (`XADD … MAXLEN ~`). A gateway
/// that falls further behind than this resynchronises from the sets.
pub const STREAM_LENGTH: u64 = 10_000;

/// The longest entry read from Redis; longer ones are refused.
pub const MAX_ENTRY: usize = 2048;

/// How long a removal's tombstone is kept: a gateway away for longer than
/// this may bring back a permanent entry removed meanwhile.
pub const TOMBSTONE_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// Which shared set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Set {
    Blocks,
    Revocations,
}

impl Set {
    pub fn name(self) -> &'static str {
        match self {
            Set::Blocks => "blocks",
            Set::Revocations => "revocations",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "blocks" => Some(Set::Blocks),
            "revocations" => Some(Set::Revocations),
            _ => None,
        }
    }
}

/// One shared entry as Redis holds it. Everything read back is validated by
/// the set's owner before it takes effect: Redis may hold another writer's
/// garbage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wire {
    /// The entry's key: a CIDR, or `jti:<id>` / `sub:<id>`.
    pub key: String,
    /// The node that decided it.
    pub origin: String,
    /// Why (for a block: the signals that led to it).
    pub reason: String,
    /// When it was decided, ms since the Unix epoch (the origin's clock).
    pub version: u64,
    /// When it ends, ms since the Unix epoch; `None` for never.
    pub expires_at_ms: Option<u64>,
}

impl Wire {
    /// Parses an entry read from Redis, refusing oversized ones and those
    /// filed under another key than their own.
    pub fn parse(field: &str, text: &str) -> Result<Self, String> {
        if text.len() > MAX_ENTRY {
            return Err(format!("{} bytes, more than {MAX_ENTRY}", text.len()));
        }
        let wire: Wire = serde_json::from_str(text).map_err(|err| err.to_string())?;
        if wire.key != field {
            return Err(format!("filed under {field:?} but names {:?}", wire.key));
        }
        Ok(wire)
    }
}

/// A change read from the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Put(Set, Result<Wire, String>),
    Remove { set: Set, key: String, version: u64 },
}

/// A set's whole contents as of one instant, with the stream position it
/// corresponds to (events after it are read from there).
pub struct Snapshot {
    pub last_id: String,
    pub blocks: Vec<(String, String)>,
    pub revocations: Vec<(String, String)>,
}

/// KEYS: set hash, tombstones, stream. ARGV: key, entry JSON, version,
/// stream length, set name. Returns 1 when it took effect.
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = tonumber(ARGV[3])
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held then
  local ok, old = pcall(cjson.decode, held)
  if ok and type(old) == 'table' and type(old.version) == 'number' and old.version >= v then
    return 0
  end
end
local gone = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '')
if gone and gone >= v then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'set', ARGV[5], 'op', 'put', 'key', ARGV[1], 'entry', ARGV[2])
return 1
",
    )
});

/// KEYS: set hash, tombstones, stream. ARGV: key, version, stream length,
/// set name. Returns 1 when it took effect.
static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = tonumber(ARGV[2])
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held then
  local ok, old = pcall(cjson.decode, held)
  if ok and type(old) == 'table' and type(old.version) == 'number' and old.version > v then
    return 0
  end
end
local gone = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '')
if gone and gone >= v then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'set', ARGV[4], 'op', 'del', 'key', ARGV[1], 'version', ARGV[2])
return 1
",
    )
});

/// KEYS: blocks, blocks' tombstones, revocations, their tombstones, stream.
/// ARGV: now (ms), tombstone keep (ms). Drops expired entries and old
/// tombstones, and returns the stream's last id with both sets, atomically.
static SNAPSHOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = tonumber(ARGV[1])
local last = '0-0'
local top = redis.call('XREVRANGE', KEYS[5], '+', '-', 'COUNT', 1)
if top[1] then last = top[1][1] end
local function live(hash, tombs)
  local out = {}
  local all = redis.call('HGETALL', hash)
  for i = 1, #all, 2 do
    local ok, e = pcall(cjson.decode, all[i + 1])
    if ok and type(e) == 'table' and type(e.expires_at_ms) == 'number' and e.expires_at_ms <= now then
      redis.call('HDEL', hash, all[i])
    else
      out[#out + 1] = all[i]
      out[#out + 1] = all[i + 1]
    end
  end
  local gone = redis.call('HGETALL', tombs)
  for i = 1, #gone, 2 do
    if (tonumber(gone[i + 1]) or 0) < now - tonumber(ARGV[2]) then
      redis.call('HDEL', tombs, gone[i])
    end
  end
  return out
end
return {last, live(KEYS[1], KEYS[2]), live(KEYS[3], KEYS[4])}
",
    )
});

fn hash(link: &Link, set: Set) -> String {
    link.key(set.name())
}

fn tombstones(link: &Link, set: Set) -> String {
    link.key(&format!("{}:gone", set.name()))
}

fn stream(link: &Link) -> String {
    link.key("events")
}

/// Publishes `wire` into `set`; returns whether it took effect (false: the set
/// already holds it, or something newer). Background work: bounded by the
/// connect timeout, never the request budget.
pub async fn put(link: &Link, set: Set, wire: &Wire) -> Result<bool, FleetError> {
    let json = serde_json::to_string(wire).unwrap_or_default();
    let mut invocation = PUT.prepare_invoke();
    invocation
        .key(hash(link, set))
        .key(tombstones(link, set))
        .key(stream(link))
        .arg(&wire.key)
        .arg(json)
        .arg(wire.version)
        .arg(STREAM_LENGTH)
        .arg(set.name());
    Ok(background::<i64>(link, &invocation).await? == 1)
}

/// Runs a script within the link's background bound.
async fn background<T: redis::FromRedisValue>(
    link: &Link,
    invocation: &redis::ScriptInvocation<'_>,
) -> Result<T, FleetError> {
    link.within(link.background_timeout(), |mut conn| async move {
        invocation.invoke_async(&mut conn).await
    })
    .await
}

/// Removes `key` from `set` as of `version`; returns whether it took effect.
pub async fn remove(link: &Link, set: Set, key: &str, version: u64) -> Result<bool, FleetError> {
    let mut invocation = REMOVE.prepare_invoke();
    invocation
        .key(hash(link, set))
        .key(tombstones(link, set))
        .key(stream(link))
        .arg(key)
        .arg(version)
        .arg(STREAM_LENGTH)
        .arg(set.name());
    Ok(background::<i64>(link, &invocation).await? == 1)
}

/// Both sets as of now, and where the stream stands.
pub async fn snapshot(link: &Link, now_ms: u64) -> Result<Snapshot, FleetError> {
    let mut invocation = SNAPSHOT.prepare_invoke();
    invocation
        .key(hash(link, Set::Blocks))
        .key(tombstones(link, Set::Blocks))
        .key(hash(link, Set::Revocations))
        .key(tombstones(link, Set::Revocations))
        .key(stream(link))
        .arg(now_ms)
        .arg(u64::try_from(TOMBSTONE_KEEP.as_millis()).unwrap_or(u64::MAX));
    let (last_id, blocks, revocations): (String, Vec<String>, Vec<String>) =
        background(link, &invocation).await?;
    Ok(Snapshot {
        last_id,
        blocks: pairs(blocks),
        revocations: pairs(revocations),
    })
}

fn pairs(flat: Vec<String>) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut items = flat.into_iter();
    while let (Some(field), Some(value)) = (items.next(), items.next()) {
        out.push((field, value));
    }
    out
}

/// Waits up to `block` for events after `last_id` on a dedicated connection;
/// returns them with the id to read on from.
pub async fn read(
    link: &Link,
    conn: &mut super::Conn,
    last_id: &str,
    block: Duration,
) -> Result<(Vec<Event>, String), FleetError> {
    let options = StreamReadOptions::default()
        .block(usize::try_from(block.as_millis()).unwrap_or(1000))
        .count(512);
    let reply: Option<redis::streams::StreamReadReply> =
        redis::AsyncCommands::xread_options(conn, &[stream(link)], &[last_id], &options).await?;
    let mut last = last_id.to_owned();
    let mut events = Vec::new();
    for key in reply.map(|reply| reply.keys).unwrap_or_default() {
        for entry in key.ids {
            last = entry.id.clone();
            if let Some(event) = event(&entry.map) {
                events.push(event);
            }
        }
    }
    Ok((events, last))
}

/// One stream entry as an event; entries it cannot read are skipped.
fn event(fields: &std::collections::HashMap<String, Value>) -> Option<Event> {
    let text = |name: &str| -> Option<String> {
        fields
            .get(name)
            .and_then(|value| redis::from_redis_value_ref::<String>(value).ok())
    };
    let set = Set::from_name(&text("set")?)?;
    let key = text("key")?;
    match text("op")?.as_str() {
        "put" => Some(Event::Put(set, Wire::parse(&key, &text("entry")?))),
        "del" => Some(Event::Remove {
            set,
            key,
            version: text("version")?.parse().ok()?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_filed_under_another_key_or_oversized_are_refused() {
        let wire = Wire {
            key: "198.18.0.1".to_owned(),
            origin: "edge-a".to_owned(),
            reason: "abuse".to_owned(),
            version: 5,
            expires_at_ms: Some(9),
        };
        let text = serde_json::to_string(&wire).expect("json");
        assert_eq!(Wire::parse("198.18.0.1", &text), Ok(wire));
        assert!(Wire::parse("0.0.0.0/0", &text).is_err());
        assert!(Wire::parse("198.18.0.1", "{not json").is_err());
        assert!(Wire::parse("198.18.0.1", &" ".repeat(MAX_ENTRY + 1)).is_err());
        let extra = text.replace('}', ",\"more\":1}");
        assert!(Wire::parse("198.18.0.1", &extra).is_err());
    }

    #[test]
    fn snapshot_pairs_ignore_a_dangling_field() {
        let flat = ["a", "1", "b", "2", "c"].map(str::to_owned).to_vec();
        assert_eq!(
            pairs(flat),
            [("a".into(), "1".into()), ("b".into(), "2".into())]
        );
    }
}

//! Heartbeats: each gateway writes one into `{prefix}:nodes` every
//! `fleet.heartbeat`; `gateway fleet status` reads them back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::link::{FleetError, Link, now_ms};

/// What a gateway says about itself each heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    /// The gateway's version.
    pub version: String,
    /// When it was written, ms since the Unix epoch (the writer's clock).
    pub time_ms: u64,
    /// The writer's previous heartbeat round trip to Redis, in microseconds.
    pub rtt_us: u64,
}

/// A heartbeat as seen now.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    #[serde(flatten)]
    pub beat: Heartbeat,
    /// How old the heartbeat is by the reader's clock: the node's lag (clock
    /// skew between hosts included).
    pub age_ms: i64,
}

/// Every node that ever sent a heartbeat, by name (the hash's keys, sorted).
pub async fn nodes(link: &Link) -> Result<Vec<NodeStatus>, FleetError> {
    let key = link.key("nodes");
    let beats: BTreeMap<String, String> = link
        .within(link.background_timeout(), |mut conn| async move {
            redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await
        })
        .await?;
    let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
    Ok(beats
        .into_values()
        .filter_map(|text| serde_json::from_str::<Heartbeat>(&text).ok())
        .map(|beat| NodeStatus {
            age_ms: now.saturating_sub(i64::try_from(beat.time_ms).unwrap_or(i64::MAX)),
            beat,
        })
        .collect())
}

/// How many entries each shared set holds now.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SetSizes {
    pub blocks: u64,
    pub revocations: u64,
}

/// The sizes of the shared sets (`HLEN` of each hash).
pub async fn set_sizes(link: &Link) -> Result<SetSizes, FleetError> {
    let (blocks, revocations) = (link.key("blocks"), link.key("revocations"));
    let (blocks, revocations): (u64, u64) = link
        .within(link.background_timeout(), |mut conn| async move {
            redis::pipe()
                .cmd("HLEN")
                .arg(&blocks)
                .cmd("HLEN")
                .arg(&revocations)
                .query_async(&mut conn)
                .await
        })
        .await?;
    Ok(SetSizes {
        blocks,
        revocations,
    })
}

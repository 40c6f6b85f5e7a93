//! The scripts against a real `redis-server`: what they decide, and that
//! concurrent callers on separate connections (three gateways) never get
//! more than the budget between them.

use std::time::Duration;

use futures_util::future::join_all;

use super::*;
use crate::test_redis::RedisServer;

fn cell(key: &str, interval: Duration, burst: u32) -> Cell {
    Cell {
        key: key.to_owned(),
        interval,
        burst,
    }
}

fn count(key: &str, limit: u64) -> Count {
    Count {
        key: key.to_owned(),
        limit,
        expires_at: crate::clock::unix_now() + 3600,
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn gcra_burst_then_refused_with_the_wait_per_key() {
    let redis = RedisServer::start().await;
    let mut connection = redis.connect().await;
    // 3 per hour: one every 20 minutes, 3 back to back.
    let budget = [cell("rl:{api}:a", HOUR / 3, 3)];
    for _ in 0..3 {
        assert_eq!(
            gcra(&mut connection, &budget).await.expect("script"),
            CellVerdict::Allowed
        );
    }
    let CellVerdict::Refused { index, retry_after } =
        gcra(&mut connection, &budget).await.expect("script")
    else {
        panic!("a fourth request in the hour passed");
    };
    assert_eq!(index, 0);
    assert!(
        retry_after > Duration::from_secs(1100) && retry_after <= HOUR / 3,
        "the next one is due in about 20 minutes: {retry_after:?}"
    );
    assert_eq!(
        gcra(&mut connection, &[cell("rl:{api}:b", HOUR / 3, 3)])
            .await
            .expect("script"),
        CellVerdict::Allowed,
        "another key has its own budget"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg("rl:{api}:a")
        .query_async(&mut connection)
        .await
        .expect("PTTL");
    assert!(
        ttl > 0 && ttl <= 3_600_001,
        "the key lives until the budget is full again: {ttl}"
    );
}

#[tokio::test]
async fn gcra_refills_and_charges_nothing_when_one_budget_is_spent() {
    let redis = RedisServer::start().await;
    let mut connection = redis.connect().await;
    let fast = cell("rl:{api}:fast", Duration::from_millis(50), 1);
    let slow = cell("rl:{api}:slow", HOUR, 1);
    let other_slow = cell("rl:{api}:slow2", HOUR, 1);
    assert_eq!(
        gcra(&mut connection, std::slice::from_ref(&fast))
            .await
            .expect("script"),
        CellVerdict::Allowed
    );
    assert!(matches!(
        gcra(&mut connection, std::slice::from_ref(&fast))
            .await
            .expect("script"),
        CellVerdict::Refused { index: 0, .. }
    ));
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        gcra(&mut connection, std::slice::from_ref(&fast))
            .await
            .expect("script"),
        CellVerdict::Allowed,
        "one interval later the budget has room again"
    );
    // The slow budget is spent: a request that needs both is refused by the
    // second, and the first (other_slow) keeps its room.
    assert_eq!(
        gcra(&mut connection, std::slice::from_ref(&slow))
            .await
            .expect("script"),
        CellVerdict::Allowed
    );
    assert!(matches!(
        gcra(&mut connection, &[other_slow.clone(), slow])
            .await
            .expect("script"),
        CellVerdict::Refused { index: 1, .. }
    ));
    assert_eq!(
        gcra(&mut connection, &[other_slow]).await.expect("script"),
        CellVerdict::Allowed,
        "a refused request charged no budget"
    );
}

#[tokio::test]
async fn gcra_concurrent_callers_on_three_connections_share_one_burst() {
    let redis = RedisServer::start().await;
    let connections = [
        redis.connect().await,
        redis.connect().await,
        redis.connect().await,
    ];
    let budget = [cell("rl:{api}:shared", HOUR, 20)];
    let calls = (0..150).map(|i| {
        let mut connection = connections[i % 3].clone();
        let budget = budget.clone();
        async move { gcra(&mut connection, &budget).await.expect("script") }
    });
    let allowed = join_all(calls)
        .await
        .into_iter()
        .filter(|verdict| *verdict == CellVerdict::Allowed)
        .count();
    assert_eq!(
        allowed, 20,
        "exactly the burst, however the calls interleave"
    );
}

#[tokio::test]
async fn quota_counts_refuses_without_counting_and_refunds() {
    let redis = RedisServer::start().await;
    let mut connection = redis.connect().await;
    let daily = count("q:{api}:daily:alice:1", 2);
    let hourly = count("q:{api}:hourly:alice:1", 10);
    let both = [hourly.clone(), daily.clone()];
    assert_eq!(
        charge(&mut connection, &both).await.expect("script"),
        Charge::Counted(vec![1, 1])
    );
    assert_eq!(
        charge(&mut connection, &both).await.expect("script"),
        Charge::Counted(vec![2, 2])
    );
    assert_eq!(
        charge(&mut connection, &both).await.expect("script"),
        Charge::Spent { index: 1, used: 2 }
    );
    assert_eq!(
        charge(&mut connection, std::slice::from_ref(&hourly))
            .await
            .expect("script"),
        Charge::Counted(vec![3]),
        "the refused request did not count against the hourly quota"
    );
    add(&mut connection, std::slice::from_ref(&daily), -1)
        .await
        .expect("refund");
    assert_eq!(
        charge(&mut connection, &both).await.expect("script"),
        Charge::Counted(vec![4, 2]),
        "the refund made room for one"
    );
    for _ in 0..3 {
        add(&mut connection, std::slice::from_ref(&daily), -1)
            .await
            .expect("refund");
    }
    let used: u64 = redis::cmd("GET")
        .arg(&daily.key)
        .query_async(&mut connection)
        .await
        .expect("GET");
    assert_eq!(used, 0, "refunds never go below zero");
    add(&mut connection, std::slice::from_ref(&daily), 2)
        .await
        .expect("resync");
    assert_eq!(
        charge(&mut connection, &both).await.expect("script"),
        Charge::Spent { index: 1, used: 2 },
        "counts published after an outage are enforced"
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(&daily.key)
        .query_async(&mut connection)
        .await
        .expect("TTL");
    assert!(
        ttl > 0 && ttl <= 3600,
        "the count expires with its period: {ttl}"
    );
}

#[tokio::test]
async fn quota_concurrent_callers_on_three_connections_count_exactly() {
    let redis = RedisServer::start().await;
    let connections = [
        redis.connect().await,
        redis.connect().await,
        redis.connect().await,
    ];
    let counts = [count("q:{api}:daily:bob:1", 50)];
    let calls = (0..120).map(|i| {
        let mut connection = connections[i % 3].clone();
        let counts = counts.clone();
        async move { charge(&mut connection, &counts).await.expect("script") }
    });
    let counted: Vec<u64> = join_all(calls)
        .await
        .into_iter()
        .filter_map(|charge| match charge {
            Charge::Counted(used) => Some(used[0]),
            Charge::Spent { used, .. } => {
                assert_eq!(used, 50);
                None
            }
        })
        .collect();
    assert_eq!(counted.len(), 50, "exactly the quota");
    let mut sorted = counted.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=50).collect::<Vec<_>>(), "each count once");
}

#[test]
fn long_client_keys_are_hashed_short_ones_kept() {
    assert_eq!(key_part("198.18.0.1"), "198.18.0.1");
    let long = "k".repeat(10_000);
    let part = key_part(&long);
    assert!(part.starts_with("sha256:") && part.len() < 40, "{part}");
    assert_ne!(part, key_part(&"k".repeat(10_001)));
}

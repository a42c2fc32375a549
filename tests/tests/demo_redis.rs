//! The demo's L2 against a private `redis-server` the test starts and kills (never the
//! shared one): reads go L1 → L2 → SQL, writes leave a tombstone, and a Redis that dies
//! and comes back costs no failed request.
#![forbid(unsafe_code)]

mod demo_support;

use std::time::Duration;

use demo_support::*;
use heapwarden_tests::{Sandbox, TimeoutGuard, msg};

fn demo_with_redis(sandbox: &Sandbox, redis: &RedisServer) -> Demo {
    let config = format!(
        "seed-rows = 20\nredis-url = \"{}\"\nl1-ttl = \"300ms\"\nredis-timeout = \"200ms\"",
        redis.url()
    );
    let demo = start_demo(sandbox, &config, &[]);
    poll(Duration::from_secs(10), "Redis to be in use", || {
        (get(&demo.url("/readyz")).json()["redis"] == "up").then_some(())
    });
    demo
}

/// Reads `/items/{id}` until it comes from `layer`.
fn wait_for_layer(demo: &Demo, id: i64, layer: &str) -> serde_json::Value {
    poll(
        Duration::from_secs(10),
        &format!("a read from {layer}"),
        || {
            let reply = get(&demo.url(&format!("/items/{id}")));
            assert_eq!(reply.status, 200, "{reply:?}");
            (reply.header("x-cache") == Some(layer)).then(|| reply.json())
        },
    )
}

#[test]
fn reads_fall_through_l1_to_redis_and_writes_leave_tombstones() {
    let _timeout = TimeoutGuard::new("l2_layers", Duration::from_secs(60));
    let redis = RedisServer::start();
    let sandbox = Sandbox::new();
    let demo = demo_with_redis(&sandbox, &redis);

    assert_eq!(get(&demo.url("/items/4")).header("x-cache"), Some("db"));
    assert_eq!(get(&demo.url("/items/4")).header("x-cache"), Some("l1"));
    let from_l2 = wait_for_layer(&demo, 4, "l2"); // once the 300 ms L1 entry expired
    assert_eq!(from_l2["version"], 1);

    let put = call(
        "PUT",
        &demo.url("/items/4"),
        &[],
        Some(r#"{"name":"new","value":5}"#),
    );
    assert_eq!(put.status, 200);
    let after = get(&demo.url("/items/4"));
    assert_eq!(
        after.header("x-cache"),
        Some("db"),
        "the tombstone sends the read to SQL"
    );
    assert_eq!(after.json()["name"], "new");
    let refilled = wait_for_layer(&demo, 4, "l2");
    assert_eq!(refilled["version"], 2);
    assert_eq!(refilled["name"], "new");

    let metrics = get(&demo.url("/metrics")).body;
    assert!(
        metric(&metrics, "demo_cache_lookups_total", &[("layer", "l2")]).is_some_and(|n| n >= 2.0),
        "{metrics}"
    );
}

#[test]
fn requests_keep_succeeding_while_redis_is_down_and_l2_returns_after() {
    let _timeout = TimeoutGuard::new("redis_dies", Duration::from_secs(90));
    let redis = RedisServer::start();
    let port = redis.port;
    let sandbox = Sandbox::new();
    let demo = demo_with_redis(&sandbox, &redis);
    wait_for_layer(&demo, 1, "db");

    drop(redis); // SIGKILL
    for round in 0..30 {
        let id = round % 10 + 1;
        let reply = get(&demo.url(&format!("/items/{id}")));
        assert_eq!(
            reply.status, 200,
            "read {round} failed with Redis down: {reply:?}"
        );
        assert_ne!(reply.header("x-cache"), Some("l2"));
        if round == 5 {
            let put = call(
                "PUT",
                &demo.url("/items/2"),
                &[],
                Some(r#"{"name":"offline","value":1}"#),
            );
            assert_eq!(put.status, 200, "writes succeed without Redis: {put:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ready = get(&demo.url("/readyz"));
    assert_eq!(
        ready.status, 200,
        "a lost cache keeps the worker ready: {ready:?}"
    );
    assert_eq!(ready.json()["redis"], "degraded");
    assert_eq!(ready.json()["status"], "degraded");
    let logs = &demo.proc.logs;
    logs.wait_for(
        Duration::from_secs(2),
        "the outage record",
        msg("Redis stopped answering; serving from L1 and the database."),
    );

    let redis = RedisServer::start_on(port);
    poll(Duration::from_secs(15), "the worker to reconnect", || {
        (get(&demo.url("/readyz")).json()["redis"] == "up").then_some(())
    });
    logs.wait_for(
        Duration::from_secs(2),
        "the recovery record",
        msg("Redis is reachable again; L2 is back in use."),
    );
    let outages = logs
        .matching(msg(
            "Redis stopped answering; serving from L1 and the database.",
        ))
        .len();
    assert_eq!(outages, 1, "the transition is logged once");
    assert_eq!(
        logs.matching(msg("Redis is reachable again; L2 is back in use."))
            .len(),
        1
    );

    wait_for_layer(&demo, 3, "db");
    let back = wait_for_layer(&demo, 3, "l2");
    assert_eq!(back["id"], 3);
    assert_eq!(get(&demo.url("/items/2")).json()["name"], "offline");
    drop(redis);
}

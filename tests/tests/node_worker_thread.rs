//! An app that listens inside a `worker_thread` is redirected to the pool's shared socket
//! like one that listens in its main thread (issue #16, defect 12): both workers become
//! ready and serve, instead of failing with EADDRINUSE on the agent's port.

mod node_support;

use heapwarden_tests::TimeoutGuard;
use heapwarden_tests::http::http_get;
use node_support::{SECS, start};

const APP: &str = "const { Worker } = require('worker_threads'); new Worker(\"require('http').createServer((q, r) => r.end('from a thread')).listen(process.env.PORT)\", { eval: true });";

#[test]
fn a_listen_in_a_worker_thread_lands_on_the_shared_socket() {
    let _guard = TimeoutGuard::new("node worker thread", SECS(120));
    let command = serde_json::to_string(&["node", "-e", APP]).unwrap();
    // `start` waits for /readyz: every worker reported ready through its thread.
    let setup = start(&command, 2, "");
    let (status, body) = http_get(setup.service, "/", SECS(10)).expect("GET /");
    assert_eq!((status, body.as_str()), (200, "from a thread"));
    assert!(
        setup
            .agent
            .logs
            .matching(|r| r.to_string().contains("EADDRINUSE"))
            .is_empty(),
        "a thread failed to bind"
    );
}

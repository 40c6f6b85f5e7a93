//! `demo-certs DIR`: the certificates `cargo xtask demo` runs on, written into
//! DIR — an edge CA and the gateway's server certificate for `api.demo` (what
//! clients trust), a private fleet CA, the fleet's server certificate for
//! `fleet.internal` and the gateway's client certificate (the mutual TLS between
//! gateway and upstreams). Made by the same code the tests use.

use std::path::PathBuf;

use gateway_tests::pki::Ca;

fn main() {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: demo-certs DIR");
        std::process::exit(2);
    };
    if let Err(err) = std::fs::create_dir_all(&dir) {
        eprintln!("error: creating {}: {err}", dir.display());
        std::process::exit(1);
    }
    let edge = Ca::new("demo edge CA");
    edge.write(&dir, "edge-ca");
    edge.issue_server(&["api.demo", "198.18.0.1"])
        .write(&dir, "edge");
    let fleet = Ca::new("demo fleet CA");
    fleet.write(&dir, "fleet-ca");
    fleet.issue_server(&["fleet.internal"]).write(&dir, "fleet");
    fleet.issue_client("gateway").write(&dir, "gateway");
    println!("certificates written to {}", dir.display());
}

//! The commands the demo prints, as data: each one's text, the comment printed
//! next to it and what it promises in a form a checker can verify. The demo prints
//! them and writes them to `commands.json`; `cargo xtask demo --check` runs what
//! was printed and verifies every promise, so the printout cannot drift from what
//! the demo really does.

use serde::{Deserialize, Serialize};

use super::{CLIENT_NS, GATEWAY_IF, GATEWAY_NS, PIN_DIR, WORK_DIR};

/// The address of the client namespace, the one the demo's commands get blocked.
const CLIENT_ADDR: &str = "198.18.0.10";

/// Everything the demo prints for the user to paste, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commands {
    /// Lines to run once in the shell before the steps (exports, the `gateway` alias).
    pub setup: Vec<String>,
    pub steps: Vec<Step>,
}

/// One printed command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// What the user pastes, exactly as printed.
    pub command: String,
    /// Printed after the command as `# comment`; empty for none.
    pub comment: String,
    pub expect: Expect,
}

/// What a step promises, checked on its standard output. Every checked step must
/// also exit 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// The output holds each of these strings.
    Prints(Vec<String>),
    /// The output, trimmed, is exactly this.
    Exactly(String),
    /// The output is HTTP status codes separated by spaces: one or more `before`,
    /// then one or more `after`, nothing else.
    Codes { before: String, after: String },
    /// The output is a table with a row whose first field is `row`; its field number
    /// `column` (0 is the row's name) grew by at least `by` since the previous run
    /// of the same command (from 0 on the first run).
    Grows { row: String, column: usize, by: u64 },
    /// Interactive (a live view): not run by the check.
    Interactive,
}

impl Commands {
    /// The demo's commands; `gateway` is the daemon's binary.
    pub fn new(gateway: &str) -> Self {
        let client = |command: &str| format!("ip netns exec {CLIENT_NS} {command}");
        let curl = client(&format!(
            "curl -s --cacert {WORK_DIR}/pki/edge-ca.crt --resolve api.demo:443:198.18.0.1"
        ));
        // The status on a line of its own, after the body.
        let request = |args: &str| format!("{curl} -w '\\nHTTP %{{http_code}}\\n' {args}");
        let bearer =
            |token: &str| format!("-H \"authorization: Bearer $(cat {WORK_DIR}/{token})\"");
        let orders =
            |token: &str| request(&format!("{} https://api.demo/orders/42", bearer(token)));
        let send = |count: u32| {
            client(&format!(
                "bash -c 'for i in $(seq {count}); do echo hi > /dev/udp/198.18.0.1/9; done'"
            ))
        };
        let admin = |path: &str| format!("ip netns exec {GATEWAY_NS} curl -s 127.0.0.1:9090{path}");
        let prints =
            |strings: &[&str]| Expect::Prints(strings.iter().map(|s| (*s).to_owned()).collect());
        let stats = |row: &str, by: u64| Expect::Grows {
            row: row.to_owned(),
            column: 1,
            by,
        };
        let step = |command: String, comment: &str, expect: Expect| Step {
            command,
            comment: comment.to_owned(),
            expect,
        };
        let unblock = |comment: &str| {
            step(
                format!("gateway blocklist remove {CLIENT_ADDR}"),
                comment,
                prints(&[&format!("removed {CLIENT_ADDR}")]),
            )
        };
        Self {
            setup: vec![
                format!("export GATEWAY_PIN_DIR={PIN_DIR} GATEWAY_STATE_DIR={WORK_DIR}/state"),
                format!("alias gateway={gateway}"),
            ],
            steps: vec![
                step(
                    format!(
                        "for i in 1 2 3; do {}; done",
                        request("https://api.demo/echo")
                    ),
                    "answered by up-1, up-2, up-3 in turn",
                    prints(&[
                        "\"upstream\":\"up-1\"",
                        "\"upstream\":\"up-2\"",
                        "\"upstream\":\"up-3\"",
                    ]),
                ),
                step(
                    orders("token-read"),
                    "200, answered by an upstream",
                    prints(&["HTTP 200", "\"upstream\":\"up-"]),
                ),
                step(
                    orders("token-noscope"),
                    "403 insufficient_scope",
                    prints(&["HTTP 403", "\"error\":\"insufficient_scope\""]),
                ),
                step(
                    orders("token-forged"),
                    "401 invalid_token",
                    prints(&["HTTP 401", "\"error\":\"invalid_token\""]),
                ),
                step(
                    request("https://api.demo/a/%2F/b"),
                    "400 invalid_path, answered by the gateway",
                    prints(&["HTTP 400", "\"error\":\"invalid_path\""]),
                ),
                step(
                    format!("{} | grep '^gateway_requests_total'", admin("/metrics")),
                    "requests by route and status",
                    prints(&[
                        "gateway_requests_total{",
                        "route=\"orders\"",
                        "status=\"403\"",
                    ]),
                ),
                Self::readyz(),
                step(
                    format!("nsenter --net=/run/netns/{GATEWAY_NS} {gateway} top"),
                    "live view; q quits",
                    Expect::Interactive,
                ),
                step(
                    format!(
                        "for i in $(seq 8); do {curl} -m 2 -o /dev/null -w '%{{http_code}} ' {} https://api.demo/orders/42; done; echo",
                        bearer("token-forged")
                    ),
                    "401s until the score reaches 10, then 000: blocked in XDP",
                    Expect::Codes {
                        before: "401".to_owned(),
                        after: "000".to_owned(),
                    },
                ),
                step(
                    format!("gateway explain {CLIENT_ADDR}"),
                    "why: the signals, the evidence, the packets dropped",
                    prints(&[CLIENT_ADDR, "invalid_token"]),
                ),
                unblock("or wait 30 s for the block to expire"),
                step(
                    "gateway stats".to_owned(),
                    "packets and bytes by verdict",
                    stats("pass", 0),
                ),
                step(send(10), "10 datagrams", Expect::Prints(Vec::new())),
                step(
                    "gateway stats".to_owned(),
                    "10 more under pass",
                    stats("pass", 10),
                ),
                step(
                    format!("gateway blocklist add {CLIENT_ADDR} --ttl 10m --reason demo"),
                    "",
                    prints(&[&format!("added {CLIENT_ADDR}")]),
                ),
                step(send(10), "", Expect::Prints(Vec::new())),
                step(
                    "gateway stats".to_owned(),
                    "10 more under drop_blocked",
                    stats("drop_blocked", 10),
                ),
                step(
                    "gateway blocklist list".to_owned(),
                    "with the block's hit count",
                    Expect::Grows {
                        row: CLIENT_ADDR.to_owned(),
                        column: 2,
                        by: 10,
                    },
                ),
                unblock(""),
                step(send(1000), "a flood", Expect::Prints(Vec::new())),
                step(
                    "gateway ratelimit show".to_owned(),
                    "about 50 passed, the rest dropped in XDP",
                    // Far fewer than the ~950 a quick flood loses, so a slow shell
                    // loop (more refills) still passes.
                    Expect::Grows {
                        row: CLIENT_ADDR.to_owned(),
                        column: 2,
                        by: 500,
                    },
                ),
                step(
                    "gateway xdp status".to_owned(),
                    "",
                    prints(&[GATEWAY_IF, PIN_DIR]),
                ),
            ],
        }
    }

    /// The admin endpoint's readiness, which the demo also waits for before it
    /// prints anything.
    pub fn readyz() -> Step {
        Step {
            command: format!("ip netns exec {GATEWAY_NS} curl -s 127.0.0.1:9090/readyz"),
            comment: "ready: keys loaded, XDP attached, upstreams healthy".to_owned(),
            expect: Expect::Exactly("ready".to_owned()),
        }
    }

    /// The block the demo prints: the setup lines, then each step with its comment.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.setup {
            out.push_str(&format!("  {line}\n"));
        }
        for step in &self.steps {
            if step.comment.is_empty() {
                out.push_str(&format!("  {}\n", step.command));
            } else {
                out.push_str(&format!("  {}   # {}\n", step.command, step.comment));
            }
        }
        out
    }
}

impl Expect {
    /// Whether `output` keeps the promise; `previous` is the output of the last run
    /// of the same command, if there was one. The error says what was wrong.
    pub fn verify(&self, output: &str, previous: Option<&str>) -> Result<(), String> {
        match self {
            Self::Prints(strings) => match strings.iter().find(|s| !output.contains(s.as_str())) {
                Some(missing) => Err(format!("the output has no {missing:?}")),
                None => Ok(()),
            },
            Self::Exactly(expected) if output.trim() == expected => Ok(()),
            Self::Exactly(expected) => Err(format!(
                "the output is {:?}, not {expected:?}",
                output.trim()
            )),
            Self::Codes { before, after } => {
                let codes: Vec<&str> = output.split_whitespace().collect();
                let switch = codes.iter().position(|code| code != before);
                match switch {
                    Some(at) if at > 0 && codes[at..].iter().all(|code| code == after) => Ok(()),
                    _ => Err(format!(
                        "expected one or more {before} then one or more {after}, got {:?}",
                        codes.join(" ")
                    )),
                }
            }
            Self::Grows { row, column, by } => {
                let now = cell(output, row, *column)?;
                let before = previous
                    .and_then(|previous| cell(previous, row, *column).ok())
                    .unwrap_or(0);
                if now >= before.saturating_add(*by) {
                    Ok(())
                } else {
                    Err(format!(
                        "{row} (column {column}) went from {before} to {now}, expected at least {by} more"
                    ))
                }
            }
            Self::Interactive => Ok(()),
        }
    }
}

/// The number in field `column` of the line whose first field is `row`.
fn cell(table: &str, row: &str, column: usize) -> Result<u64, String> {
    let fields: Vec<&str> = table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&row))
        .ok_or_else(|| format!("the output has no row {row:?}"))?;
    fields
        .get(column)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| format!("row {row:?} has no number in column {column}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str = "reason                  packets  bytes\n\
                         pass                         17   1100\n\
                         drop_blocked                 10    450\n";

    #[test]
    fn prints_and_exactly() {
        let expect = Expect::Prints(vec!["HTTP 403".to_owned(), "insufficient_scope".to_owned()]);
        assert!(
            expect
                .verify("{\"error\":\"insufficient_scope\"}\nHTTP 403\n", None)
                .is_ok()
        );
        assert!(
            expect
                .verify("{\"error\":\"invalid_token\"}\nHTTP 401\n", None)
                .is_err()
        );
        let ready = Expect::Exactly("ready".to_owned());
        assert!(ready.verify("ready\n", None).is_ok());
        assert!(
            ready
                .verify("not ready:\nno healthy endpoint\n", None)
                .is_err()
        );
    }

    #[test]
    fn codes_switch_once() {
        let expect = Expect::Codes {
            before: "401".to_owned(),
            after: "000".to_owned(),
        };
        assert!(expect.verify("401 401 401 000 000 \n", None).is_ok());
        for bad in ["401 401 401", "000 000", "401 000 401", "401 503 000", ""] {
            assert!(expect.verify(bad, None).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn grows_since_the_previous_run() {
        let expect = Expect::Grows {
            row: "drop_blocked".to_owned(),
            column: 1,
            by: 10,
        };
        assert!(expect.verify(STATS, None).is_ok());
        let later = STATS.replace("  10    450", "  19    855");
        assert!(expect.verify(&later, Some(STATS)).is_err());
        let later = STATS.replace("  10    450", "  20    900");
        assert!(expect.verify(&later, Some(STATS)).is_ok());
        let missing = Expect::Grows {
            row: "198.18.0.10".to_owned(),
            column: 2,
            by: 0,
        };
        assert!(missing.verify(STATS, None).is_err());
    }

    #[test]
    fn the_printed_block_holds_every_command_and_survives_json() {
        let commands = Commands::new("/usr/bin/gateway");
        let block = commands.render();
        for line in commands
            .setup
            .iter()
            .chain(commands.steps.iter().map(|s| &s.command))
        {
            assert!(block.contains(line.as_str()), "{line} not printed");
        }
        let json = serde_json::to_string(&commands).expect("serializable");
        let back: Commands = serde_json::from_str(&json).expect("parses back");
        assert_eq!(back, commands);
        assert!(commands.steps.contains(&Commands::readyz()));
    }
}

//! `[[alert]]` rules: once a second every rule is judged against the metrics
//! as `/metrics` would show them now. An alert fires once when its condition
//! has held for `for` (a WARN or ERROR line and a webhook POST), stays quiet
//! while it keeps holding, and sends a resolved notice when it clears.
//!
//! Rules watch metric names, so a condition another module records — auth
//! failures, JWKS refresh age — needs only its metric, no code here.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::json;
use tracing::{error, info, warn};

use super::{admin::AdminState, metrics};
use crate::{
    config::{AlertCondition, AlertRule, Severity, secret::SecretUrl},
    tls,
};

/// How often rules are judged.
const EVALUATE_EVERY: Duration = Duration::from_secs(1);
/// Where an `https://` webhook's CA bundle is when the rule names none.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

type WebhookClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One rule and what it remembers between evaluations.
struct Alert {
    rule: AlertRule,
    client: Option<WebhookClient>,
    /// The matching sum at the last evaluation (`rate_above`, `increased`).
    last_sum: Option<(f64, Instant)>,
    /// Per instance (a label set, or "" for sums): since when the condition
    /// holds, and whether the alert fired.
    holding: HashMap<String, (SystemTime, Instant, bool)>,
}

/// An alert that fired or resolved.
#[derive(Debug)]
struct Change {
    status: &'static str,
    value: f64,
    labels: BTreeMap<String, String>,
    since: SystemTime,
}

/// Judges `rules` every second against `state`'s metrics, until the task is
/// dropped.
pub fn spawn(rules: &[AlertRule], state: Arc<AdminState>) {
    if rules.is_empty() {
        return;
    }
    let mut alerts: Vec<Alert> = rules
        .iter()
        .map(|rule| Alert {
            client: rule.webhook.as_ref().and_then(|_| match client(rule) {
                Ok(client) => Some(client),
                Err(err) => {
                    error!(alert = %rule.name, %err, "the alert's webhook cannot be used; it will only log");
                    None
                }
            }),
            rule: rule.clone(),
            last_sum: None,
            holding: HashMap::new(),
        })
        .collect();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVALUATE_EVERY);
        loop {
            tick.tick().await;
            let text = state.render_metrics();
            let parsed = metrics::parse_text(&text);
            for alert in &mut alerts {
                for change in alert.evaluate(&parsed, Instant::now()) {
                    alert.notify(&change);
                }
            }
        }
    });
}

impl Alert {
    /// Judges the rule against `metrics` at `now`; returns what fired or
    /// resolved.
    fn evaluate(
        &mut self,
        metrics: &BTreeMap<String, metrics::Series>,
        now: Instant,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let matching: Vec<(&Vec<(String, String)>, f64)> = metrics
            .get(&self.rule.metric)
            .into_iter()
            .flat_map(|series| series.iter())
            .filter(|(labels, _)| {
                self.rule
                    .labels
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(labels, value)| (labels, *value))
            .collect();
        // Instance key → (value now, labels) for every instance whose condition holds.
        let mut held: HashMap<String, (f64, BTreeMap<String, String>)> = HashMap::new();
        match self.rule.condition {
            AlertCondition::Above | AlertCondition::Below => {
                for (labels, value) in &matching {
                    let holds = if self.rule.condition == AlertCondition::Above {
                        *value > self.rule.threshold
                    } else {
                        *value < self.rule.threshold
                    };
                    if holds {
                        let key = labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",");
                        held.insert(key, (*value, labels.iter().cloned().collect()));
                    }
                }
            }
            AlertCondition::RateAbove | AlertCondition::Increased => {
                let sum: f64 = matching.iter().map(|(_, v)| v).sum();
                if let Some((last, at)) = self.last_sum {
                    let grew = sum - last;
                    let rate = grew / now.duration_since(at).as_secs_f64().max(1e-3);
                    let (holds, value) = if self.rule.condition == AlertCondition::RateAbove {
                        (rate > self.rule.threshold, rate)
                    } else {
                        (grew > 0.0, sum)
                    };
                    if holds {
                        held.insert(String::new(), (value, self.rule.labels.clone()));
                    }
                }
                self.last_sum = Some((sum, now));
            }
        }
        for (key, (value, labels)) in &held {
            let entry = self
                .holding
                .entry(key.clone())
                .or_insert((SystemTime::now(), now, false));
            if !entry.2 && now.duration_since(entry.1) >= self.rule.hold {
                entry.2 = true;
                changes.push(Change {
                    status: "firing",
                    value: *value,
                    labels: labels.clone(),
                    since: entry.0,
                });
            }
        }
        let cleared: Vec<String> = self
            .holding
            .keys()
            .filter(|key| !held.contains_key(*key))
            .cloned()
            .collect();
        for key in cleared {
            if let Some((since, _, fired)) = self.holding.remove(&key)
                && fired
            {
                let labels = matching
                    .iter()
                    .find(|(labels, _)| {
                        key == labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .map_or_else(
                        || self.rule.labels.clone(),
                        |(labels, _)| labels.iter().cloned().collect(),
                    );
                changes.push(Change {
                    status: "resolved",
                    value: matching.iter().map(|(_, v)| v).sum(),
                    labels,
                    since,
                });
            }
        }
        changes
    }

    /// Logs the change and posts it to the webhook in the background.
    fn notify(&self, change: &Change) {
        let Change {
            status,
            value,
            ref labels,
            since,
        } = *change;
        let rule = &self.rule;
        let condition = match rule.condition {
            AlertCondition::RateAbove => format!("{} rate above {}/s", rule.metric, rule.threshold),
            AlertCondition::Above => format!("{} above {}", rule.metric, rule.threshold),
            AlertCondition::Below => format!("{} below {}", rule.metric, rule.threshold),
            AlertCondition::Increased => format!("{} increased", rule.metric),
        };
        let labels_text = serde_json::to_string(labels).unwrap_or_default();
        match (status, rule.severity) {
            ("resolved", _) => {
                info!(alert = %rule.name, status, %condition, value, labels = %labels_text, "alert resolved")
            }
            (_, Severity::Critical) => {
                error!(alert = %rule.name, status, %condition, value, labels = %labels_text, "alert firing")
            }
            (_, Severity::Warning) => {
                warn!(alert = %rule.name, status, %condition, value, labels = %labels_text, "alert firing")
            }
        }
        let (Some(client), Some(url)) = (self.client.clone(), rule.webhook.clone()) else {
            return;
        };
        let payload = json!({
            "alert": rule.name,
            "status": status,
            "severity": rule.severity,
            "condition": condition,
            "metric": rule.metric,
            "labels": labels,
            "value": value,
            "threshold": rule.threshold,
            "since": humantime::format_rfc3339_seconds(since).to_string(),
            "at": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        })
        .to_string();
        let name = rule.name.clone();
        let (timeout, retries) = (rule.webhook_timeout, rule.webhook_retries);
        tokio::spawn(async move {
            post(&client, &url, &name, payload, timeout, retries).await;
        });
    }
}

/// POSTs `payload`, retrying with doubling pauses; gives up with an error line.
async fn post(
    client: &WebhookClient,
    url: &SecretUrl,
    name: &str,
    payload: String,
    timeout: Duration,
    retries: u32,
) {
    let mut pause = Duration::from_millis(500);
    for attempt in 0..=retries {
        let request = Request::post(url.expose())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "gateway-alerts")
            .body(Full::new(Bytes::from(payload.clone())));
        let request = match request {
            Ok(request) => request,
            Err(err) => {
                error!(alert = name, %url, %err, "the webhook URL is not usable");
                return;
            }
        };
        let outcome = match tokio::time::timeout(timeout, client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => return,
            Ok(Ok(response)) => format!("answered {}", response.status()),
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        if attempt == retries {
            error!(alert = name, %url, attempts = attempt + 1, reason = %outcome, "alert webhook failed; giving up");
            return;
        }
        warn!(alert = name, %url, attempt = attempt + 1, reason = %outcome, "alert webhook failed; retrying");
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
}

/// An HTTP(S) client trusting the rule's CA bundle or the system's.
fn client(rule: &AlertRule) -> Result<WebhookClient, tls::TlsFileError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(rule.webhook_timeout));
    let https = rule
        .webhook
        .as_ref()
        .is_some_and(|url| url.expose().starts_with("https://"));
    let roots = if https {
        let path = rule
            .webhook_ca
            .clone()
            .unwrap_or_else(|| SYSTEM_CA_BUNDLE.into());
        tls::load_roots(&path)?
    } else {
        rustls::RootCertStore::empty()
    };
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(tls::VERSIONS)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(text: &str) -> Alert {
        Alert {
            rule: toml::from_str(text).expect("rule"),
            client: None,
            last_sum: None,
            holding: HashMap::new(),
        }
    }

    fn statuses(changes: &[Change]) -> Vec<&'static str> {
        changes.iter().map(|c| c.status).collect()
    }

    #[test]
    fn below_fires_per_series_once_after_for_and_resolves() {
        let mut alert = alert(
            "name = \"down\"\nmetric = \"gateway_upstream_healthy_endpoints\"\n\
             condition = \"below\"\nthreshold = 1\nfor = \"2s\"\n",
        );
        let scrape = |a: u8, b: u8| {
            metrics::parse_text(&format!(
                "gateway_upstream_healthy_endpoints{{upstream=\"a\"}} {a}\n\
                 gateway_upstream_healthy_endpoints{{upstream=\"b\"}} {b}\n"
            ))
        };
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        assert!(
            alert.evaluate(&scrape(0, 2), at(0)).is_empty(),
            "not held for 2 s yet"
        );
        assert!(alert.evaluate(&scrape(0, 2), at(1)).is_empty());
        let fired = alert.evaluate(&scrape(0, 2), at(2));
        assert_eq!(statuses(&fired), ["firing"]);
        assert_eq!(fired[0].labels["upstream"], "a");
        assert!(
            alert.evaluate(&scrape(0, 2), at(3)).is_empty(),
            "fired once"
        );
        assert_eq!(
            statuses(&alert.evaluate(&scrape(1, 2), at(4))),
            ["resolved"]
        );
        // A blip shorter than `for` neither fires nor resolves.
        assert!(alert.evaluate(&scrape(2, 0), at(5)).is_empty());
        assert!(alert.evaluate(&scrape(2, 2), at(6)).is_empty());
    }

    #[test]
    fn rate_above_sums_matching_counters() {
        let mut alert = alert(
            "name = \"drops\"\nmetric = \"gateway_xdp_packets_total\"\n\
             labels = { verdict = \"drop\" }\ncondition = \"rate_above\"\nthreshold = 100\n",
        );
        let scrape = |cidr: u32, blocked: u32, pass: u32| {
            metrics::parse_text(&format!(
                "gateway_xdp_packets_total{{reason=\"drop_cidr\",verdict=\"drop\"}} {cidr}\n\
                 gateway_xdp_packets_total{{reason=\"drop_blocked\",verdict=\"drop\"}} {blocked}\n\
                 gateway_xdp_packets_total{{reason=\"pass\",verdict=\"pass\"}} {pass}\n"
            ))
        };
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        assert!(
            alert.evaluate(&scrape(0, 0, 0), at(0)).is_empty(),
            "no rate yet"
        );
        // 60 + 30 drops/s and plenty of passes: below 100/s.
        assert!(alert.evaluate(&scrape(60, 30, 10_000), at(1)).is_empty());
        let fired = alert.evaluate(&scrape(120, 100, 20_000), at(2));
        assert_eq!(statuses(&fired), ["firing"]);
        assert!((fired[0].value - 130.0).abs() < 1e-6, "{fired:?}");
        assert_eq!(
            statuses(&alert.evaluate(&scrape(121, 100, 30_000), at(3))),
            ["resolved"]
        );
    }
}

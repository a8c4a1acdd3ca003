//! The IMDSv2 client: a session token from `PUT /latest/api/token`, cached and refreshed before it
//! expires (and once on a 401), one short timeout per request, IMDSv1 only when configured.
//!
//! Each call is a single attempt (plus the one 401 refresh): the callers (the pollers, identity look-ups
//! at start) own the retry loop, with `crate::retry`'s backoff.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::config::ImdsConfig;
use crate::error::chain;
use crate::instance_id::{InstanceId, ParseInstanceIdError};

const TOKEN_PATH: &str = "/latest/api/token";
const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// IMDSv2 accepts token lifetimes of 1 s to 6 h.
const MAX_TTL_SECS: u64 = 21_600;
/// After a token refusal with `allow_v1`, how long to use IMDSv1 before asking for a token again.
const V1_RETRY_TOKEN_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("IMDS endpoint {endpoint:?}: {why}")]
    Endpoint { endpoint: String, why: String },
    #[error("IMDS at {url} is unreachable: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("IMDS GET {url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("IMDS {method} {url}: {cause}")]
    Request {
        method: &'static str,
        url: String,
        cause: String,
    },
    #[error("IMDS {method} {url}: HTTP {status}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
    },
    #[error(
        "IMDS refused a session token (PUT {url}: HTTP {status}) and IMDSv1 is off (imds.allow_v1 = false)"
    )]
    TokenRefused { url: String, status: u16 },
    #[error("IMDS GET {url}: 401 Unauthorized even with a fresh session token")]
    Unauthorized { url: String },
    #[error("IMDS {path}: not served (404)")]
    Missing { path: String },
    #[error("IMDS {path}: unexpected content {excerpt}: {why}")]
    Malformed {
        path: String,
        excerpt: String,
        why: String,
    },
}

impl Error {
    /// A short name for `health::Health::error`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Endpoint { .. } => "imds_endpoint",
            Error::Unreachable { .. } => "imds_unreachable",
            Error::Timeout { .. } => "imds_timeout",
            Error::Request { .. } => "imds_request",
            Error::Status { .. } => "imds_status",
            Error::TokenRefused { .. } => "imds_token_refused",
            Error::Unauthorized { .. } => "imds_unauthorized",
            Error::Missing { .. } => "imds_missing",
            Error::Malformed { .. } => "imds_malformed",
        }
    }
}

impl From<Error> for crate::Error {
    fn from(e: Error) -> crate::Error {
        crate::Error::Unavailable(e.to_string())
    }
}

/// One network interface as IMDS describes it under `network/interfaces/macs/<mac>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInterface {
    pub mac: String,
    /// `device-number`: 0 for the primary ENI.
    pub device_number: u32,
    /// `interface-id`: `eni-…`.
    pub interface_id: String,
}

#[derive(Debug)]
enum Session {
    None,
    Token {
        value: String,
        refresh_at: Instant,
    },
    /// IMDS refused tokens and `allow_v1` is on: plain GETs until `retry_token_at`.
    V1 {
        retry_token_at: Instant,
    },
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token_ttl_secs: u64,
    refresh_margin: Duration,
    timeout: Duration,
    allow_v1: bool,
    session: tokio::sync::Mutex<Session>,
    /// Set while IMDS is unreachable and that has been said once.
    unreachable_said: AtomicBool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

impl Client {
    /// A client for the endpoint the SDK would use (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, else
    /// `http://169.254.169.254`).
    pub fn new(cfg: &ImdsConfig) -> Result<Client, Error> {
        Client::with_endpoint(cfg, &crate::aws::imds_endpoint())
    }

    pub fn with_endpoint(cfg: &ImdsConfig, endpoint: &str) -> Result<Client, Error> {
        let base = endpoint.trim().trim_end_matches('/').to_string();
        let bad = |why: &str| Error::Endpoint {
            endpoint: endpoint.to_string(),
            why: why.to_string(),
        };
        if !base.starts_with("http://") {
            return Err(bad("only http:// is supported (IMDS does not speak TLS)"));
        }
        let http = reqwest::Client::builder()
            // IMDS is link-local: an HTTP(S)_PROXY meant for the internet must never see it.
            .no_proxy()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            // Four pollers, one request a second each: keep their connections instead of a new
            // TCP handshake per poll.
            .pool_max_idle_per_host(8)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| bad(&chain(&e)))?;
        let token_ttl_secs = cfg.token_ttl.as_secs().clamp(1, MAX_TTL_SECS);
        let ttl = Duration::from_secs(token_ttl_secs);
        Ok(Client {
            http,
            base,
            token_ttl_secs,
            refresh_margin: refresh_margin(ttl),
            timeout: cfg.timeout,
            allow_v1: cfg.allow_v1,
            session: tokio::sync::Mutex::new(Session::None),
            unreachable_said: AtomicBool::new(false),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// GET `latest/meta-data/<path>`: `Ok(None)` on 404 (for a notice path: no notice).
    pub async fn get(&self, path: &str) -> Result<Option<String>, Error> {
        let result = self.get_once(path).await;
        match &result {
            Err(Error::Unreachable { url, cause }) => {
                if !self.unreachable_said.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        url,
                        cause,
                        "IMDS is unreachable: either this is not an EC2 instance, or it runs in a \
                         container and the instance's metadata hop limit is 1 (raise it: aws ec2 \
                         modify-instance-metadata-options --http-put-response-hop-limit 2). \
                         Interruption notices are not seen until it answers; retrying with backoff"
                    );
                }
            }
            _ => {
                if self.unreachable_said.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %self.base, "IMDS is reachable again");
                }
            }
        }
        result
    }

    async fn get_once(&self, path: &str) -> Result<Option<String>, Error> {
        let path = path.trim_start_matches('/');
        let url = format!("{}/latest/meta-data/{path}", self.base);
        let token = self.token(false).await?;
        let mut resp = self.send_get(&url, token.as_deref()).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            // The token expired early (or IMDS was restarted, or now requires v2): one fresh token.
            let token = self.token(true).await?;
            resp = self.send_get(&url, token.as_deref()).await?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                return Err(Error::Unauthorized { url });
            }
        }
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => self.text(resp, "GET", &url).await.map(Some),
            s => Err(Error::Status {
                method: "GET",
                url,
                status: s.as_u16(),
            }),
        }
    }

    /// A response body as text, at most `bounded::IMDS_BODY_MAX_BYTES` (IMDS answers are a few KB;
    /// anything larger is not IMDS).
    async fn text(
        &self,
        resp: reqwest::Response,
        method: &'static str,
        url: &str,
    ) -> Result<String, Error> {
        let bytes = crate::bounded::body(resp, crate::bounded::IMDS_BODY_MAX_BYTES)
            .await
            .map_err(|e| match e {
                crate::bounded::BodyError::Read(e) => {
                    unanswered(method, url, &e, self.timed_out(url))
                }
                e @ crate::bounded::BodyError::TooLarge { .. } => Error::Request {
                    method,
                    url: url.to_string(),
                    cause: e.to_string(),
                },
            })?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn send_get(&self, url: &str, token: Option<&str>) -> Result<reqwest::Response, Error> {
        let mut req = self.http.get(url);
        if let Some(t) = token {
            req = req.header(TOKEN_HEADER, t);
        }
        req.send()
            .await
            .map_err(|e| unanswered("GET", url, &e, self.timed_out(url)))
    }

    fn timed_out(&self, url: &str) -> Error {
        Error::Timeout {
            url: url.to_string(),
            timeout: self.timeout,
        }
    }

    /// The session token to send (`None` in IMDSv1 mode). `force` discards the cached one.
    async fn token(&self, force: bool) -> Result<Option<String>, Error> {
        // Held across the PUT so concurrent pollers wait for one token instead of each asking.
        let mut session = self.session.lock().await;
        let now = Instant::now();
        if !force {
            match &*session {
                Session::Token { value, refresh_at } if now < *refresh_at => {
                    return Ok(Some(value.clone()));
                }
                Session::V1 { retry_token_at } if now < *retry_token_at => return Ok(None),
                _ => {}
            }
        }
        match self.fetch_token().await {
            Ok(value) => {
                *session = Session::Token {
                    value: value.clone(),
                    // Counted from before the PUT: never later than IMDS's own expiry.
                    refresh_at: now + Duration::from_secs(self.token_ttl_secs)
                        - self.refresh_margin,
                };
                Ok(Some(value))
            }
            Err(Error::TokenRefused { url, status }) if self.allow_v1 => {
                if !matches!(*session, Session::V1 { .. }) {
                    tracing::warn!(
                        url,
                        status,
                        "IMDS refused a session token; using IMDSv1 (imds.allow_v1 = true)"
                    );
                }
                *session = Session::V1 {
                    retry_token_at: now + V1_RETRY_TOKEN_AFTER,
                };
                Ok(None)
            }
            Err(e) => {
                *session = Session::None;
                Err(e)
            }
        }
    }

    async fn fetch_token(&self) -> Result<String, Error> {
        let url = format!("{}{TOKEN_PATH}", self.base);
        let resp = self
            .http
            .put(&url)
            .header(TTL_HEADER, self.token_ttl_secs.to_string())
            .send()
            .await
            .map_err(|e| {
                // The hop-limit case: the PUT reaches IMDS but its answer (IP TTL 1) dies one hop
                // short of a container's network namespace, so it simply never arrives.
                let no_answer = Error::Unreachable {
                    url: url.clone(),
                    cause: format!("no answer to the token request within {:?}", self.timeout),
                };
                unanswered("PUT", &url, &e, no_answer)
            })?;
        let status = resp.status();
        if status.is_success() {
            let token = self.text(resp, "PUT", &url).await?;
            let token = token.trim().to_string();
            if token.is_empty() {
                return Err(Error::Malformed {
                    path: TOKEN_PATH.to_string(),
                    excerpt: "\"\"".to_string(),
                    why: "empty session token".to_string(),
                });
            }
            return Ok(token);
        }
        match status.as_u16() {
            // 403: IMDS disabled or tokens forbidden; 404/405: an IMDS (or emulator) without v2.
            s @ 403..=405 => Err(Error::TokenRefused { url, status: s }),
            s => Err(Error::Status {
                method: "PUT",
                url,
                status: s,
            }),
        }
    }

    async fn required(&self, path: &str) -> Result<String, Error> {
        match self.get(path).await? {
            Some(body) => {
                let value = body.trim().to_string();
                if value.is_empty() {
                    return Err(Error::Malformed {
                        path: path.to_string(),
                        excerpt: "\"\"".to_string(),
                        why: "empty value".to_string(),
                    });
                }
                Ok(value)
            }
            None => Err(Error::Missing {
                path: path.to_string(),
            }),
        }
    }

    /// `instance-id`, e.g. `i-0123456789abcdef0`.
    pub async fn instance_id(&self) -> Result<InstanceId, Error> {
        let value = self.required("instance-id").await?;
        value
            .parse()
            .map_err(|e: ParseInstanceIdError| Error::Malformed {
                path: "instance-id".into(),
                excerpt: super::parse::excerpt(&value),
                why: e.to_string(),
            })
    }

    /// `instance-type`, e.g. `m5.large`.
    pub async fn instance_type(&self) -> Result<String, Error> {
        self.required("instance-type").await
    }

    /// `placement/region`, e.g. `eu-west-1`.
    pub async fn region(&self) -> Result<String, Error> {
        self.required("placement/region").await
    }

    /// `placement/availability-zone`, e.g. `eu-west-1a`.
    pub async fn availability_zone(&self) -> Result<String, Error> {
        self.required("placement/availability-zone").await
    }

    /// The MACs of the attached interfaces (`network/interfaces/macs/`, one `mac/` a line).
    pub async fn mac_addresses(&self) -> Result<Vec<String>, Error> {
        let body = self.required("network/interfaces/macs/").await?;
        Ok(parse_macs(&body))
    }

    /// `network/interfaces/macs/<mac>/device-number`.
    pub async fn device_number(&self, mac: &str) -> Result<u32, Error> {
        let path = format!("network/interfaces/macs/{mac}/device-number");
        let value = self.required(&path).await?;
        value.parse().map_err(|e| Error::Malformed {
            excerpt: super::parse::excerpt(&value),
            path,
            why: format!("not a device number: {e}"),
        })
    }

    /// `network/interfaces/macs/<mac>/interface-id`.
    pub async fn interface_id(&self, mac: &str) -> Result<String, Error> {
        self.required(&format!("network/interfaces/macs/{mac}/interface-id"))
            .await
    }

    /// Every attached interface with its device number and ENI id, ordered by device number.
    pub async fn network_interfaces(&self) -> Result<Vec<NetworkInterface>, Error> {
        let mut out = Vec::new();
        for mac in self.mac_addresses().await? {
            out.push(NetworkInterface {
                device_number: self.device_number(&mac).await?,
                interface_id: self.interface_id(&mac).await?,
                mac,
            });
        }
        out.sort_by_key(|i| i.device_number);
        Ok(out)
    }
}

/// A request IMDS did not answer: refused or unroutable (`Unreachable`), no answer in time
/// (`on_timeout`), or failed otherwise (`Request`).
fn unanswered(method: &'static str, url: &str, e: &reqwest::Error, on_timeout: Error) -> Error {
    if e.is_connect() {
        Error::Unreachable {
            url: url.to_string(),
            cause: chain(e),
        }
    } else if e.is_timeout() {
        on_timeout
    } else {
        Error::Request {
            method,
            url: url.to_string(),
            cause: chain(e),
        }
    }
}

/// Refresh this long before the token expires: a tenth of its life, at most a minute.
fn refresh_margin(ttl: Duration) -> Duration {
    (ttl / 10).min(Duration::from_secs(60))
}

fn parse_macs(body: &str) -> Vec<String> {
    body.lines()
        .map(|l| l.trim().trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_margin_is_a_tenth_capped_at_a_minute() {
        assert_eq!(
            refresh_margin(Duration::from_secs(21_600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(60)),
            Duration::from_secs(6)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(1)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn macs_listing_as_served() {
        assert_eq!(
            parse_macs("0e:49:61:0f:c3:11/\n0e:49:61:0f:c3:12/"),
            vec!["0e:49:61:0f:c3:11", "0e:49:61:0f:c3:12"]
        );
        assert_eq!(
            parse_macs("0e:49:61:0f:c3:11/\n\n"),
            vec!["0e:49:61:0f:c3:11"]
        );
        assert!(parse_macs("").is_empty());
    }

    #[test]
    fn endpoint_must_be_plain_http() {
        let cfg = ImdsConfig::default();
        let e = Client::with_endpoint(&cfg, "https://169.254.169.254").unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
        assert!(Client::with_endpoint(&cfg, "http://127.0.0.1:1/").is_ok());
    }

    #[test]
    fn token_ttl_is_kept_within_what_imds_accepts() {
        let cfg = ImdsConfig {
            token_ttl: Duration::from_secs(100_000),
            ..ImdsConfig::default()
        };
        let c = Client::with_endpoint(&cfg, "http://127.0.0.1:1").unwrap();
        assert_eq!(c.token_ttl_secs, MAX_TTL_SECS);
    }
}

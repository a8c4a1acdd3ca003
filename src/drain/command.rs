//! The operator commands `drain [--wait] [--timeout D]` and `activate`: the same machine and state as
//! the daemon (so a running daemon sees what the operator did, and the other way round).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{AwsEffects, Command, Done, DrainStatus, Input, Runner, Settings, Store, Target};
use crate::config::Config;
use crate::error::Error;
use crate::health::Health;
use crate::instance_id::InstanceId;

/// The instance id from `--instance-id`, else `drain.instance_id`, else IMDS.
pub async fn resolve_instance_id(flag: Option<&str>, cfg: &Config) -> Result<InstanceId, Error> {
    match instance_id(flag, cfg) {
        Err(Error::Input(_)) if flag.is_none() && cfg.drain.instance_id.trim().is_empty() => {
            let client = crate::imds::client::Client::new(&cfg.imds)
                .map_err(|e| Error::Unavailable(format!("IMDS: {e}")))?;
            client.instance_id().await.map_err(|e| {
                Error::Unavailable(format!(
                    "cannot read the instance id from IMDS ({e}); pass --instance-id i-… or set drain.instance_id"
                ))
            })
        }
        other => other,
    }
}

/// The instance id from `--instance-id`, else `drain.instance_id`.
pub fn instance_id(flag: Option<&str>, cfg: &Config) -> Result<InstanceId, Error> {
    let id = flag
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .or_else(|| Some(cfg.drain.instance_id.trim()).filter(|s| !s.is_empty()));
    match id {
        Some(id) => id.parse().map_err(|e| Error::Input(format!("{e}"))),
        None => Err(Error::Input(
            "which instance? pass --instance-id i-… or set drain.instance_id".into(),
        )),
    }
}

async fn runner(cfg: &Config, instance_id: InstanceId) -> Result<Runner, Error> {
    let store = Store::open(&cfg.agent.state_dir)
        .map_err(|e| Error::Unavailable(format!("{e} (is agent.state_dir writable?)")))?;
    let sdk = crate::aws::sdk_config().await;
    let effects = AwsEffects::new(&sdk, Target::from_config(cfg, instance_id.into()))
        .with_ignored_families(cfg.drain.ignore_families.clone());
    let (runner, _handles) = Runner::new(
        Settings::from_config(&cfg.drain),
        store,
        effects,
        Arc::new(Health::default()),
    );
    Ok(runner)
}

/// Applies `command` with a runner of its own over the daemon's state; fails with the first ECS
/// call that did not go through (`cannot <verb>: …`). Returns the runner and the status after.
async fn apply(
    cfg: &Config,
    instance_id: InstanceId,
    command: Command,
    verb: &str,
) -> Result<(Runner, DrainStatus), Error> {
    let runner = runner(cfg, instance_id).await?;
    let done = runner.apply(Input::Command(command)).await;
    let failed = done.iter().find_map(|d| match d {
        Done::SetDraining(Err(f)) | Done::SetActive(Err(f)) => Some(f.message.clone()),
        _ => None,
    });
    if let Some(e) = failed {
        return Err(Error::Unavailable(format!("cannot {verb}: {e}")));
    }
    let status = runner
        .status()
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    Ok((runner, status))
}

/// Sets this instance DRAINING; with `wait`, follows its tasks until they are gone or `timeout`.
pub async fn drain(
    cfg: &Config,
    instance_id: InstanceId,
    wait: bool,
    timeout: Option<Duration>,
) -> Result<DrainStatus, Error> {
    let (runner, status) = apply(cfg, instance_id, Command::Drain, "drain").await?;
    if let DrainStatus::Failed { error, .. } = &status {
        return Err(Error::Unavailable(format!("drain failed: {error}")));
    }
    eprintln!("{}", status.summary());
    if !wait {
        return Ok(status);
    }
    let start = Instant::now();
    let status = runner
        .wait_drained(timeout, |s| {
            if let DrainStatus::Draining {
                tasks_remaining,
                deadline,
                ..
            } = s
            {
                eprintln!(
                    "tasks remaining: {}, elapsed: {}s, deadline: {}",
                    tasks_remaining
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "?".into()),
                    start.elapsed().as_secs(),
                    deadline
                        .map(|d| crate::rfc3339::format(d).to_string())
                        .unwrap_or_else(|| "none".into())
                );
            }
        })
        .await;
    match &status {
        DrainStatus::Draining {
            tasks_remaining, ..
        } => Err(Error::TimedOut(format!(
            "timed out after {}s with {} task(s) remaining; the instance stays DRAINING",
            start.elapsed().as_secs(),
            tasks_remaining
                .map(|n| n.to_string())
                .unwrap_or_else(|| "?".into())
        ))),
        DrainStatus::Failed { error, .. } => {
            Err(Error::Unavailable(format!("drain failed: {error}")))
        }
        _ => Ok(status),
    }
}

/// Returns this instance to ACTIVE.
pub async fn activate(cfg: &Config, instance_id: InstanceId) -> Result<DrainStatus, Error> {
    let (_, status) = apply(cfg, instance_id, Command::Activate, "activate").await?;
    if status.is_draining() {
        return Err(Error::Unavailable(format!(
            "not activated: {}",
            status.summary()
        )));
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(id: &str) -> Config {
        let mut cfg = Config::default();
        cfg.drain.instance_id = id.into();
        cfg
    }

    #[test]
    fn the_flag_wins_over_the_config_and_both_must_be_instance_ids() {
        let cases = [
            // (flag, drain.instance_id, id or error containing)
            (Some("i-0abc1234def567890"), "", Ok("i-0abc1234def567890")),
            (
                Some(" i-1234abcd "),
                "i-0abc1234def567890",
                Ok("i-1234abcd"),
            ),
            (None, "i-0abc1234def567890", Ok("i-0abc1234def567890")),
            (Some(""), "i-1234abcd", Ok("i-1234abcd")),
            (
                Some("i-web"),
                "",
                Err("\"i-web\" is not an EC2 instance id"),
            ),
            (Some("i-0ABC1234DEF567890"), "", Err("lowercase hex")),
            (None, "", Err("which instance?")),
        ];
        for (flag, configured, want) in cases {
            let got = instance_id(flag, &config(configured));
            match (&got, want) {
                (Ok(id), Ok(w)) => assert_eq!(id.as_str(), w),
                (Err(Error::Input(e)), Err(w)) => assert!(e.contains(w), "{flag:?}: {e}"),
                _ => panic!("{flag:?} / {configured:?}: {got:?}, want {want:?}"),
            }
        }
    }
}

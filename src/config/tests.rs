use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let text = format!(
        "[agent]\necs_config_path = \"{}\"\n{text}",
        dir.path().join("ecs.config").display()
    );
    std::fs::write(&path, text).unwrap();
    load(LoadOptions {
        path: Some(&path),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
}

#[test]
fn defaults_are_valid_and_local() {
    let loaded = load_text("", &[]).unwrap();
    assert_eq!(
        loaded.config.sinks.enabled,
        vec![SinkKind::Stdout, SinkKind::Prometheus]
    );
    assert_eq!(loaded.sources["prometheus.listen"], Source::Default);
    assert!(
        loaded
            .describe()
            .contains("prometheus.listen = \"127.0.0.1:9779\"  # default")
    );
}

#[test]
fn unknown_key_is_named() {
    let err = load_text("[prometheus]\nlisten_addr = \"x\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("listen_addr"), "{err}");
}

#[test]
fn bad_value_names_key_value_and_allowed() {
    let err = load_text("[sinks]\nenabled = [\"stdout\", \"graphite\"]\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("sinks.enabled"), "{err}");
    assert!(
        err.contains("graphite") && err.contains("cloudwatch"),
        "{err}"
    );
}

#[test]
fn syntax_error_points_at_line_and_column() {
    let err = load_text("[host]\nreserved_memory_mib = = 3\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 4") && err.contains("column 23"), "{err}");
}

#[test]
fn environment_overrides_file_and_says_so() {
    let loaded = load_text(
        "[prometheus]\nlisten = \"127.0.0.1:1\"\n",
        &[
            ("ECS_CAPACITY_AGENT_PROMETHEUS_LISTEN", "127.0.0.1:2"),
            ("ECS_CAPACITY_AGENT_HOST_RESERVED_PORTS_UDP", "53, 123"),
            ("ECS_CAPACITY_AGENT_AGENT_INTERVAL", "5s"),
        ],
    )
    .unwrap();
    assert_eq!(loaded.config.prometheus.listen.port(), 2);
    assert_eq!(loaded.config.host.reserved_ports_udp, vec![53, 123]);
    assert_eq!(loaded.config.agent.interval, Duration::from_secs(5));
    assert_eq!(
        loaded.sources["prometheus.listen"],
        Source::Environment("ECS_CAPACITY_AGENT_PROMETHEUS_LISTEN".into())
    );
}

#[test]
fn unknown_environment_variable_is_an_error() {
    let err = load_text("", &[("ECS_CAPACITY_AGENT_PROMETHEUS_LISTN", "x")]).unwrap_err();
    assert!(
        err.to_string()
            .contains("ECS_CAPACITY_AGENT_PROMETHEUS_LISTN")
    );
}

#[test]
fn bad_duration_from_environment_names_variable() {
    let err = load_text("", &[("ECS_CAPACITY_AGENT_AGENT_INTERVAL", "soon")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("agent.interval") && err.contains("ECS_CAPACITY_AGENT_AGENT_INTERVAL"),
        "{err}"
    );
}

#[test]
fn ecs_config_is_read_and_file_wins_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let ecs = dir.path().join("ecs.config");
    std::fs::write(
        &ecs,
        "ECS_CLUSTER=prod\nECS_RESERVED_MEMORY=256\nECS_RESERVED_PORTS=[22, 8080]\n# c\nECS_RESERVED_PORTS_UDP=[53]\nECS_CGROUP_PATH=/cg\nECS_OTHER=1\n",
    )
    .unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[agent]\necs_config_path = \"{}\"\n[host]\nreserved_ports_udp = []\n",
            ecs.display()
        ),
    )
    .unwrap();
    let loaded = load(LoadOptions {
        path: Some(&path),
        env: vec![],
    })
    .unwrap();
    let c = &loaded.config;
    assert_eq!(c.agent.cluster, "prod");
    assert_eq!(c.host.reserved_memory_mib, 256);
    assert_eq!(c.host.reserved_ports, vec![22, 8080]);
    assert_eq!(c.host.reserved_ports_udp, Vec::<u16>::new());
    assert_eq!(c.host.cgroup_root, PathBuf::from("/cg"));
    assert!(
        matches!(&loaded.sources["agent.cluster"], Source::EcsConfig { key, .. } if key == "ECS_CLUSTER")
    );
    assert_eq!(
        loaded.sources["host.reserved_ports_udp"],
        Source::File(path)
    );
}

#[test]
fn cloudwatch_period_must_be_10s_or_60s_and_divided_by_the_interval() {
    let cw = "[sinks]\nenabled = [\"cloudwatch\"]\n";
    // The text goes on under load_text's own [agent] header.
    let err = load_text(&format!("interval = \"45s\"\n{cw}"), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("agent.interval") && err.contains("cloudwatch.period"),
        "{err}"
    );
    let err = load_text(&format!("{cw}[cloudwatch]\nperiod = \"30s\"\n"), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cloudwatch.period") && err.contains("10s"),
        "{err}"
    );
    let ok = load_text(
        &format!("interval = \"5s\"\n{cw}[cloudwatch]\nperiod = \"10s\"\n"),
        &[],
    )
    .unwrap();
    assert_eq!(ok.config.cloudwatch.period, Duration::from_secs(10));
    // Without the CloudWatch sink the interval is free.
    assert!(load_text("interval = \"45s\"\n", &[]).is_ok());
}

#[test]
fn bad_ecs_config_names_line_and_key() {
    let err = parse_ecs_config(Path::new("/e"), "ECS_CLUSTER=a\nECS_RESERVED_MEMORY=lots\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 2") && err.contains("ECS_RESERVED_MEMORY"),
        "{err}"
    );
}

#[test]
fn reserved_namespace_is_refused() {
    let err = load_text("[cloudwatch]\nnamespace = \"AWS/ECS\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cloudwatch.namespace") && err.contains("AWS/"),
        "{err}"
    );
}

#[test]
fn drain_keys_are_validated_by_name() {
    let err = load_text("[drain]\ninstance_id = \"web-1\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("drain.instance_id") && err.contains("web-1"),
        "{err}"
    );
    let ok = load_text("[drain]\ninstance_id = \"i-0abc1234def567890\"\n", &[]).unwrap();
    assert_eq!(ok.config.drain.instance_id, "i-0abc1234def567890");
    let err = load_text(
        "[drain]\ndrain_on_shutdown = true\nshutdown_drain_timeout = \"0s\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("drain.shutdown_drain_timeout"), "{err}");
    let err = load_text("[drain]\non_spot = \"ignore\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("on_spot") || err.contains("ignore"), "{err}");
}

#[test]
fn missing_explicit_file_is_an_error_but_missing_default_is_not() {
    let err = load(LoadOptions {
        path: Some(Path::new("/nonexistent/c.toml")),
        env: vec![],
    });
    assert!(matches!(err, Err(ConfigError::Read { .. })));
}

#[test]
fn durations_are_bounded_and_the_error_names_key_range_and_origin() {
    for (text, key, range) in [
        (
            "interval = \"1ns\"\n",
            "agent.interval",
            "at least 1s and at most 1h",
        ),
        (
            "[imds]\ntimeout = \"1ns\"\n",
            "imds.timeout",
            "at least 10ms and at most 30s",
        ),
        (
            "[drain]\nmaintenance_lead_time = \"1000y\"\n",
            "drain.maintenance_lead_time",
            "28days",
        ),
    ] {
        let err = load_text(text, &[]).unwrap_err().to_string();
        assert!(
            err.contains(key) && err.contains(range) && err.contains("file "),
            "{err}"
        );
    }
    let err = load_text("[imds]\ntimeout = \"2s\"\npoll_interval = \"1s\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("imds.timeout") && err.contains("imds.poll_interval"),
        "{err}"
    );
    let err = load_text("", &[("ECS_CAPACITY_AGENT_AGENT_INTERVAL", "2h")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("environment ECS_CAPACITY_AGENT_AGENT_INTERVAL"),
        "{err}"
    );
}

#[test]
fn a_list_element_from_the_environment_names_the_variable_not_the_file() {
    let err = load_text(
        "[host]\nreserved_ports_udp = [53]\n",
        &[("ECS_CAPACITY_AGENT_HOST_RESERVED_PORTS_UDP", "53, 99999")],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("environment ECS_CAPACITY_AGENT_HOST_RESERVED_PORTS_UDP")
            && err.contains("host.reserved_ports_udp[1]")
            && !err.contains("file "),
        "{err}"
    );
}

#[test]
fn a_huge_ecs_reserved_memory_is_reported_as_written() {
    let err = parse_ecs_config(
        Path::new("/e"),
        "ECS_RESERVED_MEMORY=18446744073709551615\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("18446744073709551615") && !err.contains("-1"),
        "{err}"
    );
}

#[test]
fn a_non_loopback_listen_address_needs_the_opt_in_key() {
    let err = load_text("[prometheus]\nlisten = \"0.0.0.0:9779\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("prometheus.listen") && err.contains("prometheus.allow_non_loopback"),
        "{err}"
    );
    let ok = load_text(
        "[prometheus]\nlisten = \"0.0.0.0:9779\"\nallow_non_loopback = true\n",
        &[],
    )
    .unwrap();
    assert!(!ok.config.prometheus.listen.ip().is_loopback());
}

#[test]
fn a_config_that_is_not_a_regular_file_is_refused() {
    let err = load(LoadOptions {
        path: Some(Path::new("/dev/zero")),
        env: vec![],
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("/dev/zero") && err.contains("character device"),
        "{err}"
    );
}

#[test]
fn scale_in_keys_are_validated_by_name() {
    let ok = load_text("", &[]).unwrap();
    assert_eq!(ok.config.scale_in.protection, Toggle::Auto);
    assert_eq!(ok.config.scale_in.idle_grace, Duration::from_secs(300));
    let cases = [
        (
            "[scale_in]\nprotection = \"maybe\"\n",
            "scale_in.protection",
            "maybe",
        ),
        (
            "[scale_in]\nidle_grace = \"10s\"\n",
            "scale_in.idle_grace",
            "at least 1m",
        ),
        (
            "[scale_in]\nview_interval = \"5s\"\n",
            "scale_in.view_interval",
            "at least 1m",
        ),
        (
            "[scale_in]\nvolunteer_timeout = \"5m\"\n",
            "scale_in.volunteer_timeout",
            "scale_in.view_interval",
        ),
    ];
    for (text, key, says) in cases {
        let err = load_text(text, &[]).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(says), "{text}: {err}");
    }
    let env = load_text("", &[("ECS_CAPACITY_AGENT_SCALE_IN_PROTECTION", "off")]).unwrap();
    assert_eq!(env.config.scale_in.protection, Toggle::Off);
    // Without volunteering the timeout does not matter.
    load_text(
        "[scale_in]\nvolunteer = false\nvolunteer_timeout = \"1m\"\n",
        &[],
    )
    .unwrap();
}

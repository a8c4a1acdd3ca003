//! `make install DESTDIR=…` (scripts/install.sh): the layout, its modes, the shipped configuration
//! (every key, with its built-in default, and it loads), and the unit passing `systemd-analyze verify`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ecs_capacity_agent::config::Config;

use crate::require;
use crate::support::repo_root;

const BIN: &str = env!("CARGO_BIN_EXE_ecs-capacity-agent");
const SHIPPED_CONFIG: &str = "config/ecs-capacity-agent.toml";

fn install(destdir: &Path) {
    let out = Command::new("make")
        .current_dir(repo_root())
        .arg("install")
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg(format!("BIN={BIN}"))
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "make install failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The settings of a commented default file: `#key = value` and `#[section]` lines uncommented;
/// explanations (`# …`) stay comments.
fn uncomment(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn leaf_keys(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_keys(v, &key, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn install_lays_out_binary_config_unit_and_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    install(&root);

    let expect: [(&str, u32, bool); 4] = [
        ("usr/bin/ecs-capacity-agent", 0o755, false),
        ("etc/ecs-capacity-agent/config.toml", 0o644, false),
        (
            "usr/lib/systemd/system/ecs-capacity-agent.service",
            0o644,
            false,
        ),
        ("var/lib/ecs-capacity-agent", 0o700, true),
    ];
    for (path, want, is_dir) in expect {
        let p = root.join(path);
        assert_eq!(p.is_dir(), is_dir, "{path}");
        assert_eq!(mode(&p), want, "{path}: mode {:o}", mode(&p));
    }
    assert_eq!(
        std::fs::read(root.join("usr/bin/ecs-capacity-agent")).unwrap(),
        std::fs::read(BIN).unwrap(),
        "the installed binary is BIN"
    );
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/ecs-capacity-agent.service"))
            .unwrap();
    assert!(
        unit.contains(
            "ExecStart=/usr/bin/ecs-capacity-agent run --config /etc/ecs-capacity-agent/config.toml"
        ),
        "{unit}"
    );
    // The state directory is systemd's StateDirectory, private, and the one writable path.
    assert!(
        unit.lines()
            .any(|l| l == "StateDirectory=ecs-capacity-agent")
            && unit.lines().any(|l| l == "StateDirectoryMode=0700")
            && !unit.lines().any(|l| l.starts_with("ReadWritePaths=")),
        "{unit}"
    );

    // The installed binary accepts the installed configuration, and it sets nothing: every value
    // check-config prints is the built-in default.
    let out = Command::new(root.join("usr/bin/ecs-capacity-agent"))
        .arg("check-config")
        .arg(root.join("etc/ecs-capacity-agent/config.toml"))
        .env(
            "ECS_CAPACITY_AGENT_AGENT_ECS_CONFIG_PATH",
            dir.path().join("no-ecs.config"),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check-config: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in stdout.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            line.ends_with("# default") || line.starts_with("agent.ecs_config_path "),
            "the shipped file must leave every key at its default: {line}"
        );
    }
}

#[test]
fn shipped_config_lists_every_key_with_its_default() {
    let text = std::fs::read_to_string(repo_root().join(SHIPPED_CONFIG)).unwrap();
    let settings = uncomment(&text);
    let table: toml::Value = toml::from_str(&settings)
        .unwrap_or_else(|e| panic!("{SHIPPED_CONFIG} uncommented is not TOML: {e}\n{settings}"));

    let defaults = toml::Value::try_from(Config::default()).unwrap();
    let (mut want, mut have) = (Vec::new(), Vec::new());
    leaf_keys(&defaults, "", &mut want);
    leaf_keys(&table, "", &mut have);
    let missing: Vec<_> = want.iter().filter(|k| !have.contains(k)).collect();
    let unknown: Vec<_> = have.iter().filter(|k| !want.contains(k)).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "{SHIPPED_CONFIG} is out of date with src/config.rs: missing {missing:?}, unknown {unknown:?}"
    );

    let parsed: Config = table
        .try_into()
        .unwrap_or_else(|e| panic!("{SHIPPED_CONFIG} uncommented does not load: {e}"));
    assert_eq!(
        parsed,
        Config::default(),
        "{SHIPPED_CONFIG}: a listed value differs from the built-in default"
    );
}

#[test]
fn installed_unit_passes_systemd_analyze_verify() {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .map_err(|e| format!("systemd-analyze: {e}"));
    require!(found, "systemd-analyze");
    let dir = tempfile::tempdir().unwrap();
    let root: PathBuf = dir.path().join("root");
    install(&root);
    let out = Command::new("systemd-analyze")
        .args(["verify", "--recursive-errors=no", "--man=no"])
        .arg(format!("--root={}", root.display()))
        .arg("ecs-capacity-agent.service")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {text}");
    assert!(
        text.trim().is_empty(),
        "systemd-analyze verify warned: {text}"
    );
}

/// Runs scripts/check-deploy.sh over `deploy`: (success, stderr).
fn check_deploy(deploy: &Path) -> (bool, String) {
    let root = repo_root();
    assert!(
        root.join(".venv/bin/cfn-lint").exists(),
        ".venv/bin/cfn-lint missing: run scripts/test-env.sh"
    );
    let out = Command::new(root.join("scripts/check-deploy.sh"))
        .env("DEPLOY_DIR", deploy)
        .output()
        .expect("run scripts/check-deploy.sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The shipped policy covers every SDK operation the code calls and no other; taking one action out
/// of both the policy and the template fails the check, naming the action and where the code calls
/// it, and so does allowing one the code does not call.
#[test]
fn check_deploy_fails_when_a_called_operation_has_no_statement() {
    let root = repo_root();
    let (ok, err) = check_deploy(&root.join("deploy"));
    assert!(ok, "the shipped deploy/ passes: {err}");
    assert!(
        err.contains("ecs:ListTasks") && err.contains("cloudwatch:PutMetricData"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let policy = std::fs::read_to_string(root.join("deploy/iam-policy.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&policy).unwrap();
    for s in json["Statement"].as_array_mut().unwrap() {
        if let Some(actions) = s["Action"].as_array_mut() {
            actions.retain(|a| a != "ecs:ListTasks");
        }
    }
    std::fs::write(
        dir.path().join("iam-policy.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    let template = std::fs::read_to_string(root.join("deploy/capacity-alarms.yaml")).unwrap();
    let without = template.replace("              - ecs:ListTasks\n", "");
    assert_ne!(without, template, "the template lists ecs:ListTasks");
    std::fs::write(dir.path().join("capacity-alarms.yaml"), without).unwrap();

    let (ok, err) = check_deploy(dir.path());
    assert!(!ok, "a missing statement fails the check");
    assert!(
        err.contains("no statement allows ecs:ListTasks")
            && err.contains("iam-policy.json")
            && err.contains("capacity-alarms.yaml")
            && err.contains("src/"),
        "{err}"
    );

    let extra = template.replace(
        "              - ec2:DescribeInstanceTypes\n",
        "              - ec2:DescribeInstanceTypes\n              - ec2:DescribeVolumes\n",
    );
    assert_ne!(extra, template);
    std::fs::write(dir.path().join("capacity-alarms.yaml"), extra).unwrap();
    std::fs::write(dir.path().join("iam-policy.json"), &policy).unwrap();
    let (ok, err) = check_deploy(dir.path());
    assert!(!ok, "an action no code calls fails the check");
    assert!(
        err.contains("allows ec2:DescribeVolumes, which no code in src/ calls"),
        "{err}"
    );
}

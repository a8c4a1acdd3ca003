//! Bad input of every kind, fed to the real binary: configuration files and values (file, ecs.config,
//! environment), `cluster` input files, drain state files for `status`, and abuse of the Prometheus
//! endpoint. Each case states the exit status it must end with and the words its error must contain
//! (the input it names); every case must end within its time limit (the child is killed otherwise)
//! and no output may say "panicked". The summary line counts them.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::foundation::{agent, config_file, sigterm};

const CASE_LIMIT: Duration = Duration::from_secs(20);

/// One run of the binary and what it must do.
struct Case {
    name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    code: i32,
    /// Each must appear in stderr.
    says: Vec<String>,
    /// None of these may appear in stderr.
    not_says: Vec<String>,
}

impl Case {
    fn new(name: &str, args: &[&str], code: i32, says: &[&str]) -> Case {
        Case {
            name: name.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            code,
            says: says.iter().map(|s| s.to_string()).collect(),
            not_says: Vec::new(),
        }
    }

    fn env(mut self, var: &str, value: &str) -> Case {
        self.env.push((var.into(), value.into()));
        self
    }

    fn not_says(mut self, text: &str) -> Case {
        self.not_says.push(text.into());
        self
    }
}

#[derive(Default)]
struct Tally {
    tried: usize,
    panics: Vec<String>,
    hangs: Vec<String>,
    unclear: Vec<String>,
}

impl Tally {
    fn report(&self) -> String {
        let mut out = format!(
            "bad inputs tried {}, panics {}, hangs {}, unclear {}",
            self.tried,
            self.panics.len(),
            self.hangs.len(),
            self.unclear.len()
        );
        for (what, list) in [
            ("panic", &self.panics),
            ("hang", &self.hangs),
            ("unclear", &self.unclear),
        ] {
            for l in list {
                let _ = write!(out, "\n  {what}: {l}");
            }
        }
        out
    }

    fn assert_clean(&self) {
        let report = self.report();
        println!("{report}");
        assert!(
            self.panics.is_empty() && self.hangs.is_empty() && self.unclear.is_empty(),
            "{report}"
        );
    }
}

/// Waits for `child` at most `limit`; kills it after that. `None` when it had to be killed.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run_case(case: &Case, tally: &mut Tally, out_dir: &Path) {
    tally.tried += 1;
    // Output goes to files, so a child that writes a lot never blocks on a full pipe.
    let stdout_path = out_dir.join(format!("{}.stdout", tally.tried));
    let stderr_path = out_dir.join(format!("{}.stderr", tally.tried));
    let mut child = agent()
        .args(&case.args)
        .envs(case.env.iter().cloned())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut child, CASE_LIMIT);
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let label = format!("{} ({})", case.name, case.args.join(" "));
    let Some(status) = status else {
        tally
            .hangs
            .push(format!("{label}: killed after {CASE_LIMIT:?}"));
        return;
    };
    if stderr.contains("panicked") || stdout.contains("panicked") {
        tally.panics.push(format!("{label}: {stderr}"));
        return;
    }
    let missing: Vec<&String> = case.says.iter().filter(|s| !stderr.contains(*s)).collect();
    let present: Vec<&String> = case
        .not_says
        .iter()
        .filter(|s| stderr.contains(*s))
        .collect();
    if status.code() != Some(case.code) || !missing.is_empty() || !present.is_empty() {
        tally.unclear.push(format!(
            "{label}: exit {:?} (want {}), missing {missing:?}, unwanted {present:?}; stderr: {}",
            status.code(),
            case.code,
            stderr.trim()
        ));
    }
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn fifo(path: &Path) -> PathBuf {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU).unwrap();
    path.to_path_buf()
}

/// A config file in its own directory (so each has its own ecs.config and state dir).
fn config_case(root: &Path, name: &str, body: &str) -> (PathBuf, PathBuf) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    (config_file(&dir, body), dir)
}

fn configuration_cases(root: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let check = |name: &str, body: &str, says: &[&str]| {
        let (cfg, _) = config_case(root, name, body);
        Case::new(name, &["check-config", "--config", &s(&cfg)], 78, says)
    };
    // The file itself.
    let fifo_cfg = fifo(&root.join("config.fifo"));
    cases.push(Case::new(
        "config is a FIFO",
        &["check-config", "--config", &s(&fifo_cfg)],
        78,
        &["config.fifo", "FIFO"],
    ));
    cases.push(Case::new(
        "config is /dev/zero",
        &["check-config", "--config", "/dev/zero"],
        78,
        &["/dev/zero", "character device"],
    ));
    cases.push(Case::new(
        "config is a directory",
        &["check-config", "--config", &s(root)],
        78,
        &[&s(root), "directory"],
    ));
    cases.push(Case::new(
        "config is missing",
        &["check-config", "--config", "/nonexistent/config.toml"],
        78,
        &["/nonexistent/config.toml"],
    ));
    let big = root.join("big.toml");
    std::fs::write(&big, "# padding\n".repeat(200_000)).unwrap();
    cases.push(Case::new(
        "config above 1 MiB",
        &["check-config", "--config", &s(&big)],
        78,
        &["big.toml", "larger than"],
    ));
    let not_utf8 = root.join("latin1.toml");
    std::fs::write(&not_utf8, b"[agent]\ncluster = \"caf\xe9\"\n").unwrap();
    cases.push(Case::new(
        "config not UTF-8",
        &["check-config", "--config", &s(&not_utf8)],
        78,
        &["latin1.toml", "UTF-8"],
    ));
    cases.push(Case::new(
        "run with a FIFO config",
        &["run", "--config", &s(&fifo_cfg)],
        78,
        &["config.fifo", "FIFO"],
    ));
    cases.push(Case::new(
        "status with /dev/zero config",
        &["status", "--config", "/dev/zero"],
        78,
        &["/dev/zero"],
    ));

    // Syntax and keys.
    cases.push(check("toml syntax", "interval = = 3\n", &["line 4"]));
    cases.push(check(
        "unknown key",
        "[prometheus]\nlisten_addr = \"127.0.0.1:1\"\n",
        &["listen_addr"],
    ));
    cases.push(check(
        "wrong type",
        "[cloudwatch]\nbuffer_periods = \"many\"\n",
        &["cloudwatch.buffer_periods"],
    ));
    cases.push(check(
        "negative count",
        "[cloudwatch]\nbuffer_periods = -1\n",
        &["cloudwatch.buffer_periods"],
    ));
    cases.push(check(
        "bad enum",
        "[drain]\non_spot = \"panic\"\n",
        &["drain.on_spot", "panic"],
    ));
    cases.push(check(
        "bad listen address",
        "[prometheus]\nlisten = \"localhost\"\n",
        &["prometheus.listen"],
    ));

    // Bounds, each naming the key and the range.
    for (name, body, key, range) in [
        (
            "interval 1ns",
            "interval = \"1ns\"\n",
            "agent.interval",
            "at least 1s and at most 1h",
        ),
        (
            "interval 0s",
            "interval = \"0s\"\n",
            "agent.interval",
            "at least 1s and at most 1h",
        ),
        (
            "interval 200000000000y",
            "interval = \"200000000000y\"\n",
            "agent.interval",
            "",
        ),
        (
            "interval 2h",
            "interval = \"2h\"\n",
            "agent.interval",
            "at least 1s and at most 1h",
        ),
        (
            "imds timeout 1ns",
            "[imds]\ntimeout = \"1ns\"\n",
            "imds.timeout",
            "at least 10ms and at most 30s",
        ),
        (
            "imds timeout above poll interval",
            "[imds]\ntimeout = \"5s\"\npoll_interval = \"1s\"\n",
            "imds.timeout",
            "imds.poll_interval",
        ),
        (
            "imds poll 1ns",
            "[imds]\npoll_interval = \"1ns\"\ntimeout = \"1ns\"\n",
            "imds.poll_interval",
            "at least 100ms and at most 1m",
        ),
        (
            "imds token ttl 7h",
            "[imds]\ntoken_ttl = \"7h\"\n",
            "imds.token_ttl",
            "at least 1s and at most 6h",
        ),
        (
            "docker resync 100y",
            "[host]\ndocker_resync_interval = \"100y\"\n",
            "host.docker_resync_interval",
            "at least 1s and at most 1day",
        ),
        (
            "drain check 0s",
            "[drain]\ncheck_interval = \"0s\"\n",
            "drain.check_interval",
            "at least 100ms and at most 10m",
        ),
        (
            "maintenance lead 1000y",
            "[drain]\nmaintenance_lead_time = \"1000y\"\n",
            "drain.maintenance_lead_time",
            "at least 0s and at most 28days",
        ),
        (
            "shutdown drain 100y",
            "[drain]\nshutdown_drain_timeout = \"100y\"\n",
            "drain.shutdown_drain_timeout",
            "at least 0s and at most 2h",
        ),
        (
            "buffer periods 0",
            "[cloudwatch]\nbuffer_periods = 0\n",
            "cloudwatch.buffer_periods",
            "from 1 to 10080",
        ),
        (
            "buffer periods huge",
            "[cloudwatch]\nbuffer_periods = 9223372036854775807\n",
            "cloudwatch.buffer_periods",
            "from 1 to 10080",
        ),
        (
            "reserved memory huge",
            "[host]\nreserved_memory_mib = 9223372036854775807\n",
            "host.reserved_memory_mib",
            "from 0 to 16777216",
        ),
        (
            "shape cpu huge",
            "[[capacity.task_shapes]]\nname = \"x\"\ncpu_units = 9223372036854775807\n",
            "capacity.task_shapes[0].cpu_units",
            "from 0 to 1048576",
        ),
        (
            "scale out threshold NaN",
            "[capacity]\nscale_out_threshold = nan\n",
            "capacity.scale_out_threshold",
            "above 0",
        ),
        (
            "scale out threshold inf",
            "[capacity]\nscale_out_threshold = inf\n",
            "capacity.scale_out_threshold",
            "above 0",
        ),
        (
            "non-loopback listen",
            "[prometheus]\nlisten = \"0.0.0.0:9779\"\n",
            "prometheus.listen",
            "prometheus.allow_non_loopback",
        ),
        (
            "bad instance id",
            "[drain]\ninstance_id = \"web-1\"\n",
            "drain.instance_id",
            "web-1",
        ),
        (
            "bad log filter",
            "[log]\nlevel = \"[[[\"\n",
            "log.level",
            "not a log filter",
        ),
        (
            "reserved namespace",
            "[cloudwatch]\nnamespace = \"AWS/ECS\"\n",
            "cloudwatch.namespace",
            "AWS/",
        ),
        (
            "sink twice",
            "[sinks]\nenabled = [\"stdout\", \"stdout\"]\n",
            "sinks.enabled",
            "twice",
        ),
        (
            "empty shape",
            "[[capacity.task_shapes]]\nname = \"x\"\n",
            "capacity.task_shapes[0]",
            "needs nothing",
        ),
    ] {
        let says: Vec<&str> = [key, range].into_iter().filter(|s| !s.is_empty()).collect();
        cases.push(check(name, body, &says));
    }

    // Values from the environment name the variable, list elements included.
    let (plain, _) = config_case(root, "env", "");
    let env_case = |name: &str, var: &str, value: &str, says: &[&str]| {
        Case::new(name, &["check-config", "--config", &s(&plain)], 78, says).env(var, value)
    };
    cases.push(env_case(
        "env interval 1ns",
        "ECS_CAPACITY_AGENT_AGENT_INTERVAL",
        "1ns",
        &[
            "ECS_CAPACITY_AGENT_AGENT_INTERVAL",
            "agent.interval",
            "at least 1s and at most 1h",
        ],
    ));
    cases.push(
        env_case(
            "env list element",
            "ECS_CAPACITY_AGENT_HOST_RESERVED_PORTS_UDP",
            "53,99999",
            &[
                "environment ECS_CAPACITY_AGENT_HOST_RESERVED_PORTS_UDP",
                "host.reserved_ports_udp[1]",
            ],
        )
        .not_says("file "),
    );
    cases.push(env_case(
        "env non-loopback listen",
        "ECS_CAPACITY_AGENT_PROMETHEUS_LISTEN",
        "0.0.0.0:9779",
        &[
            "ECS_CAPACITY_AGENT_PROMETHEUS_LISTEN",
            "prometheus.allow_non_loopback",
        ],
    ));
    cases.push(env_case(
        "env relative state dir",
        "ECS_CAPACITY_AGENT_AGENT_STATE_DIR",
        "state",
        &[
            "ECS_CAPACITY_AGENT_AGENT_STATE_DIR",
            "agent.state_dir",
            "absolute",
        ],
    ));
    cases.push(env_case(
        "env unknown variable",
        "ECS_CAPACITY_AGENT_PROMETHEUS_LISTN",
        "x",
        &["ECS_CAPACITY_AGENT_PROMETHEUS_LISTN"],
    ));
    cases.push(env_case(
        "env bad duration",
        "ECS_CAPACITY_AGENT_IMDS_TIMEOUT",
        "soon",
        &["ECS_CAPACITY_AGENT_IMDS_TIMEOUT", "imds.timeout"],
    ));
    cases.push(
        Case::new(
            "config named by ECS_CAPACITY_AGENT_CONFIG is a FIFO",
            &["check-config"],
            78,
            &["config.fifo", "FIFO"],
        )
        .env("ECS_CAPACITY_AGENT_CONFIG", &s(&fifo_cfg)),
    );

    // ecs.config.
    for (name, line, says) in [
        (
            "ECS_RESERVED_MEMORY huge",
            "ECS_RESERVED_MEMORY=18446744073709551615",
            &["ECS_RESERVED_MEMORY", "18446744073709551615", "line 1"][..],
        ),
        (
            "ECS_RESERVED_MEMORY negative",
            "ECS_RESERVED_MEMORY=-5",
            &["ECS_RESERVED_MEMORY", "-5"][..],
        ),
        (
            "ECS_RESERVED_PORTS not JSON",
            "ECS_RESERVED_PORTS=22,80",
            &["ECS_RESERVED_PORTS", "JSON array"][..],
        ),
        (
            "ECS_RESERVED_PORTS out of range",
            "ECS_RESERVED_PORTS=[70000]",
            &["ECS_RESERVED_PORTS", "70000"][..],
        ),
    ] {
        let (cfg, dir) = config_case(root, &name.replace(' ', "_"), "");
        std::fs::write(dir.join("ecs.config"), format!("{line}\n")).unwrap();
        let mut case = Case::new(name, &["check-config", "--config", &s(&cfg)], 78, says);
        if name.contains("huge") {
            case = case.not_says("-1");
        }
        cases.push(case);
    }
    let (cfg, dir) = config_case(root, "ecs_config_fifo", "");
    fifo(&dir.join("ecs.config"));
    cases.push(Case::new(
        "ecs.config is a FIFO",
        &["check-config", "--config", &s(&cfg)],
        78,
        &["ecs.config", "FIFO"],
    ));

    // The command line: one way to name the file; the positional alias; both at once is a usage error.
    cases.push(Case::new(
        "check-config --config FILE",
        &["check-config", "--config", &s(&plain)],
        0,
        &[],
    ));
    cases.push(
        Case::new(
            "check-config FILE wins over a bad ECS_CAPACITY_AGENT_CONFIG",
            &["check-config", &s(&plain)],
            0,
            &[],
        )
        .env("ECS_CAPACITY_AGENT_CONFIG", &s(&fifo_cfg)),
    );
    cases.push(Case::new(
        "check-config FILE wins over --config",
        &["check-config", "--config", &s(&fifo_cfg), "/dev/zero"],
        78,
        &["/dev/zero"],
    ));
    cases.push(Case::new(
        "check-config --config with a bad file",
        &["check-config", "-c", &s(&fifo_cfg)],
        78,
        &["config.fifo"],
    ));
    cases.push(Case::new(
        "drain with a bad config",
        &["drain", "--config", &s(&fifo_cfg)],
        78,
        &["config.fifo"],
    ));
    cases.push(Case::new(
        "activate with a bad config",
        &["activate", "--config", "/dev/zero"],
        78,
        &["/dev/zero"],
    ));
    cases
}

fn fixture(name: &str) -> String {
    s(&crate::support::repo_root()
        .join("tests/fixtures/cluster")
        .join(name))
}

fn cluster_cases(root: &Path) -> Vec<Case> {
    let dir = root.join("cluster");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        s(&p)
    };
    let instances = std::fs::read_to_string(fixture("container-instances.json")).unwrap();
    let web = std::fs::read_to_string(fixture("task-definition-web.json")).unwrap();
    let web_file = fixture("task-definition-web.json");
    let with_instances = |name: &str, file: &str, code: i32, says: &[&str]| {
        Case::new(
            name,
            &[
                "cluster",
                "--container-instances",
                file,
                "--task-definition",
                &web_file,
            ],
            code,
            says,
        )
    };
    let with_task_def = |name: &str, file: &str, code: i32, says: &[&str]| {
        Case::new(
            name,
            &[
                "cluster",
                "--container-instances",
                &fixture("container-instances.json"),
                "--task-definition",
                file,
            ],
            code,
            says,
        )
    };
    let mut cases = Vec::new();

    let fifo_file = s(&fifo(&dir.join("ci.fifo")));
    cases.push(with_instances(
        "instances FIFO",
        &fifo_file,
        66,
        &["ci.fifo", "FIFO"],
    ));
    cases.push(with_instances(
        "instances /dev/zero",
        "/dev/zero",
        66,
        &["/dev/zero", "character device"],
    ));
    cases.push(with_instances(
        "instances directory",
        &s(&dir),
        66,
        &["directory"],
    ));
    cases.push(with_instances(
        "instances missing",
        "/nonexistent/ci.json",
        66,
        &["/nonexistent/ci.json"],
    ));
    let huge = dir.join("huge.json");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(65 * 1024 * 1024)
        .unwrap();
    cases.push(with_instances(
        "instances above the size cap",
        &s(&huge),
        65,
        &["huge.json", "larger than"],
    ));
    let mut latin1 = instances.clone().into_bytes();
    let at = instances.find("ACTIVE").unwrap();
    latin1[at] = 0xC9;
    cases.push(with_instances(
        "instances not UTF-8",
        &write("latin1.json", &latin1),
        65,
        &["latin1.json", "UTF-8"],
    ));
    cases.push(with_instances(
        "instances two concatenated documents",
        &write("two.json", format!("{instances}{instances}").as_bytes()),
        65,
        &["two.json", "trailing"],
    ));
    cases.push(with_instances(
        "instances trailing garbage",
        &write("trailing.json", format!("{instances}\nx").as_bytes()),
        65,
        &["trailing.json", "trailing"],
    ));
    cases.push(with_instances(
        "instances empty",
        &write("empty.json", b""),
        65,
        &["empty.json"],
    ));
    cases.push(with_instances(
        "instances not JSON",
        &write("text.json", b"containerInstances: []"),
        65,
        &["text.json"],
    ));
    cases.push(with_instances(
        "instances wrong type",
        &write(
            "wrongtype.json",
            instances
                .replacen("\"integerValue\": 2048", "\"integerValue\": \"lots\"", 1)
                .as_bytes(),
        ),
        65,
        &[
            "wrongtype.json",
            "containerInstances[0].remainingResources[0].integerValue",
        ],
    ));
    cases.push(with_instances(
        "instances cpu near i64::MAX",
        &write(
            "cpumax.json",
            instances
                .replacen(
                    "\"integerValue\": 2048",
                    "\"integerValue\": 9223372036854775807",
                    1,
                )
                .as_bytes(),
        ),
        65,
        &[
            "cpumax.json",
            "containerInstances[0]",
            "remainingResources[0].integerValue (CPU)",
        ],
    ));
    cases.push(with_instances(
        "instances cpu above i64",
        &write(
            "cpuover.json",
            instances
                .replacen(
                    "\"integerValue\": 2048",
                    "\"integerValue\": 18446744073709551615",
                    1,
                )
                .as_bytes(),
        ),
        65,
        &[
            "cpuover.json",
            "containerInstances[0].remainingResources[0].integerValue",
        ],
    ));
    cases.push(with_instances(
        "instances negative cpu",
        &write(
            "cpuneg.json",
            instances
                .replacen("\"integerValue\": 2048", "\"integerValue\": -1", 1)
                .as_bytes(),
        ),
        65,
        &["cpuneg.json", "negative"],
    ));
    cases.push(with_instances(
        "instances port out of range",
        &write(
            "port.json",
            instances.replacen("\"2375\"", "\"99999\"", 1).as_bytes(),
        ),
        65,
        &["port.json", "99999"],
    ));

    cases.push(with_task_def(
        "task definition container cpu i64::MAX",
        &write(
            "td-cpumax.json",
            web.replacen("\"cpu\": 384", "\"cpu\": 9223372036854775807", 1)
                .as_bytes(),
        ),
        65,
        &[
            "td-cpumax.json",
            "taskDefinition.containerDefinitions[0].cpu",
        ],
    ));
    cases.push(with_task_def(
        "task definition containers summing past i64",
        &write(
            "td-sum.json",
            web.replacen("\"cpu\": 384", "\"cpu\": 1099511627776", 1)
                .replacen("\"cpu\": 128", "\"cpu\": 1099511627776", 1)
                .as_bytes(),
        ),
        65,
        &["td-sum.json", "containerDefinitions[*].cpu"],
    ));
    cases.push(with_task_def(
        "task definition memory i64::MAX",
        &write(
            "td-memmax.json",
            web.replacen("\"memory\": 768", "\"memory\": 9223372036854775807", 1)
                .as_bytes(),
        ),
        65,
        &[
            "td-memmax.json",
            "taskDefinition.containerDefinitions[0].memory",
        ],
    ));
    cases.push(with_task_def(
        "task definition task cpu absurd vCPU",
        &write(
            "td-vcpu.json",
            web.replacen(
                "\"containerDefinitions\"",
                "\"cpu\": \"1e30 vCPU\", \"containerDefinitions\"",
                1,
            )
            .as_bytes(),
        ),
        65,
        &["td-vcpu.json", "taskDefinition.cpu"],
    ));
    cases.push(with_task_def(
        "task definition trailing document",
        &write("td-two.json", format!("{web}{web}").as_bytes()),
        65,
        &["td-two.json", "trailing"],
    ));
    cases.push(with_task_def(
        "task definition FIFO",
        &s(&fifo(&dir.join("td.fifo"))),
        66,
        &["td.fifo", "FIFO"],
    ));
    cases.push(with_task_def(
        "task definition negative memory",
        &write(
            "td-neg.json",
            web.replacen("\"memory\": 768", "\"memory\": -768", 1)
                .as_bytes(),
        ),
        65,
        &["td-neg.json", "negative"],
    ));
    cases.push(with_task_def(
        "task definition host port out of range",
        &write(
            "td-port.json",
            web.replacen("\"hostPort\": 80", "\"hostPort\": 70000", 1)
                .as_bytes(),
        ),
        65,
        &["td-port.json", "70000"],
    ));
    let both = |name: &str, flag: &str, file: &str, code: i32, says: &[&str]| {
        Case::new(
            name,
            &[
                "cluster",
                "--container-instances",
                &fixture("container-instances.json"),
                "--task-definition",
                &web_file,
                flag,
                file,
            ],
            code,
            says,
        )
    };
    cases.push(both(
        "instance types /dev/zero",
        "--instance-types",
        "/dev/zero",
        66,
        &["/dev/zero"],
    ));
    cases.push(both(
        "instance types trailing",
        "--instance-types",
        &write(
            "types-two.json",
            format!(
                "{0}{0}",
                std::fs::read_to_string(fixture("instance-types.json")).unwrap()
            )
            .as_bytes(),
        ),
        65,
        &["types-two.json", "trailing"],
    ));
    cases.push(both(
        "tasks FIFO",
        "--tasks",
        &s(&fifo(&dir.join("tasks.fifo"))),
        66,
        &["tasks.fifo"],
    ));
    cases.push(both(
        "tasks not UTF-8",
        "--tasks",
        &write("tasks-latin1.json", b"{\"tasks\": [\"\xff\"]}"),
        65,
        &["tasks-latin1.json", "UTF-8"],
    ));
    cases.push(Case::new(
        "threshold NaN",
        &[
            "cluster",
            "--container-instances",
            &fixture("container-instances.json"),
            "--task-definition",
            &web_file,
            "--scale-out-threshold",
            "NaN",
        ],
        65,
        &["--scale-out-threshold"],
    ));
    cases
}

fn state_cases(root: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let status = |name: &str, dir_name: &str, state: Option<&[u8]>, code: i32, says: &[&str]| {
        let (cfg, dir) = config_case(root, dir_name, "aws = \"off\"\n");
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&state_dir).unwrap();
        if let Some(bytes) = state {
            std::fs::write(state_dir.join("drain.json"), bytes).unwrap();
        }
        Case::new(
            name,
            &["status", "--output", "json", "--config", &s(&cfg)],
            code,
            says,
        )
    };
    cases.push(status(
        "state not JSON",
        "state_garbage",
        Some(b"{not json"),
        65,
        &["drain.json", "not valid"],
    ));
    cases.push(status(
        "state empty",
        "state_empty",
        Some(b""),
        65,
        &["drain.json"],
    ));
    cases.push(status(
        "state of another version",
        "state_version",
        Some(br#"{"version": 99, "updated_at": {"secs_since_epoch": 0, "nanos_since_epoch": 0}, "state": {}}"#),
        65,
        &["drain.json"],
    ));
    cases.push(status(
        "state not UTF-8",
        "state_latin1",
        Some(b"{\"version\": 1, \"x\": \"\xff\"}"),
        65,
        &["drain.json", "UTF-8"],
    ));
    let (cfg, dir) = config_case(root, "state_fifo", "aws = \"off\"\n");
    std::fs::create_dir_all(dir.join("state")).unwrap();
    fifo(&dir.join("state/drain.json"));
    cases.push(Case::new(
        "state is a FIFO",
        &["status", "--output", "json", "--config", &s(&cfg)],
        66,
        &["drain.json", "FIFO"],
    ));
    let (cfg, dir) = config_case(root, "state_is_dir", "aws = \"off\"\n");
    std::fs::create_dir_all(dir.join("state/drain.json")).unwrap();
    cases.push(Case::new(
        "state is a directory",
        &["status", "--output", "json", "--config", &s(&cfg)],
        66,
        &["drain.json", "directory"],
    ));
    cases
}

#[test]
fn bad_inputs_end_with_a_clear_error_never_a_panic_or_a_hang() {
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut tally = Tally::default();
    let mut cases = configuration_cases(root.path());
    cases.extend(cluster_cases(root.path()));
    cases.extend(state_cases(root.path()));
    for case in &cases {
        run_case(case, &mut tally, out.path());
    }

    // `status` on a state directory that does not exist: no drain, no error, and nothing created.
    tally.tried += 1;
    let (cfg, dir) = config_case(root.path(), "state_absent", "aws = \"off\"\n");
    let before = dir.join("state").exists();
    let mut child = agent()
        .args(["status", "--output", "json", "--config", &s(&cfg)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    match wait_bounded(&mut child, CASE_LIMIT) {
        None => tally.hangs.push("status without a state dir".into()),
        Some(status) => {
            let mut stderr = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            if stderr.contains("panicked") {
                tally
                    .panics
                    .push(format!("status without a state dir: {stderr}"));
            } else if !status.success() || before || dir.join("state").exists() {
                tally.unclear.push(format!(
                    "status without a state dir: exit {status}, state dir created: {}; {stderr}",
                    dir.join("state").exists()
                ));
            }
        }
    }

    http_abuse(root.path(), &mut tally);
    tally.assert_clean();
}

/// Sends `request` on a fresh connection and reads what comes back until the server closes it or
/// `limit` passes. Returns the bytes read and whether the server closed the connection.
fn exchange(addr: &str, request: &[u8], limit: Duration) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    // A server that closes early makes the rest of a large write fail: that is an answer too.
    let _ = stream.write_all(request);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => return (got, false),
        }
        if start.elapsed() > limit {
            return (got, false);
        }
    }
}

fn status_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn http_abuse(root: &Path, tally: &mut Tally) {
    let dir = root.join("http");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = config_file(
        &dir,
        "interval = \"1s\"\naws = \"off\"\n[prometheus]\nlisten = \"127.0.0.1:0\"\n[sinks]\nenabled = [\"prometheus\"]\n[log]\nformat = \"json\"\n",
    );
    let log_path = dir.join("daemon.log");
    let mut child = agent()
        .args(["run", "--config", &s(&cfg)])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let start = Instant::now();
    let addr = loop {
        let found = log().lines().find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()?
                .get("addr")?
                .as_str()
                .map(str::to_string)
        });
        if let Some(a) = found {
            break a;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "daemon never logged its address: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    // (name, request, time limit, check on (bytes, closed)) — each one a connection of its own.
    type Check = fn(&[u8], bool) -> Result<(), String>;
    let cases: Vec<(&str, Vec<u8>, Duration, Check)> = vec![
        (
            "h2c prior knowledge",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            Duration::from_secs(10),
            |got, closed| {
                let line = status_line(got);
                // An HTTP/2 server would answer with a SETTINGS frame, not an HTTP/1 status line.
                let refused = line.starts_with("HTTP/1.1 4") || line.starts_with("HTTP/1.1 5");
                if closed && (got.is_empty() || refused) {
                    Ok(())
                } else {
                    Err(format!("answered {line:?}, closed {closed}"))
                }
            },
        ),
        (
            "h2c upgrade",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n".to_vec(),
            Duration::from_secs(10),
            |got, _| {
                let line = status_line(got);
                if line.starts_with("HTTP/1.1 200") || line.starts_with("HTTP/1.1 503") {
                    Ok(())
                } else {
                    Err(format!("answered {line:?} (no 101 switch expected)"))
                }
            },
        ),
        (
            "declared 10 MB body",
            {
                let mut r = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n".to_vec();
                r.extend(std::iter::repeat_n(b'a', 64 * 1024));
                r
            },
            Duration::from_secs(10),
            |got, _| {
                let line = status_line(got);
                if line.starts_with("HTTP/1.1 413") {
                    Ok(())
                } else {
                    Err(format!("answered {line:?}"))
                }
            },
        ),
        (
            "chunked body",
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\naaaaaaaaaaaaaaaa\r\n".to_vec(),
            Duration::from_secs(10),
            |got, _| {
                let line = status_line(got);
                if line.starts_with("HTTP/1.1 413") {
                    Ok(())
                } else {
                    Err(format!("answered {line:?}"))
                }
            },
        ),
        (
            "100 KB header",
            format!(
                "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(100 * 1024)
            )
            .into_bytes(),
            Duration::from_secs(10),
            |got, closed| {
                let line = status_line(got);
                if line.starts_with("HTTP/1.1 431") || (closed && got.is_empty()) {
                    Ok(())
                } else {
                    Err(format!("answered {line:?}, closed {closed}"))
                }
            },
        ),
        (
            "10,000 headers",
            {
                let mut r = b"GET /metrics HTTP/1.1\r\nHost: x\r\n".to_vec();
                for i in 0..10_000 {
                    r.extend(format!("X-{i}: y\r\n").bytes());
                }
                r.extend(b"\r\n");
                r
            },
            Duration::from_secs(10),
            |got, closed| {
                let line = status_line(got);
                if line.starts_with("HTTP/1.1 431") || (closed && got.is_empty()) {
                    Ok(())
                } else {
                    Err(format!("answered {line:?}, closed {closed}"))
                }
            },
        ),
        (
            "slow head (never finished)",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec(),
            Duration::from_secs(12),
            |got, closed| {
                if closed {
                    Ok(())
                } else {
                    Err(format!("still open after 12 s: {:?}", status_line(got)))
                }
            },
        ),
        (
            "silent connection",
            Vec::new(),
            Duration::from_secs(12),
            |_, closed| {
                if closed {
                    Ok(())
                } else {
                    Err("still open after 12 s".into())
                }
            },
        ),
        (
            "garbage request line",
            b"\x00\x01\x02 not http at all\r\n\r\n".to_vec(),
            Duration::from_secs(10),
            |got, closed| {
                let line = status_line(got);
                if closed && (got.is_empty() || line.starts_with("HTTP/1.1 4")) {
                    Ok(())
                } else {
                    Err(format!("answered {line:?}, closed {closed}"))
                }
            },
        ),
        (
            "unknown path",
            b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            Duration::from_secs(10),
            |got, _| {
                let line = status_line(got);
                if line.starts_with("HTTP/1.1 404") {
                    Ok(())
                } else {
                    Err(format!("answered {line:?}"))
                }
            },
        ),
    ];
    // Run the slow ones side by side: each holds its connection for up to its limit.
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(name, request, limit, check)| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let (got, closed) = exchange(&addr, &request, limit);
                (name, started.elapsed(), limit, check(&got, closed))
            })
        })
        .collect();
    for h in handles {
        let (name, took, limit, verdict) = h.join().unwrap();
        tally.tried += 1;
        if let Err(why) = verdict {
            if took >= limit {
                tally.hangs.push(format!("HTTP {name}: {why}"));
            } else {
                tally.unclear.push(format!("HTTP {name}: {why}"));
            }
        }
    }

    // Still serving, and no panic in its log.
    tally.tried += 1;
    let (got, _) = exchange(
        &addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    if !status_line(&got).starts_with("HTTP/1.1 200") {
        tally
            .unclear
            .push(format!("healthz after the abuse: {:?}", status_line(&got)));
    }
    sigterm(&child);
    if wait_bounded(&mut child, Duration::from_secs(10)).is_none() {
        tally.hangs.push("daemon did not stop on SIGTERM".into());
    }
    if log().contains("panicked") {
        tally.panics.push(format!("daemon log: {}", log()));
    }
}

//! The whole scaling loop, simulated minute by minute: the real capacity model and the real
//! protection / volunteer core on every host, the alarms and scaling policies with the parameters
//! read from `deploy/capacity-alarms.yaml` itself (so this test breaks when the template drifts),
//! a simple model of ECS placement (binpack and spread) and of instance boot and drain.
//!
//! Model (one step per minute, CloudWatch's 60 s period):
//! - a launched instance is InService 2 minutes after launch (the launch activity completes), its
//!   ECS agent registers and the capacity agent publishes from minute 3;
//! - one service of 256-CPU / 512-MiB tasks plus one 128 / 256 daemon task per host, on hosts of
//!   2048 CPU units / 3840 MiB (7 service tasks per host); the service scheduler places missing
//!   tasks each minute (binpack: the fullest host that fits; spread: the host with the fewest), and
//!   stops surplus ones (binpack: from the emptiest host; spread: from the fullest);
//! - a terminating host drains: each minute its tasks are started elsewhere and then stopped
//!   there; it is gone once empty (or after the 15-minute hook timeout);
//! - each host publishes one datum per minute: its spare tasks, idle fraction (0 while draining)
//!   and RemovableHosts; the alarms see the Sums one period late and invoke their policy every
//!   minute they are in ALARM; a simple policy ignores invocations while an activity is in
//!   progress or its cooldown runs (step policies are modelled as answering every invocation);
//! - Auto Scaling terminates only unprotected InService instances (a seeded random pick among
//!   them, standing in for the termination policy); with all protected, the lowered desired
//!   capacity waits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use ecs_capacity_agent::capacity::{self, HostInput, Quantity, TaskShape};
use ecs_capacity_agent::config::ScaleInConfig;
use ecs_capacity_agent::protection::volunteer::{View, ViewHost, judge};
use ecs_capacity_agent::protection::{Observation, Protection, Settings};

use crate::support::cfn::{Node, Template};

const HOST_CPU: u64 = 2048;
const HOST_MEM: u64 = 3840;
const DAEMON: (u64, u64) = (128, 256);
const WEB: (u64, u64) = (256, 512);
const WEB_PER_HOST: u32 = 7;
const MINUTES_TO_IN_SERVICE: u32 = 2;
const MINUTES_TO_REGISTERED: u32 = 3;
const HOOK_TIMEOUT_MINUTES: u32 = 15;
const MIN_SIZE: i64 = 1;
const MAX_SIZE: i64 = 30;

// ---------------------------------------------------------------------------------------------
// The template: policies and alarms.

#[derive(Debug, Clone, Copy, PartialEq)]
struct Policy {
    simple: bool,
    adjustment: i64,
    cooldown_minutes: u32,
}

#[derive(Debug, Clone)]
struct Alarm {
    /// Metric-query id → metric name (Sum over {ClusterName}).
    inputs: Vec<(String, String)>,
    expr: Expr,
    threshold: f64,
    above: bool,
    evaluation_periods: usize,
    datapoints_to_alarm: usize,
    missing_breaching: bool,
    policy: String,
}

#[derive(Debug, Clone)]
struct Deploy {
    scale_out: Policy,
    scale_in: Policy,
    out_alarm: Alarm,
    in_alarm: Alarm,
}

fn policy(t: &Template, name: &str) -> Policy {
    assert_eq!(t.text(name, "AdjustmentType"), "ChangeInCapacity", "{name}");
    match t.text(name, "PolicyType").as_str() {
        "SimpleScaling" => Policy {
            simple: true,
            adjustment: t.number(name, "ScalingAdjustment") as i64,
            cooldown_minutes: (t.number(name, "Cooldown") / 60.0).ceil() as u32,
        },
        "StepScaling" => {
            let steps = t.resource(name).get("StepAdjustments").expect("steps");
            let first = &steps.as_list()[0];
            Policy {
                simple: false,
                adjustment: t
                    .resolve(first.get("ScalingAdjustment").expect("adjustment"))
                    .parse()
                    .expect("a number"),
                cooldown_minutes: 0,
            }
        }
        other => panic!("{name}: policy type {other} is not modelled"),
    }
}

fn alarm(t: &Template, name: &str) -> Alarm {
    let r = t.resource(name);
    let (inputs, expr) = match r.get("Metrics") {
        None => {
            assert_eq!(t.text(name, "Statistic"), "Sum", "{name}");
            assert_eq!(t.number(name, "Period"), 60.0, "{name}");
            let metric = t.text(name, "MetricName");
            (vec![("m".to_string(), metric)], Expr::Var("m".into()))
        }
        Some(queries) => {
            let mut inputs = Vec::new();
            let mut expr = None;
            for q in queries.as_list() {
                let id = t.resolve(q.get("Id").expect("Id"));
                if let Some(stat) = q.get("MetricStat") {
                    assert_eq!(
                        stat.get("Stat").and_then(Node::as_str),
                        Some("Sum"),
                        "{name}"
                    );
                    assert_eq!(
                        t.resolve(stat.get("Period").expect("Period")),
                        "60",
                        "{name}: the Period parameter's default"
                    );
                    let metric = stat.path("Metric.MetricName").expect("MetricName");
                    inputs.push((id, t.resolve(metric)));
                } else if q.get("ReturnData").and_then(Node::as_str) == Some("true") {
                    expr = Some(Expr::parse(&t.resolve(q.get("Expression").expect("expr"))));
                }
            }
            (inputs, expr.expect("the expression the alarm watches"))
        }
    };
    let op = t.text(name, "ComparisonOperator");
    let above = match op.as_str() {
        "GreaterThanThreshold" => true,
        "LessThanThreshold" => false,
        other => panic!("{name}: comparison {other} is not modelled"),
    };
    let actions = r.get("AlarmActions").expect("AlarmActions").as_list();
    assert_eq!(actions.len(), 1, "{name}: one action");
    let policy = actions[0]
        .as_str()
        .and_then(|a| a.strip_prefix("!Ref "))
        .expect("!Ref to a policy")
        .to_string();
    Alarm {
        inputs,
        expr,
        threshold: t.number(name, "Threshold"),
        above,
        evaluation_periods: t.number(name, "EvaluationPeriods") as usize,
        datapoints_to_alarm: t.number(name, "DatapointsToAlarm") as usize,
        missing_breaching: t.text(name, "TreatMissingData") == "breaching",
        policy,
    }
}

fn deploy() -> Deploy {
    let t = Template::read(&crate::support::repo_root().join("deploy/capacity-alarms.yaml"));
    let d = Deploy {
        scale_out: policy(&t, "ScaleOutPolicy"),
        scale_in: policy(&t, "ScaleInPolicy"),
        out_alarm: alarm(&t, "ScaleOutAlarm"),
        in_alarm: alarm(&t, "ScaleInAlarm"),
    };
    assert_eq!(d.out_alarm.policy, "ScaleOutPolicy");
    assert_eq!(d.in_alarm.policy, "ScaleInPolicy");
    d
}

// ---------------------------------------------------------------------------------------------
// Metric math: the subset the alarms use (IF, AND, OR, FILL, comparisons, numbers, ids).

#[derive(Debug, Clone)]
enum Expr {
    Num(f64),
    Var(String),
    If(Box<Expr>, Box<Expr>, Box<Expr>),
    Fill(Box<Expr>, f64),
    Bin(String, Box<Expr>, Box<Expr>),
}

impl Expr {
    fn parse(text: &str) -> Expr {
        let tokens = tokenize(text);
        let mut at = 0;
        let e = or(&tokens, &mut at);
        assert_eq!(
            at,
            tokens.len(),
            "metric math {text:?}: trailing {:?}",
            &tokens[at..]
        );
        e
    }

    /// `None` = no datapoint (missing propagates, as in metric math).
    fn eval(&self, vars: &BTreeMap<String, Option<f64>>) -> Option<f64> {
        let b = |x: bool| if x { 1.0 } else { 0.0 };
        match self {
            Expr::Num(n) => Some(*n),
            Expr::Var(v) => *vars
                .get(v)
                .unwrap_or_else(|| panic!("metric math: unknown id {v}")),
            Expr::If(c, a, z) => {
                if c.eval(vars)? != 0.0 {
                    a.eval(vars)
                } else {
                    z.eval(vars)
                }
            }
            Expr::Fill(e, v) => Some(e.eval(vars).unwrap_or(*v)),
            Expr::Bin(op, l, r) => {
                let (l, r) = (l.eval(vars)?, r.eval(vars)?);
                Some(match op.as_str() {
                    ">" => b(l > r),
                    "<" => b(l < r),
                    ">=" => b(l >= r),
                    "<=" => b(l <= r),
                    "==" => b(l == r),
                    "AND" | "&&" => b(l != 0.0 && r != 0.0),
                    "OR" | "||" => b(l != 0.0 || r != 0.0),
                    other => panic!("metric math: operator {other}"),
                })
            }
        }
    }
}

fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' || c == '.' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if i + 1 < chars.len()
            && matches!(
                (c, chars[i + 1]),
                ('>' | '<' | '=' | '!', '=') | ('&', '&') | ('|', '|')
            )
        {
            out.push(chars[i..i + 2].iter().collect());
            i += 2;
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

fn expect(tokens: &[String], at: &mut usize, what: &str) {
    assert_eq!(
        tokens.get(*at).map(String::as_str),
        Some(what),
        "metric math at {at}"
    );
    *at += 1;
}

fn or(t: &[String], at: &mut usize) -> Expr {
    let mut l = and(t, at);
    while matches!(t.get(*at).map(String::as_str), Some("OR" | "||")) {
        *at += 1;
        l = Expr::Bin("OR".into(), Box::new(l), Box::new(and(t, at)));
    }
    l
}

fn and(t: &[String], at: &mut usize) -> Expr {
    let mut l = cmp(t, at);
    while matches!(t.get(*at).map(String::as_str), Some("AND" | "&&")) {
        *at += 1;
        l = Expr::Bin("AND".into(), Box::new(l), Box::new(cmp(t, at)));
    }
    l
}

fn cmp(t: &[String], at: &mut usize) -> Expr {
    let l = primary(t, at);
    match t.get(*at).map(String::as_str) {
        Some(op @ (">" | "<" | ">=" | "<=" | "==")) => {
            let op = op.to_string();
            *at += 1;
            Expr::Bin(op, Box::new(l), Box::new(primary(t, at)))
        }
        _ => l,
    }
}

fn primary(t: &[String], at: &mut usize) -> Expr {
    let tok = t.get(*at).cloned().expect("metric math: unexpected end");
    *at += 1;
    match tok.as_str() {
        "(" => {
            let e = or(t, at);
            expect(t, at, ")");
            e
        }
        "IF" => {
            expect(t, at, "(");
            let c = or(t, at);
            expect(t, at, ",");
            let a = or(t, at);
            expect(t, at, ",");
            let z = or(t, at);
            expect(t, at, ")");
            Expr::If(Box::new(c), Box::new(a), Box::new(z))
        }
        "FILL" => {
            expect(t, at, "(");
            let e = or(t, at);
            expect(t, at, ",");
            let Expr::Num(v) = primary(t, at) else {
                panic!("FILL with a number only is modelled")
            };
            expect(t, at, ")");
            Expr::Fill(Box::new(e), v)
        }
        _ => match tok.parse::<f64>() {
            Ok(n) => Expr::Num(n),
            Err(_) => Expr::Var(tok),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Pending,
    InService,
    Terminating { since: u32 },
    Gone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Binpack,
    Spread,
}

struct Host {
    id: String,
    launched: u32,
    /// The ECS agent has registered it; the capacity agent publishes.
    registered_at: u32,
    life: Life,
    web: u32,
    protected: bool,
    removable: bool,
    core: Protection,
    /// The minute of the cooldown its launch or termination starts when it completes.
    cooldown_after: u32,
    view_offset: u32,
}

impl Host {
    fn registered(&self, t: u32) -> bool {
        t >= self.registered_at && self.life != Life::Gone
    }

    fn active(&self, t: u32) -> bool {
        self.registered(t) && self.life == Life::InService
    }

    fn input(&self) -> HostInput {
        HostInput {
            name: self.id.clone(),
            cpu_units: Quantity::new(HOST_CPU, DAEMON.0 + WEB.0 * u64::from(self.web)),
            memory_mib: Quantity::new(HOST_MEM, DAEMON.1 + WEB.1 * u64::from(self.web)),
            ..HostInput::default()
        }
    }
}

fn web_shape() -> TaskShape {
    TaskShape {
        name: "web".into(),
        cpu_units: WEB.0,
        memory_mib: WEB.1,
        ..TaskShape::default()
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Datapoint {
    container_capacity: Option<f64>,
    idle_host_capacity: Option<f64>,
    removable_hosts: Option<f64>,
}

#[derive(Debug, Clone)]
struct Removal {
    t: u32,
    id: String,
    busy: bool,
    /// Other InService, registered hosts running no service task when the victim was picked.
    idle_others: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Out,
    In,
}

struct Sim {
    deploy: Deploy,
    /// The agents manage their scale-in protection (else every host is unprotected and counts as
    /// removable: the agent before managed protection).
    managed: bool,
    /// A table line every this many minutes.
    every: u32,
    settings: Settings,
    view_every: u32,
    placement: Placement,
    hosts: Vec<Host>,
    desired: i64,
    cooldown_until: u32,
    history: Vec<Datapoint>,
    rng: u64,
    next_id: u32,
    removals: Vec<Removal>,
    /// Desired-capacity changes made by a policy.
    scalings: Vec<(u32, Direction)>,
    /// Service tasks wanted but not running, per minute.
    unplaced: Vec<u32>,
    lines: Vec<String>,
}

impl Sim {
    fn new(deploy: Deploy, placement: Placement, hosts: u32, tasks: u32) -> Sim {
        let cfg = ScaleInConfig::default();
        let mut sim = Sim {
            deploy,
            managed: true,
            every: 10,
            settings: Settings::from_config(&cfg),
            view_every: (cfg.view_interval.as_secs() / 60) as u32,
            placement,
            hosts: Vec::new(),
            desired: i64::from(hosts),
            cooldown_until: 0,
            history: Vec::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
            next_id: 0,
            removals: Vec::new(),
            scalings: Vec::new(),
            unplaced: Vec::new(),
            lines: Vec::new(),
        };
        // The hosts the simulation starts with: InService and registered at minute 0.
        for _ in 0..hosts {
            sim.launch(0, 0);
            let h = sim.hosts.last_mut().expect("just launched");
            h.life = Life::InService;
            h.registered_at = 0;
        }
        sim.initial_tasks(tasks);
        sim
    }

    fn initial_tasks(&mut self, tasks: u32) {
        for _ in 0..tasks {
            let i = self.pick_for_placement(0, None).expect("initial tasks fit");
            self.hosts[i].web += 1;
        }
    }

    fn launch(&mut self, t: u32, cooldown: u32) {
        self.next_id += 1;
        let id = format!("i-{:04}", self.next_id);
        self.hosts.push(Host {
            view_offset: self.next_id % self.view_every.max(1),
            id,
            launched: t,
            registered_at: t + MINUTES_TO_REGISTERED,
            life: Life::Pending,
            web: 0,
            protected: false,
            removable: false,
            core: Protection::new(self.settings, minutes(t)),
            cooldown_after: cooldown,
        });
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Where ECS would start one service task (never on `except`).
    fn pick_for_placement(&self, t: u32, except: Option<usize>) -> Option<usize> {
        let shape = web_shape();
        let fits = |i: usize| {
            let h = &self.hosts[i];
            h.active(t)
                && Some(i) != except
                && capacity::fits(&h.input(), &shape).is_some_and(|n| n >= 1)
        };
        let candidates = (0..self.hosts.len()).filter(|&i| fits(i));
        match self.placement {
            // binpack on memory: the least remaining memory that fits, then the lowest index.
            Placement::Binpack => candidates.max_by_key(|&i| (self.hosts[i].web, usize::MAX - i)),
            Placement::Spread => candidates.min_by_key(|&i| (self.hosts[i].web, i)),
        }
    }

    fn step(&mut self, t: u32, demand: u32) {
        // 1. Launches complete; drains end.
        for h in &mut self.hosts {
            if h.life == Life::Pending && t >= h.launched + MINUTES_TO_IN_SERVICE {
                h.life = Life::InService;
                self.cooldown_until = self.cooldown_until.max(t + h.cooldown_after);
            }
        }
        // 2. The service scheduler: replace tasks of draining hosts, then meet the desired count.
        for i in 0..self.hosts.len() {
            if let Life::Terminating { since } = self.hosts[i].life {
                while self.hosts[i].web > 0 {
                    match self.pick_for_placement(t, Some(i)) {
                        Some(j) => {
                            self.hosts[j].web += 1;
                            self.hosts[i].web -= 1;
                        }
                        None => break,
                    }
                }
                if t >= since + HOOK_TIMEOUT_MINUTES {
                    self.hosts[i].web = 0;
                }
            }
        }
        let running: u32 = self.hosts.iter().map(|h| h.web).sum();
        if running < demand {
            for _ in running..demand {
                match self.pick_for_placement(t, None) {
                    Some(j) => self.hosts[j].web += 1,
                    None => break,
                }
            }
        } else {
            for _ in demand..running {
                let from = (0..self.hosts.len()).filter(|&i| self.hosts[i].web > 0);
                let from = match self.placement {
                    Placement::Binpack => from.min_by_key(|&i| (self.hosts[i].web, i)),
                    Placement::Spread => from.max_by_key(|&i| (self.hosts[i].web, usize::MAX - i)),
                };
                if let Some(i) = from {
                    self.hosts[i].web -= 1;
                }
            }
        }
        let running: u32 = self.hosts.iter().map(|h| h.web).sum();
        self.unplaced.push(demand.saturating_sub(running));
        for h in &mut self.hosts {
            if matches!(h.life, Life::Terminating { .. }) && h.web == 0 {
                h.life = Life::Gone;
                self.cooldown_until = self.cooldown_until.max(t + h.cooldown_after);
            }
        }

        // 3. Every host's agent: the real protection core, and the cluster view on its schedule.
        let view: Vec<ViewHost> = self
            .hosts
            .iter()
            .filter(|h| h.active(t))
            .map(|h| ViewHost {
                instance_id: h.id.clone(),
                input: h.input(),
                tasks: u64::from(h.web) + 1,
                in_service: true,
                protected: h.protected,
            })
            .collect();
        let shapes = [web_shape()];
        for h in self.hosts.iter_mut().filter(|h| h.registered(t)) {
            let draining = matches!(h.life, Life::Terminating { .. });
            let busy = h.web > 0;
            if busy && !draining && (t + h.view_offset).is_multiple_of(self.view_every) {
                let mine = vec![web_shape(); h.web as usize];
                let verdict = judge(&View {
                    me: &h.id,
                    hosts: &view,
                    my_tasks: &mine,
                    shapes: &shapes,
                    scale_out_threshold: 1.0,
                    daemon_tasks: 1,
                });
                h.core.on_verdict(minutes(t), &verdict);
            }
            if !self.managed {
                h.removable = !draining;
                continue;
            }
            let d = h.core.decide(Observation {
                at: minutes(t),
                busy: Some(busy),
                draining,
            });
            if let Some(p) = d.protect {
                h.protected = p;
            }
            h.removable = d.removable && !h.protected;
        }

        // 4. One datum per publishing host, summed as CloudWatch's Sum does.
        let publishing: Vec<&Host> = self.hosts.iter().filter(|h| h.registered(t)).collect();
        let point = if publishing.is_empty() {
            Datapoint::default()
        } else {
            let serving: Vec<HostInput> = publishing
                .iter()
                .filter(|h| h.life == Life::InService)
                .map(|h| h.input())
                .collect();
            let c = capacity::compute(&serving, &shapes, 1.0);
            Datapoint {
                container_capacity: Some(c.container_capacity as f64),
                idle_host_capacity: Some(c.idle_host_capacity_conservative),
                removable_hosts: Some(publishing.iter().filter(|h| h.removable).count() as f64),
            }
        };
        self.history.push(point);

        // 5. The alarms see the Sums one period late; in ALARM they invoke their policy each minute.
        let out = self.alarm_state(&self.deploy.out_alarm.clone());
        let inn = self.alarm_state(&self.deploy.in_alarm.clone());
        if out {
            self.invoke(t, self.deploy.scale_out, Direction::Out);
        }
        if inn {
            self.invoke(t, self.deploy.scale_in, Direction::In);
        }

        // 6. Auto Scaling moves the group towards the desired capacity.
        let serving: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| matches!(self.hosts[i].life, Life::Pending | Life::InService))
            .collect();
        let count = serving.len() as i64;
        if count < self.desired {
            for _ in count..self.desired {
                self.launch(t, self.deploy.scale_out.cooldown_minutes);
            }
        } else if count > self.desired {
            for _ in self.desired..count {
                let candidates: Vec<usize> = serving
                    .iter()
                    .copied()
                    .filter(|&i| self.hosts[i].life == Life::InService && !self.hosts[i].protected)
                    .collect();
                if candidates.is_empty() {
                    break;
                }
                let victim = candidates[(self.rand() % candidates.len() as u64) as usize];
                let idle_others = self
                    .hosts
                    .iter()
                    .enumerate()
                    .filter(|&(i, h)| i != victim && h.active(t) && h.web == 0)
                    .map(|(_, h)| h.id.clone())
                    .collect();
                let h = &mut self.hosts[victim];
                self.removals.push(Removal {
                    t,
                    id: h.id.clone(),
                    busy: h.web > 0,
                    idle_others,
                });
                h.life = Life::Terminating { since: t };
                h.cooldown_after = self.deploy.scale_in.cooldown_minutes;
            }
        }

        if t.is_multiple_of(self.every) {
            let p = self.history.last().copied().unwrap_or_default();
            let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
            self.lines.push(format!(
                "{t:>5} {demand:>6} {running:>7} {:>5} {:>8} {:>9} {:>8} {:>8} {:>9} {:>4} {:>4}",
                self.in_service(),
                self.hosts
                    .iter()
                    .filter(|h| matches!(h.life, Life::Terminating { .. }))
                    .count(),
                f(p.removable_hosts),
                f(p.container_capacity),
                f(p.idle_host_capacity),
                self.desired,
                if out { "OUT" } else { "" },
                if inn { "IN" } else { "" },
            ));
        }
    }

    fn in_service(&self) -> usize {
        self.hosts
            .iter()
            .filter(|h| h.life == Life::InService)
            .count()
    }

    fn alarm_state(&self, a: &Alarm) -> bool {
        let seen = &self.history[..self.history.len().saturating_sub(1)];
        // Before the simulation there is no history (not missing data): wait for a full window.
        if seen.len() < a.evaluation_periods {
            return false;
        }
        let mut breaching = 0;
        for p in &seen[seen.len() - a.evaluation_periods..] {
            let vars: BTreeMap<String, Option<f64>> = a
                .inputs
                .iter()
                .map(|(id, metric)| {
                    let v = match metric.as_str() {
                        "ContainerCapacity" => p.container_capacity,
                        "IdleHostCapacity" => p.idle_host_capacity,
                        "RemovableHosts" => p.removable_hosts,
                        other => panic!("metric {other} is not simulated"),
                    };
                    (id.clone(), v)
                })
                .collect();
            match a.expr.eval(&vars) {
                Some(v) => {
                    let breach = if a.above {
                        v > a.threshold
                    } else {
                        v < a.threshold
                    };
                    breaching += usize::from(breach);
                }
                None => breaching += usize::from(a.missing_breaching),
            }
        }
        breaching >= a.datapoints_to_alarm
    }

    fn invoke(&mut self, t: u32, p: Policy, dir: Direction) {
        if p.simple {
            let in_progress = self
                .hosts
                .iter()
                .any(|h| matches!(h.life, Life::Pending | Life::Terminating { .. }))
                || self.group_count() != self.desired;
            if in_progress || t < self.cooldown_until {
                return;
            }
        }
        let new = (self.desired + p.adjustment).clamp(MIN_SIZE, MAX_SIZE);
        if new != self.desired {
            self.desired = new;
            self.scalings.push((t, dir));
        }
    }

    fn group_count(&self) -> i64 {
        self.hosts
            .iter()
            .filter(|h| matches!(h.life, Life::Pending | Life::InService))
            .count() as i64
    }

    fn run(&mut self, minutes: u32, demand: impl Fn(u32) -> u32) {
        for t in 0..minutes {
            self.step(t, demand(t));
        }
    }
}

fn minutes(t: u32) -> Duration {
    Duration::from_secs(u64::from(t) * 60)
}

/// What a trace produced.
struct Figures {
    name: String,
    table: String,
    removals: Vec<Removal>,
    scalings: Vec<(u32, Direction)>,
    oscillations: usize,
    final_hosts: usize,
}

/// A scale-in and a scale-out (either order) within an hour while the demand moved by less than
/// one host's worth of tasks: the loop undoing its own step.
fn oscillations(scalings: &[(u32, Direction)], demand: &dyn Fn(u32) -> u32) -> usize {
    scalings
        .windows(2)
        .filter(|w| {
            let ((t1, d1), (t2, d2)) = (w[0], w[1]);
            d1 != d2 && t2 - t1 <= 60 && demand(t1).abs_diff(demand(t2)) < WEB_PER_HOST
        })
        .count()
}

fn simulate(
    name: &str,
    placement: Placement,
    hosts: u32,
    minutes_total: u32,
    demand: &dyn Fn(u32) -> u32,
) -> (Sim, Figures) {
    simulate_with(
        deploy(),
        true,
        name,
        placement,
        hosts,
        minutes_total,
        demand,
    )
}

fn simulate_with(
    deploy: Deploy,
    managed: bool,
    name: &str,
    placement: Placement,
    hosts: u32,
    minutes_total: u32,
    demand: &dyn Fn(u32) -> u32,
) -> (Sim, Figures) {
    let mut sim = Sim::new(deploy, placement, hosts, demand(0));
    sim.managed = managed;
    // Long traces: one line an hour.
    sim.every = if minutes_total > 600 { 60 } else { 10 };
    sim.run(minutes_total, demand);
    let mut table = format!(
        "{name} ({placement:?})\n{:>5} {:>6} {:>7} {:>5} {:>8} {:>9} {:>8} {:>8} {:>9} {:>4} {:>4}\n",
        "min",
        "demand",
        "running",
        "hosts",
        "draining",
        "removable",
        "capacity",
        "idle",
        "desired",
        "out",
        "in"
    );
    for l in &sim.lines {
        let _ = writeln!(table, "{l}");
    }
    let figures = Figures {
        name: format!("{name} ({placement:?})"),
        table,
        removals: sim.removals.clone(),
        scalings: sim.scalings.clone(),
        oscillations: oscillations(&sim.scalings, demand),
        final_hosts: sim.in_service(),
    };
    (sim, figures)
}

fn assert_never_busy_before_idle(f: &Figures) {
    for r in &f.removals {
        assert!(
            !r.busy || r.idle_others.is_empty(),
            "{}: minute {}: busy {} removed while {:?} were idle",
            f.name,
            r.t,
            r.id,
            r.idle_others
        );
    }
}

fn save(report: &str) {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("scale-sim.txt");
    std::fs::write(&path, report).expect("write the simulation's figures");
    println!("{report}\n(saved to {})", path.display());
}

/// Minutes from `from` until every wanted task runs and ContainerCapacity is back at 1 or more.
fn time_to_capacity(sim: &Sim, from: u32) -> Option<u32> {
    (from as usize..sim.history.len()).find_map(|t| {
        let ok =
            sim.unplaced[t] == 0 && sim.history[t].container_capacity.is_some_and(|c| c >= 1.0);
        ok.then(|| t as u32 - from)
    })
}

#[test]
fn scaling_loop_simulation() {
    let d = deploy();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "parameters from deploy/capacity-alarms.yaml: scale-out {:?} {:+} cooldown {} min, alarm {} of {} min; scale-in {:?} {:+} cooldown {} min, alarm {} of {} min",
        if d.scale_out.simple { "simple" } else { "step" },
        d.scale_out.adjustment,
        d.scale_out.cooldown_minutes,
        d.out_alarm.datapoints_to_alarm,
        d.out_alarm.evaluation_periods,
        if d.scale_in.simple { "simple" } else { "step" },
        d.scale_in.adjustment,
        d.scale_in.cooldown_minutes,
        d.in_alarm.datapoints_to_alarm,
        d.in_alarm.evaluation_periods,
    );
    let mut summary = Vec::new();
    let mut total_oscillations = 0;

    for placement in [Placement::Binpack, Placement::Spread] {
        // A step up: 3 hosts with 15 tasks, 40 wanted from minute 40 (6 hosts' worth).
        let step_up = |t: u32| if t < 40 { 15 } else { 40 };
        let (sim, f) = simulate("step up 15 -> 40 tasks", placement, 3, 180, &step_up);
        let ttc = time_to_capacity(&sim, 40).expect("capacity reached after the step up");
        // Each added host costs at most the alarm's window, the boot and the cooldown (+1 lag).
        let added = f.final_hosts as u32 - 3;
        let per_step = d.out_alarm.evaluation_periods as u32
            + MINUTES_TO_REGISTERED
            + d.scale_out.cooldown_minutes
            + 1;
        assert!(added >= 3, "{}: {added} hosts added", f.name);
        assert!(
            ttc <= added * per_step,
            "{}: {ttc} min to capacity for {added} hosts (bound {per_step} min per host)",
            f.name
        );
        assert!(
            f.removals.is_empty(),
            "{}: nothing to remove in a step up: {:?}",
            f.name,
            f.removals
        );
        summary.push(format!(
            "{}: time to capacity {ttc} min, hosts 3 -> {}, removals {}, oscillations {}",
            f.name,
            f.final_hosts,
            f.removals.len(),
            f.oscillations
        ));
        total_oscillations += f.oscillations;
        report.push_str(&f.table);

        // Exactly one host's worth of excess: 4 hosts, 26 tasks, then 19 (3 hosts hold 21).
        let one_host = |t: u32| if t < 40 { 26 } else { 19 };
        let (_, f) = simulate(
            "one-host excess 26 -> 19 tasks",
            placement,
            4,
            240,
            &one_host,
        );
        assert_eq!(
            f.removals.len(),
            1,
            "{}: a one-host excess removes one host: {:?}",
            f.name,
            f.removals
        );
        assert_eq!(f.final_hosts, 3, "{}", f.name);
        assert_never_busy_before_idle(&f);
        summary.push(format!(
            "{}: hosts 4 -> {}, removed {} for an excess of 1 ({} min after the drop, host {} busy: {}), oscillations {}",
            f.name,
            f.final_hosts,
            f.removals.len(),
            f.removals[0].t - 40,
            f.removals[0].id,
            f.removals[0].busy,
            f.oscillations
        ));
        total_oscillations += f.oscillations;
        report.push_str(&f.table);

        // The same excess before this design: a step policy answering every minute in ALARM, an
        // alarm on IdleHostCapacity alone, every host unprotected. The model shows the double
        // removal the template must not allow.
        let mut before = deploy();
        before.scale_in = Policy {
            simple: false,
            cooldown_minutes: 0,
            ..before.scale_in
        };
        before.in_alarm.inputs = vec![("idle".into(), "IdleHostCapacity".into())];
        before.in_alarm.expr = Expr::Var("idle".into());
        let (_, old) = simulate_with(
            before,
            false,
            "one-host excess, step policy and no protection",
            placement,
            4,
            240,
            &one_host,
        );
        assert!(
            old.removals.len() > 1,
            "{}: the model no longer shows the double removal: {:?}",
            old.name,
            old.removals
        );
        summary.push(format!(
            "{}: hosts 4 -> {}, removed {} for an excess of 1, busy hosts removed {}, oscillations {}",
            old.name,
            old.final_hosts,
            old.removals.len(),
            old.removals.iter().filter(|r| r.busy).count(),
            old.oscillations
        ));

        // A step down: 6 hosts with 40 tasks, then 12 (2 hosts hold 14).
        let step_down = |t: u32| if t < 40 { 40 } else { 12 };
        let (sim, f) = simulate("step down 40 -> 12 tasks", placement, 6, 360, &step_down);
        assert_never_busy_before_idle(&f);
        let gaps: Vec<u32> = f.removals.windows(2).map(|w| w[1].t - w[0].t).collect();
        for g in &gaps {
            assert!(
                *g > d.scale_in.cooldown_minutes,
                "{}: two removals {g} min apart: {:?}",
                f.name,
                f.removals
            );
        }
        assert!(f.final_hosts >= 2, "{}: {} hosts", f.name, f.final_hosts);
        assert!(
            f.final_hosts <= 3,
            "{}: the excess was not removed: {} hosts",
            f.name,
            f.final_hosts
        );
        assert!(
            sim.unplaced.iter().skip(40).all(|&u| u == 0),
            "{}: tasks went unplaced while scaling in",
            f.name
        );
        summary.push(format!(
            "{}: hosts 6 -> {} in {} removals, first {} min after the drop, then {:?} min apart, busy hosts removed {}, oscillations {}",
            f.name,
            f.final_hosts,
            f.removals.len(),
            f.removals.first().map_or(0, |r| r.t - 40),
            gaps,
            f.removals.iter().filter(|r| r.busy).count(),
            f.oscillations
        ));
        total_oscillations += f.oscillations;
        report.push_str(&f.table);

        // A day: 8 tasks at night, 40 at the afternoon peak.
        let day = |t: u32| {
            let phase = f64::from(t % 1440) / 1440.0 * std::f64::consts::TAU;
            (8.0 + 32.0 * (1.0 - phase.cos()) / 2.0).round() as u32
        };
        let (sim, f) = simulate("day 8..40 tasks", placement, 2, 2 * 1440, &day);
        assert_never_busy_before_idle(&f);
        let unplaced_minutes = sim.unplaced.iter().filter(|&&u| u > 0).count();
        let outs = f.scalings.iter().filter(|s| s.1 == Direction::Out).count();
        let ins = f.scalings.iter().filter(|s| s.1 == Direction::In).count();
        summary.push(format!(
            "{}: 2 days, {outs} scale-outs, {ins} scale-ins, minutes with unplaced tasks {unplaced_minutes}, busy hosts removed {}, oscillations {}",
            f.name,
            f.removals.iter().filter(|r| r.busy).count(),
            f.oscillations
        ));
        total_oscillations += f.oscillations;
        report.push_str(&f.table);
    }
    let _ = writeln!(report, "\nsummary");
    for s in &summary {
        let _ = writeln!(report, "  {s}");
    }
    let _ = writeln!(report, "  oscillations in all traces: {total_oscillations}");
    save(&report);
    assert_eq!(total_oscillations, 0, "{report}");
}

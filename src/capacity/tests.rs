use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

fn host(name: &str, cpu: (u64, u64), mem: (u64, u64)) -> HostInput {
    HostInput {
        name: name.into(),
        cpu_units: Quantity::new(cpu.0, cpu.1),
        memory_mib: Quantity::new(mem.0, mem.1),
        ..HostInput::default()
    }
}

fn shape(name: &str, cpu: u64, mem: u64) -> TaskShape {
    TaskShape {
        name: name.into(),
        cpu_units: cpu,
        memory_mib: mem,
        ..TaskShape::default()
    }
}

fn ports(p: &[u16]) -> BTreeSet<u16> {
    p.iter().copied().collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// DESIGN.md's worked check, number for number.
#[test]
fn design_worked_check() {
    let hosts = [
        host("a", (1000, 400), (1000, 200)),
        host("b", (1000, 400), (1000, 200)),
    ];
    let r = compute(&hosts, &[shape("web", 400, 200)], 1.0);
    let cpu = r.per_resource.cpu.unwrap();
    let mem = r.per_resource.memory.unwrap();
    assert_eq!(cpu.capacity, 2, "CPU fits 1+1");
    assert_eq!(mem.capacity, 8, "memory fits 4+4");
    for h in &r.hosts {
        assert_eq!(h.per_resource.cpu.max, Some(2));
        assert_eq!(h.per_resource.memory.max, Some(5));
        assert_eq!(h.spare_tasks, Some(1));
    }
    assert!(close(cpu.idle_hosts, 1.0), "idle CPU = 2/2 = 1.0");
    assert!(close(mem.idle_hosts, 1.6), "idle memory = 8/5 = 1.6");
    assert!(close(r.idle_host_capacity, 1.0));
    assert!(!r.scale_in, "IdleHostCapacity = 1.0 → do not scale in");
    assert_eq!(r.container_capacity, 2);
    assert!(!r.scale_out);
    assert!(close(r.idle_host_capacity_conservative, 1.0));
}

#[test]
fn static_port_taken_on_every_host_means_no_capacity() {
    let mut hosts = vec![
        host("a", (4096, 0), (8192, 0)),
        host("b", (4096, 1024), (8192, 512)),
    ];
    for h in &mut hosts {
        h.taken_tcp_ports = ports(&[22, 80, 51678]);
    }
    let mut web = shape("web", 256, 256);
    web.tcp_ports = ports(&[80]);
    let r = compute(&hosts, &[web], 1.0);
    assert_eq!(r.container_capacity, 0);
    assert!(r.scale_out);
    for h in &r.hosts {
        assert_eq!(h.spare_tasks, Some(0));
        assert_eq!(h.per_resource.ports.conflicts, ports(&[80]));
        assert_eq!(h.per_resource.cpu.fits.map(|f| f > 0), Some(true));
    }
    assert_eq!(r.per_resource.ports.unwrap().capacity, 0);
}

#[test]
fn static_port_fits_at_most_once_per_host() {
    let mut web = shape("web", 10, 10);
    web.tcp_ports = ports(&[8080]);
    let r = compute(&[host("a", (4096, 0), (8192, 0))], &[web], 1.0);
    assert_eq!(r.container_capacity, 1);
    assert_eq!(r.hosts[0].per_resource.ports.max, Some(1));
}

#[test]
fn udp_ports_are_their_own_resource() {
    let mut h = host("a", (4096, 0), (8192, 0));
    h.taken_tcp_ports = ports(&[53]);
    let mut dns = shape("dns", 10, 10);
    dns.udp_ports = ports(&[53]);
    let r = compute(std::slice::from_ref(&h), &[dns.clone()], 1.0);
    assert_eq!(
        r.container_capacity, 1,
        "TCP 53 taken does not block UDP 53"
    );
    h.taken_udp_ports = ports(&[53]);
    let r = compute(&[h], &[dns], 1.0);
    assert_eq!(r.container_capacity, 0);
}

#[test]
fn instance_type_with_4_network_interfaces_and_only_awsvpc_tasks_fits_3_per_host() {
    // 4 interfaces − the primary = 3 slots (the cluster command does that subtraction).
    let hosts: Vec<HostInput> = ["a", "b"]
        .iter()
        .map(|n| HostInput {
            eni: Some(Quantity::new(3, 0)),
            ..host(n, (16384, 0), (65536, 0))
        })
        .collect();
    let mut task = shape("api", 256, 512);
    task.awsvpc = true;
    let r = compute(&hosts, &[task], 1.0);
    for h in &r.hosts {
        assert_eq!(h.spare_tasks, Some(3));
        assert_eq!(h.per_resource.eni.unwrap().fits, Some(3));
    }
    assert_eq!(r.container_capacity, 6);
    assert_eq!(r.per_resource.eni.unwrap().capacity, 6);
}

#[test]
fn unknown_eni_limit_does_not_constrain() {
    let mut task = shape("api", 1024, 1024);
    task.awsvpc = true;
    let r = compute(&[host("a", (4096, 0), (4096, 0))], &[task], 1.0);
    assert_eq!(r.hosts[0].spare_tasks, Some(4));
    assert_eq!(r.hosts[0].per_resource.eni, None);
    assert_eq!(r.per_resource.eni, None);
}

#[test]
fn heterogeneous_instance_types() {
    // An m5.large-like host (2 vCPU, ~7.5 GiB) and an m5.2xlarge-like host (8 vCPU, ~31 GiB).
    let hosts = [
        host("small", (2048, 0), (7680, 0)),
        host("big", (8192, 0), (31744, 0)),
    ];
    let r = compute(&hosts, &[shape("svc", 1024, 4096)], 1.0);
    // small: CPU 2, memory 1 → 1; big: CPU 8, memory 7 → 7.
    assert_eq!(r.hosts[0].spare_tasks, Some(1));
    assert_eq!(r.hosts[1].spare_tasks, Some(7));
    assert_eq!(r.container_capacity, 8);
    assert_eq!(r.per_resource.cpu.unwrap().capacity, 10);
    assert_eq!(r.per_resource.memory.unwrap().capacity, 8);
}

#[test]
fn free_cpu_on_one_host_and_free_memory_on_another_never_make_one_task() {
    let hosts = [
        host("cpu-free", (4096, 0), (4096, 4000)),
        host("mem-free", (4096, 4000), (4096, 0)),
    ];
    let r = compute(&hosts, &[shape("job", 1024, 1024)], 1.0);
    assert_eq!(r.per_resource.cpu.unwrap().capacity, 4);
    assert_eq!(r.per_resource.memory.unwrap().capacity, 4);
    assert_eq!(r.container_capacity, 0);
    assert!(r.scale_out);
}

#[test]
fn idle_host_capacity_exactly_one_does_not_scale_in() {
    // Ten hosts each 1/10 idle: Σ is 1.0 mathematically (0.9999… or 1.0000…1 in floats).
    let hosts: Vec<HostInput> = (0..10)
        .map(|i| host(&format!("h{i}"), (1000, 900), (1000, 900)))
        .collect();
    let r = compute(&hosts, &[shape("t", 100, 100)], 1.0);
    assert!(close(r.idle_host_capacity, 1.0));
    assert!(!r.scale_in);
    // One empty host is exactly 1.0 too.
    let r = compute(
        &[host("empty", (1000, 0), (1000, 0))],
        &[shape("t", 100, 100)],
        1.0,
    );
    assert_eq!(r.idle_host_capacity, 1.0);
    assert!(!r.scale_in);
    // Slightly more than one idle host scales in.
    let r = compute(
        &[
            host("empty", (1000, 0), (1000, 0)),
            host("b", (1000, 900), (1000, 900)),
        ],
        &[shape("t", 100, 100)],
        1.0,
    );
    assert!(r.idle_host_capacity > 1.0);
    assert!(r.scale_in);
}

#[test]
fn largest_task_takes_the_largest_need_per_resource() {
    let mut a = shape("a", 2048, 512);
    a.tcp_ports = ports(&[80]);
    let mut b = shape("b", 256, 4096);
    b.tcp_ports = ports(&[443]);
    b.awsvpc = true;
    let l = largest_task(&[a, b]).unwrap();
    assert_eq!((l.cpu_units, l.memory_mib), (2048, 4096));
    assert_eq!(l.tcp_ports, ports(&[80, 443]));
    assert!(l.awsvpc);
    assert_eq!(largest_task(&[]), None);
}

#[test]
fn each_shape_reports_how_many_more_fit() {
    let hosts = [
        host("a", (4096, 0), (8192, 0)),
        host("b", (4096, 2048), (8192, 0)),
    ];
    let r = compute(
        &hosts,
        &[shape("small", 512, 512), shape("big", 2048, 4096)],
        1.0,
    );
    assert_eq!(
        r.hosts[0].shapes[0],
        ShapeFit {
            name: "small".into(),
            fits: Some(8)
        }
    );
    assert_eq!(r.hosts[1].shapes[1].fits, Some(1));
    assert_eq!(r.shapes[0].fits, Some(12));
    assert_eq!(r.shapes[1].fits, Some(3));
    // The largest task is "big" here: 2 + 1.
    assert_eq!(r.container_capacity, 3);
}

#[test]
fn scale_out_below_threshold() {
    let hosts = [host("a", (4096, 0), (8192, 0))];
    let r = compute(&hosts, &[shape("t", 2048, 1024)], 2.0);
    assert_eq!(r.container_capacity, 2);
    assert!(!r.scale_out, "2 is not below 2");
    let r = compute(&hosts, &[shape("t", 2048, 1024)], 2.5);
    assert!(r.scale_out);
}

#[test]
fn sums_over_hosts_saturate_instead_of_overflowing() {
    let huge = host("h", (u64::MAX, 0), (u64::MAX, 0));
    let hosts = vec![huge.clone(), huge.clone(), huge];
    let r = compute(&hosts, &[shape("tiny", 1, 1)], 1.0);
    assert_eq!(r.container_capacity, u64::MAX);
    assert_eq!(r.per_resource.cpu.unwrap().capacity, u64::MAX);
    assert_eq!(r.shapes[0].fits, Some(u64::MAX));
}

#[test]
fn container_sums_in_a_task_definition_saturate() {
    let c = ContainerNeeds {
        name: "c".into(),
        cpu_units: i64::MAX,
        memory_hard_mib: Some(i64::MAX),
        ..ContainerNeeds::default()
    };
    let s = TaskShape::from_definition(
        "f",
        NetworkMode::Bridge,
        None,
        None,
        &[c.clone(), c.clone(), c],
    )
    .unwrap();
    assert_eq!((s.cpu_units, s.memory_mib), (u64::MAX, u64::MAX));
}

#[test]
fn no_shape_means_no_figures_and_no_decision() {
    let r = compute(&[host("a", (4096, 0), (8192, 0))], &[], 1.0);
    assert_eq!(r.largest_task, None);
    assert_eq!(r.container_capacity, 0);
    assert!(!r.scale_out && !r.scale_in);
    assert_eq!(r.hosts[0].spare_tasks, None);
    assert_eq!(r.per_resource.cpu, None);
}

#[test]
fn reserved_above_registered_saturates() {
    let r = compute(
        &[host("a", (1024, 2048), (1024, 0))],
        &[shape("t", 1, 1)],
        1.0,
    );
    assert_eq!(r.hosts[0].per_resource.cpu.remaining, 0);
    assert_eq!(r.container_capacity, 0);
}

#[test]
fn host_smaller_than_the_task_is_zero_idle() {
    let r = compute(
        &[host("tiny", (512, 0), (512, 0))],
        &[shape("t", 1024, 256)],
        1.0,
    );
    assert_eq!(r.hosts[0].per_resource.cpu.max, Some(0));
    assert_eq!(r.hosts[0].idle_fraction, Some(0.0));
}

#[test]
fn cluster_capacity_serializes_with_the_documented_keys() {
    let r = compute(
        &[host("a", (1024, 0), (1024, 0))],
        &[shape("t", 512, 512)],
        1.0,
    );
    let v = serde_json::to_value(&r).unwrap();
    for key in [
        "container_capacity",
        "idle_host_capacity",
        "idle_host_capacity_conservative",
        "scale_out",
        "scale_in",
        "largest_task",
        "per_resource",
        "shapes",
        "hosts",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert!(v["per_resource"]["eni"].is_null());
    assert!(v["per_resource"]["ports"].is_null());
    assert_eq!(v["per_resource"]["cpu"]["capacity"], 2);
    assert_eq!(v["hosts"][0]["per_resource"]["memory"]["remaining"], 1024);
}

// ---- shapes from task definitions and config ----

fn container(
    cpu: i64,
    hard: Option<i64>,
    soft: Option<i64>,
    maps: &[(i64, Option<i64>)],
) -> ContainerNeeds {
    ContainerNeeds {
        name: "c".into(),
        cpu_units: cpu,
        memory_hard_mib: hard,
        memory_soft_mib: soft,
        port_mappings: maps
            .iter()
            .map(|&(c, h)| PortMapping {
                container_port: Some(c),
                host_port: h,
                udp: false,
            })
            .collect(),
    }
}

#[test]
fn hard_limit_wins_over_soft_reservation() {
    let s = TaskShape::from_definition(
        "f",
        NetworkMode::Bridge,
        None,
        None,
        &[
            container(128, Some(512), Some(256), &[]),
            container(128, None, Some(300), &[]),
        ],
    )
    .unwrap();
    assert_eq!(s.memory_mib, 512 + 300);
    assert_eq!(s.cpu_units, 256);
}

#[test]
fn task_level_cpu_and_memory_win_over_the_container_sum() {
    let s = TaskShape::from_definition(
        "f",
        NetworkMode::Bridge,
        Some("1 vCPU"),
        Some("2 GB"),
        &[container(128, Some(512), None, &[])],
    )
    .unwrap();
    assert_eq!((s.cpu_units, s.memory_mib), (1024, 2048));
    let s = TaskShape::from_definition(
        "f",
        NetworkMode::Bridge,
        Some("256"),
        None,
        &[container(0, Some(64), None, &[])],
    )
    .unwrap();
    assert_eq!((s.cpu_units, s.memory_mib), (256, 64));
}

#[test]
fn task_cpu_and_memory_strings() {
    assert_eq!(parse_task_cpu("0.25 vCPU"), Some(256));
    assert_eq!(parse_task_cpu("2vcpu"), Some(2048));
    assert_eq!(parse_task_cpu(" 512 "), Some(512));
    assert_eq!(parse_task_cpu("lots"), None);
    assert_eq!(parse_task_memory("0.5GB"), Some(512));
    assert_eq!(parse_task_memory("3 GB"), Some(3072));
    assert_eq!(parse_task_memory("-1 GB"), None);
    let err = TaskShape::from_definition("web", NetworkMode::Bridge, Some("fast"), None, &[])
        .unwrap_err();
    assert!(err.to_string().contains("web") && err.to_string().contains("fast"));
}

#[test]
fn bridge_mode_counts_only_non_zero_host_ports() {
    let s = TaskShape::from_definition(
        "f",
        NetworkMode::Bridge,
        None,
        None,
        &[container(
            0,
            Some(10),
            None,
            &[(80, Some(8080)), (81, Some(0)), (82, None)],
        )],
    )
    .unwrap();
    assert_eq!(s.tcp_ports, ports(&[8080]));
    assert!(!s.awsvpc);
}

#[test]
fn host_mode_container_port_is_the_host_port() {
    let mut c = container(0, Some(10), None, &[(9090, None)]);
    c.port_mappings.push(PortMapping {
        container_port: Some(53),
        host_port: None,
        udp: true,
    });
    let s = TaskShape::from_definition("f", NetworkMode::Host, None, None, &[c]).unwrap();
    assert_eq!(s.tcp_ports, ports(&[9090]));
    assert_eq!(s.udp_ports, ports(&[53]));
}

#[test]
fn awsvpc_needs_an_eni_and_no_host_port() {
    let s = TaskShape::from_definition(
        "f",
        NetworkMode::Awsvpc,
        Some("256"),
        Some("512"),
        &[container(0, None, None, &[(80, Some(80))])],
    )
    .unwrap();
    assert!(s.awsvpc);
    assert!(s.tcp_ports.is_empty());
}

#[test]
fn out_of_range_port_is_an_error_naming_the_family() {
    let err = TaskShape::from_definition(
        "web",
        NetworkMode::Bridge,
        None,
        None,
        &[container(0, Some(1), None, &[(80, Some(70000))])],
    )
    .unwrap_err();
    assert!(err.to_string().contains("web") && err.to_string().contains("70000"));
}

#[test]
fn shape_from_sdk_task_definition() {
    use aws_sdk_ecs::types as ecs;
    let td = ecs::TaskDefinition::builder()
        .family("web")
        .network_mode(ecs::NetworkMode::Bridge)
        .container_definitions(
            ecs::ContainerDefinition::builder()
                .name("app")
                .cpu(256)
                .memory_reservation(300)
                .port_mappings(
                    ecs::PortMapping::builder()
                        .container_port(80)
                        .host_port(8080)
                        .protocol(ecs::TransportProtocol::Tcp)
                        .build(),
                )
                .port_mappings(
                    ecs::PortMapping::builder()
                        .container_port(514)
                        .host_port(514)
                        .protocol(ecs::TransportProtocol::Udp)
                        .build(),
                )
                .build(),
        )
        .build();
    let s = TaskShape::try_from(&td).unwrap();
    assert_eq!(s.name, "web");
    assert_eq!((s.cpu_units, s.memory_mib), (256, 300));
    assert_eq!(s.tcp_ports, ports(&[8080]));
    assert_eq!(s.udp_ports, ports(&[514]));
}

#[test]
fn shape_from_config() {
    let c = crate::config::TaskShapeConfig {
        name: "cfg".into(),
        cpu_units: 512,
        memory_mib: 1024,
        ports: vec![80],
        ports_udp: vec![],
        awsvpc: false,
    };
    let s = TaskShape::from(&c);
    assert_eq!((s.cpu_units, s.memory_mib), (512, 1024));
    assert_eq!(s.tcp_ports, ports(&[80]));
}

// ---- properties ----

const PORT_POOL: [u16; 4] = [80, 443, 8080, 9000];

fn arb_ports() -> impl Strategy<Value = BTreeSet<u16>> {
    proptest::sample::subsequence(PORT_POOL.to_vec(), 0..=2).prop_map(|v| v.into_iter().collect())
}

fn arb_quantity(max: u64) -> impl Strategy<Value = Quantity> {
    (0..=max, 0..=max).prop_map(|(a, b)| Quantity::new(a.max(b), a.min(b)))
}

fn arb_host(known_eni: bool) -> impl Strategy<Value = HostInput> {
    let eni = if known_eni {
        arb_quantity(15).prop_map(Some).boxed()
    } else {
        proptest::option::of(arb_quantity(15)).boxed()
    };
    (
        arb_quantity(16384),
        arb_quantity(65536),
        arb_ports(),
        arb_ports(),
        eni,
    )
        .prop_map(
            |(cpu_units, memory_mib, taken_tcp_ports, taken_udp_ports, eni)| HostInput {
                name: "h".into(),
                cpu_units,
                memory_mib,
                taken_tcp_ports,
                taken_udp_ports,
                eni,
            },
        )
}

fn arb_shape() -> impl Strategy<Value = TaskShape> {
    (
        0..4096u64,
        0..16384u64,
        arb_ports(),
        arb_ports(),
        any::<bool>(),
    )
        .prop_map(
            |(cpu_units, memory_mib, tcp_ports, udp_ports, awsvpc)| TaskShape {
                name: "s".into(),
                cpu_units,
                memory_mib,
                tcp_ports,
                udp_ports,
                awsvpc,
            },
        )
}

/// The host after one more copy of `s` started on it.
fn start(h: &HostInput, s: &TaskShape) -> HostInput {
    let mut h = h.clone();
    h.cpu_units.reserved += s.cpu_units;
    h.memory_mib.reserved += s.memory_mib;
    h.taken_tcp_ports.extend(&s.tcp_ports);
    h.taken_udp_ports.extend(&s.udp_ports);
    if s.awsvpc
        && let Some(e) = h.eni.as_mut()
    {
        e.reserved += 1;
    }
    h
}

proptest! {
    #[test]
    fn spare_tasks_never_exceed_any_single_resource_fit(
        hosts in proptest::collection::vec(arb_host(false), 0..8),
        shapes in proptest::collection::vec(arb_shape(), 1..5),
    ) {
        let r = compute(&hosts, &shapes, 1.0);
        for h in &r.hosts {
            for f in h.by_resource() {
                prop_assert!(h.spare_tasks.unwrap() <= f.fits);
                prop_assert!(h.idle_fraction.unwrap() <= f.idle);
            }
        }
    }

    #[test]
    fn container_capacity_never_exceeds_any_resource_capacity(
        hosts in proptest::collection::vec(arb_host(true), 0..8),
        shapes in proptest::collection::vec(arb_shape(), 1..5),
    ) {
        let r = compute(&hosts, &shapes, 1.0);
        for res in Resource::ALL {
            if let Some(t) = r.per_resource.get(res) {
                prop_assert!(r.container_capacity <= t.capacity, "{:?}", res);
            }
        }
    }

    #[test]
    fn starting_a_task_never_raises_capacity(
        hosts in proptest::collection::vec(arb_host(false), 1..8),
        shapes in proptest::collection::vec(arb_shape(), 1..5),
        which_host in any::<prop::sample::Index>(),
        which_shape in any::<prop::sample::Index>(),
    ) {
        let before = compute(&hosts, &shapes, 1.0);
        let mut after_hosts = hosts.clone();
        let i = which_host.index(hosts.len());
        after_hosts[i] = start(&hosts[i], which_shape.get(&shapes));
        let after = compute(&after_hosts, &shapes, 1.0);
        prop_assert!(after.container_capacity <= before.container_capacity);
        prop_assert!(after.idle_host_capacity <= before.idle_host_capacity + 1e-9);
        prop_assert!(after.idle_host_capacity_conservative <= before.idle_host_capacity_conservative + 1e-9);
    }

    #[test]
    fn conservative_idle_is_never_above_classic(
        hosts in proptest::collection::vec(arb_host(false), 0..8),
        shapes in proptest::collection::vec(arb_shape(), 0..5),
    ) {
        let r = compute(&hosts, &shapes, 1.0);
        prop_assert!(r.idle_host_capacity_conservative <= r.idle_host_capacity + 1e-9);
    }

    #[test]
    fn removing_a_host_never_raises_container_capacity(
        hosts in proptest::collection::vec(arb_host(false), 1..8),
        shapes in proptest::collection::vec(arb_shape(), 1..5),
        which in any::<prop::sample::Index>(),
    ) {
        let before = compute(&hosts, &shapes, 1.0);
        let mut fewer = hosts.clone();
        fewer.remove(which.index(hosts.len()));
        let after = compute(&fewer, &shapes, 1.0);
        prop_assert!(after.container_capacity <= before.container_capacity);
    }

    #[test]
    fn idle_fractions_stay_between_zero_and_one(
        hosts in proptest::collection::vec(arb_host(false), 0..8),
        shapes in proptest::collection::vec(arb_shape(), 1..5),
    ) {
        let r = compute(&hosts, &shapes, 1.0);
        for h in &r.hosts {
            if let Some(i) = h.idle_fraction {
                prop_assert!((0.0..=1.0).contains(&i));
            }
        }
    }
}

use std::collections::BTreeMap;

use super::*;

fn instance(n: u32, status: &str, itype: &str, running: u64) -> Instance {
    Instance {
        arn: format!("arn:aws:ecs:us-east-1:1:container-instance/c/{n}"),
        ec2_instance_id: Some(format!("i-{n}")),
        status: status.into(),
        instance_type: Some(itype.into()),
        cpu_units: Quantity::new(4096, 0),
        memory_mib: Quantity::new(16384, 0),
        running_tasks: running,
        ..Instance::default()
    }
}

fn awsvpc_shape() -> TaskShape {
    TaskShape {
        name: "api".into(),
        cpu_units: 256,
        memory_mib: 512,
        awsvpc: true,
        ..TaskShape::default()
    }
}

fn limits(pairs: &[(&str, u32)]) -> Option<BTreeMap<String, u32>> {
    Some(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
}

#[test]
fn draining_instances_excluded() {
    let inputs = Inputs {
        instances: vec![
            instance(1, "ACTIVE", "m5.xlarge", 0),
            instance(2, "DRAINING", "m5.xlarge", 0),
            instance(3, "INACTIVE", "m5.xlarge", 0),
        ],
        shapes: vec![TaskShape {
            name: "t".into(),
            cpu_units: 1024,
            memory_mib: 1024,
            ..TaskShape::default()
        }],
        ..Inputs::default()
    };
    let out = calculate(&inputs, 1.0);
    assert_eq!(out.capacity.hosts.len(), 1);
    assert_eq!(out.capacity.hosts[0].name, "i-1");
    assert_eq!(out.capacity.container_capacity, 4);
    assert_eq!(
        out.excluded,
        vec![
            Excluded {
                name: "i-2".into(),
                status: "DRAINING".into()
            },
            Excluded {
                name: "i-3".into(),
                status: "INACTIVE".into()
            },
        ]
    );
}

#[test]
fn instance_type_with_4_network_interfaces_and_only_awsvpc_tasks_fits_3_per_host() {
    let inputs = Inputs {
        instances: vec![
            instance(1, "ACTIVE", "m5.xlarge", 0),
            instance(2, "ACTIVE", "m5.xlarge", 0),
        ],
        shapes: vec![awsvpc_shape()],
        eni_limits: limits(&[("m5.xlarge", 4)]),
        awsvpc_tasks: None,
    };
    let out = calculate(&inputs, 1.0);
    for h in &out.capacity.hosts {
        assert_eq!(h.spare_tasks, Some(3));
    }
    assert_eq!(out.capacity.container_capacity, 6);
}

#[test]
fn enis_held_by_awsvpc_tasks_are_used() {
    let i = instance(1, "ACTIVE", "m5.xlarge", 2);
    let inputs = Inputs {
        awsvpc_tasks: Some([(i.arn.clone(), 2)].into_iter().collect()),
        instances: vec![i],
        shapes: vec![awsvpc_shape()],
        eni_limits: limits(&[("m5.xlarge", 4)]),
    };
    let out = calculate(&inputs, 1.0);
    assert_eq!(out.capacity.hosts[0].per_resource.eni.unwrap().reserved, 2);
    assert_eq!(out.capacity.container_capacity, 1);
}

#[test]
fn busy_instance_without_tasks_file_has_unknown_enis() {
    let inputs = Inputs {
        instances: vec![instance(1, "ACTIVE", "m5.xlarge", 3)],
        shapes: vec![awsvpc_shape()],
        eni_limits: limits(&[("m5.xlarge", 4)]),
        awsvpc_tasks: None,
    };
    let out = calculate(&inputs, 1.0);
    assert_eq!(out.capacity.hosts[0].per_resource.eni, None);
    assert_eq!(
        out.capacity.container_capacity, 16,
        "CPU bounds it: 4096 / 256"
    );
    assert!(
        out.notes.iter().any(|n| n.contains("--tasks")),
        "{:?}",
        out.notes
    );
}

#[test]
fn trunking_on_a_type_without_a_branch_limit_leaves_enis_unknown() {
    let mut i = instance(1, "ACTIVE", "m5.xlarge", 0);
    i.trunk = true;
    let inputs = Inputs {
        instances: vec![i],
        shapes: vec![awsvpc_shape()],
        eni_limits: limits(&[("m5.xlarge", 4)]),
        awsvpc_tasks: Some(BTreeMap::new()),
    };
    let out = calculate(&inputs, 1.0);
    assert_eq!(out.capacity.hosts[0].per_resource.eni, None);
    assert!(out.notes.iter().any(|n| n.contains("trunking")));
}

#[test]
fn trunking_on_a_tabled_type_uses_the_branch_limit_not_the_eni_limit() {
    let mut trunked = instance(1, "ACTIVE", "c5.large", 1);
    trunked.trunk = true;
    let plain = instance(2, "ACTIVE", "c5.large", 0);
    let inputs = Inputs {
        instances: vec![trunked.clone(), plain.clone()],
        shapes: vec![awsvpc_shape()],
        eni_limits: limits(&[("c5.large", 3)]),
        awsvpc_tasks: Some(BTreeMap::from([(trunked.arn.clone(), 1)])),
    };
    let (hosts, _, notes) = hosts(&inputs);
    // The c5.large row: 12 with trunking, less the primary and the trunk.
    assert_eq!(hosts[0].eni, Some(Quantity::new(10, 1)));
    assert_eq!(hosts[1].eni, Some(Quantity::new(2, 0)));
    assert!(notes.is_empty(), "{notes:?}");
    // The same figures as the host's own rule.
    assert_eq!(
        crate::eni::slots(Some(3), Some(true), Some("c5.large")).0,
        Some(10)
    );
    assert_eq!(
        crate::eni::slots(Some(3), Some(false), Some("c5.large")).0,
        Some(2)
    );

    // The branch limit does not need DescribeInstanceTypes; the plain host's slots do.
    let inputs = Inputs {
        eni_limits: None,
        ..inputs
    };
    let (hosts, _, _) = super::hosts(&inputs);
    assert_eq!(hosts[0].eni, Some(Quantity::new(10, 1)));
    assert_eq!(hosts[1].eni, None);
}

#[test]
fn instance_type_missing_from_the_limits_is_noted() {
    let inputs = Inputs {
        instances: vec![instance(1, "ACTIVE", "x9.huge", 0)],
        shapes: vec![awsvpc_shape()],
        eni_limits: limits(&[("m5.xlarge", 4)]),
        awsvpc_tasks: Some(BTreeMap::new()),
    };
    let out = calculate(&inputs, 1.0);
    assert_eq!(out.capacity.hosts[0].per_resource.eni, None);
    assert!(out.notes.iter().any(|n| n.contains("x9.huge")));
}

#[test]
fn table_names_every_host_and_the_decisions() {
    let inputs = Inputs {
        instances: vec![
            instance(1, "ACTIVE", "m5.xlarge", 0),
            instance(2, "DRAINING", "m5.xlarge", 0),
        ],
        shapes: vec![awsvpc_shape()],
        ..Inputs::default()
    };
    let t = calculate(&inputs, 1.0).to_table();
    for needle in [
        "i-1",
        "excluded: i-2 (DRAINING)",
        "ContainerCapacity",
        "scale out: no",
        "scale in: no",
        "api",
    ] {
        assert!(t.contains(needle), "{needle:?} not in\n{t}");
    }
}

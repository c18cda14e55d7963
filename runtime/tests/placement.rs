//! Placement on fake and real topologies.

use std::fs;
use std::path::PathBuf;

use peregrine::placement::{place, PlacementError, StageNeed, Topology};

/// Two L3 groups of four cores: {0..3} and {4..7}.
fn two_sockets(allowed: Vec<usize>) -> Topology {
    Topology {
        online: (0..8).collect(),
        allowed,
        cache_groups: vec![(0..4).collect(), (4..8).collect()],
    }
}

fn stage(name: &str, after: &[usize], busy: bool) -> StageNeed {
    StageNeed {
        name: name.into(),
        after: after.to_vec(),
        busy,
        core: None,
    }
}

#[test]
fn a_pipeline_stays_in_one_cache_group() {
    let t = two_sockets((0..8).collect());
    let stages = [
        stage("receive", &[], true),
        stage("journal", &[0], true),
        stage("logic", &[1], true),
        stage("send", &[2], true),
    ];
    let plan = place(&t, &stages, false).unwrap();
    let groups: Vec<_> = plan.iter().map(|c| t.group_of(c.unwrap())).collect();
    assert!(groups.windows(2).all(|w| w[0] == w[1]), "{plan:?}");
    let mut cores: Vec<_> = plan.iter().flatten().collect();
    cores.dedup();
    assert_eq!(cores.len(), 4, "one core each");
}

#[test]
fn a_dependent_stage_follows_its_upstream_into_its_group() {
    let t = two_sockets((0..8).collect());
    let mut stages = vec![
        stage("a", &[], false),
        stage("b", &[0], false),
        stage("c", &[1], false),
    ];
    stages[0].core = Some(5);
    let plan = place(&t, &stages, false).unwrap();
    assert_eq!(plan[0], Some(5));
    assert_eq!(t.group_of(plan[1].unwrap()), Some(1));
    assert_eq!(t.group_of(plan[2].unwrap()), Some(1));
}

#[test]
fn explicit_cores_must_be_allowed() {
    let t = two_sockets(vec![0, 1, 2, 3]);
    let mut stages = vec![stage("a", &[], false)];
    stages[0].core = Some(6);
    assert_eq!(
        place(&t, &stages, false).unwrap_err(),
        PlacementError::CoreUnavailable {
            stage: "a".into(),
            core: 6,
            allowed: vec![0, 1, 2, 3]
        }
    );
}

#[test]
fn too_many_busy_stages_are_refused_unless_allowed() {
    let t = two_sockets(vec![0, 1]);
    let stages: Vec<_> = (0..3).map(|i| stage(&format!("s{i}"), &[], true)).collect();
    assert_eq!(
        place(&t, &stages, false).unwrap_err(),
        PlacementError::Oversubscribed { busy: 3, cores: 2 }
    );
    let plan = place(&t, &stages, true).unwrap();
    assert_eq!(
        plan.iter().flatten().count(),
        2,
        "two pinned, one left to the scheduler"
    );
}

#[test]
fn a_busy_stage_does_not_share_an_explicit_core() {
    let t = two_sockets((0..8).collect());
    let mut stages = vec![stage("a", &[], true), stage("b", &[], false)];
    stages[0].core = Some(2);
    stages[1].core = Some(2);
    assert!(matches!(
        place(&t, &stages, false),
        Err(PlacementError::SharedBusyCore { core: 2, .. })
    ));
}

#[test]
fn topology_reads_a_sysfs_tree() {
    let root = std::env::temp_dir().join(format!("peregrine-sysfs-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let write = |p: PathBuf, s: &str| {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, s).unwrap();
    };
    write(root.join("online"), "0-3\n");
    for cpu in 0..4 {
        let l3 = if cpu < 2 { "0-1" } else { "2-3" };
        write(root.join(format!("cpu{cpu}/cache/index0/level")), "1\n");
        write(
            root.join(format!("cpu{cpu}/cache/index0/shared_cpu_list")),
            &cpu.to_string(),
        );
        write(root.join(format!("cpu{cpu}/cache/index3/level")), "3\n");
        write(
            root.join(format!("cpu{cpu}/cache/index3/shared_cpu_list")),
            l3,
        );
    }
    let t = Topology::from_sysfs(&root, vec![0, 1, 2, 3, 9]).unwrap();
    assert_eq!(t.online, [0, 1, 2, 3]);
    assert_eq!(
        t.allowed,
        [0, 1, 2, 3],
        "cores that are not online are dropped"
    );
    assert_eq!(t.cache_groups, [vec![0, 1], vec![2, 3]]);

    write(root.join("online"), "0-x");
    let err = Topology::from_sysfs(&root, vec![0]).unwrap_err();
    assert!(err.to_string().contains("malformed cpu list"), "{err}");
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn this_machine_has_a_usable_topology() {
    let t = Topology::detect().unwrap();
    assert!(!t.allowed.is_empty());
    for c in &t.allowed {
        assert!(
            t.group_of(*c).is_some(),
            "every allowed core has a cache group"
        );
    }
}

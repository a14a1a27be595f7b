//! The menu of faults the runner draws from, each with its injection and its healing. A fault is
//! injected either before an operation starts or while it runs, and healed after it ends.
use crate::fleet::Fleet;
use crate::procs::{keys, put_raw};
use proto::rng::Rng;
use proto::Color;

/// One fault, with the component it hits.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    AgentKill(usize),
    AgentPause(usize),
    AgentCutFromEtcd(usize),
    AgentCutOff(usize),
    AgentLossy(usize),
    AppKill(usize, Color),
    SidecarKill(usize),
    SidecarPause(usize),
    SidecarCutFromEtcd(usize),
    NginxStop(usize),
    EtcdMemberKill(usize),
    EtcdLeaderKill,
    CoordinatorKill,
    CoordinatorPause,
    Garbage(GarbageKey),
    AgentDiskFull(usize),
    IncludeDiskFull(usize),
    CorruptArtifact,
    StalledArtifact,
}

/// Keys the runner writes garbage to; each is one a real operator's typo could hit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GarbageKey {
    Active,
    Lock,
    Host(usize),
    Health(usize, Color),
    Lb(usize),
    LbAlive(usize),
}

impl Fault {
    /// Draws a fault for a fleet of `hosts` hosts, `lbs` LBs and `members` etcd members.
    pub fn draw(rng: &mut Rng, hosts: usize, lbs: usize, members: usize) -> Fault {
        let h = rng.below(hosts as u64) as usize;
        let l = rng.below(lbs as u64) as usize;
        let color = if rng.chance(50) {
            Color::Blue
        } else {
            Color::Green
        };
        let member = rng.below(members as u64) as usize;
        let garbage = *rng.pick(&[
            (3, GarbageKey::Active),
            (1, GarbageKey::Lock),
            (2, GarbageKey::Host(h)),
            (2, GarbageKey::Health(h, color)),
            (1, GarbageKey::Lb(l)),
            (1, GarbageKey::LbAlive(l)),
        ]);
        rng.pick(&[
            (6, Fault::AgentKill(h)),
            (4, Fault::AgentPause(h)),
            (4, Fault::AgentCutFromEtcd(h)),
            (3, Fault::AgentCutOff(h)),
            (3, Fault::AgentLossy(h)),
            (6, Fault::AppKill(h, color)),
            (4, Fault::SidecarKill(l)),
            (2, Fault::SidecarPause(l)),
            (2, Fault::SidecarCutFromEtcd(l)),
            (3, Fault::NginxStop(l)),
            (3, Fault::EtcdMemberKill(member)),
            (3, Fault::EtcdLeaderKill),
            (5, Fault::CoordinatorKill),
            (2, Fault::CoordinatorPause),
            (6, Fault::Garbage(garbage)),
            (3, Fault::AgentDiskFull(h)),
            (3, Fault::IncludeDiskFull(l)),
            (3, Fault::CorruptArtifact),
            (1, Fault::StalledArtifact),
        ])
        .clone()
    }

    pub fn name(&self) -> &'static str {
        match self {
            Fault::AgentKill(_) => "kill -9 agent",
            Fault::AgentPause(_) => "SIGSTOP agent",
            Fault::AgentCutFromEtcd(_) => "agent cut from etcd",
            Fault::AgentCutOff(_) => "agent cut off entirely",
            Fault::AgentLossy(_) => "agent link 30% loss",
            Fault::AppKill(..) => "kill -9 app process",
            Fault::SidecarKill(_) => "kill -9 sidecar",
            Fault::SidecarPause(_) => "SIGSTOP sidecar",
            Fault::SidecarCutFromEtcd(_) => "LB cut from etcd",
            Fault::NginxStop(_) => "nginx stopped",
            Fault::EtcdMemberKill(_) => "kill -9 etcd member",
            Fault::EtcdLeaderKill => "kill -9 etcd leader",
            Fault::CoordinatorKill => "kill -9 coordinator",
            Fault::CoordinatorPause => "SIGSTOP coordinator",
            Fault::Garbage(_) => "garbage in a key",
            Fault::AgentDiskFull(_) => "agent state dir disk full",
            Fault::IncludeDiskFull(_) => "LB include dir disk full",
            Fault::CorruptArtifact => "corrupt artifact",
            Fault::StalledArtifact => "stalled artifact",
        }
    }

    /// Faults that act on the running command rather than on the fleet.
    pub fn hits_coordinator(&self) -> bool {
        matches!(self, Fault::CoordinatorKill | Fault::CoordinatorPause)
    }

    /// Faults that are a property of the deploy itself (its artifact).
    pub fn is_artifact(&self) -> bool {
        matches!(self, Fault::CorruptArtifact | Fault::StalledArtifact)
    }

    /// The LB whose failed requests this fault explains (its nginx is down, or the test cannot
    /// reach it): they are excused, not violations.
    pub fn excuses_lb(&self) -> Option<usize> {
        match self {
            Fault::NginxStop(l) => Some(*l),
            _ => None,
        }
    }

    /// A host every LB routes to is unreachable or lossy: requests to it time out.
    pub fn excuses_timeouts(&self) -> bool {
        matches!(self, Fault::AgentCutOff(_) | Fault::AgentLossy(_))
    }

    /// An app process killed with -9 takes the requests it was answering with it: nginx has
    /// sent the headers and cannot retry, the client gets a truncated answer.
    pub fn excuses_in_flight(&self) -> bool {
        matches!(self, Fault::AppKill(..))
    }
}

/// What must be undone after the operation, remembered at injection.
#[derive(Debug, Default)]
pub struct Injected {
    pub etcd_member: Option<usize>,
    pub garbage_active: bool,
    pub garbage_lock: bool,
}

/// Injects `fault` into the fleet (not the coordinator or artifact faults: the runner applies
/// those to the command it runs).
pub async fn inject(fleet: &mut Fleet, fault: &Fault) -> Injected {
    let mut done = Injected::default();
    let etcd_ip = fleet.net.as_ref().map(|n| n.etcd_address());
    match fault {
        Fault::AgentKill(h) => fleet.hosts[*h].kill9(),
        Fault::AgentPause(h) => fleet.hosts[*h].pause(),
        Fault::AgentCutFromEtcd(h) => ns_of_host(fleet, *h).cut_from(&etcd_ip.unwrap()),
        Fault::AgentCutOff(h) => ns_of_host(fleet, *h).cut_all(),
        Fault::AgentLossy(h) => ns_of_host(fleet, *h).lose(30),
        Fault::AppKill(h, color) => {
            if let Some(pid) = fleet.hosts[*h].app_pid(*color) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        Fault::SidecarKill(l) => fleet.sidecars[*l].kill9(),
        Fault::SidecarPause(l) => fleet.sidecars[*l].pause(),
        Fault::SidecarCutFromEtcd(l) => {
            let ns = fleet.lbs[*l].ns.clone().expect("LB in a namespace");
            ns.cut_from(&etcd_ip.unwrap());
        }
        Fault::NginxStop(l) => fleet.lbs[*l].stop(),
        Fault::AgentDiskFull(h) => fleet.hosts[*h].disk.as_ref().expect("small disk").fill(),
        Fault::IncludeDiskFull(l) => fleet.lbs[*l].disk.as_ref().expect("small disk").fill(),
        Fault::EtcdMemberKill(m) => {
            fleet.etcd.kill_member(*m);
            done.etcd_member = Some(*m);
        }
        Fault::EtcdLeaderKill => {
            if let Some(m) = fleet.etcd.leader().await {
                fleet.etcd.kill_member(m);
                done.etcd_member = Some(m);
            }
        }
        Fault::Garbage(key) => {
            let client = fleet.etcd.live_client().await;
            let k = keys();
            let key_text = match key {
                GarbageKey::Active => {
                    done.garbage_active = true;
                    k.active()
                }
                GarbageKey::Lock => {
                    done.garbage_lock = true;
                    k.lock()
                }
                GarbageKey::Host(h) => k.host(&fleet.hosts[*h].host),
                GarbageKey::Health(h, c) => k.health(&fleet.hosts[*h].host, *c),
                GarbageKey::Lb(l) => k.lb(&fleet.sidecars[*l].name),
                GarbageKey::LbAlive(l) => k.lb_alive(&fleet.sidecars[*l].name),
            };
            put_raw(&client, &key_text, "{\"garbage\": tru").await;
        }
        Fault::CoordinatorKill
        | Fault::CoordinatorPause
        | Fault::CorruptArtifact
        | Fault::StalledArtifact => {}
    }
    done
}

/// Undoes `fault`: processes restarted or resumed, cuts healed, members back.
pub async fn heal(fleet: &mut Fleet, fault: &Fault, injected: &Injected) {
    match fault {
        Fault::AgentKill(h) => fleet.hosts[*h].restart(),
        Fault::AgentPause(h) => fleet.hosts[*h].resume(),
        Fault::AgentCutFromEtcd(h) | Fault::AgentCutOff(h) | Fault::AgentLossy(h) => {
            ns_of_host(fleet, *h).heal()
        }
        Fault::SidecarKill(l) => fleet.sidecars[*l].restart(),
        Fault::SidecarPause(l) => fleet.sidecars[*l].resume(),
        Fault::SidecarCutFromEtcd(l) => fleet.lbs[*l].ns.clone().unwrap().heal(),
        Fault::NginxStop(l) => fleet.lbs[*l].spawn(),
        Fault::AgentDiskFull(h) => fleet.hosts[*h].disk.as_ref().expect("small disk").free(),
        Fault::IncludeDiskFull(l) => fleet.lbs[*l].disk.as_ref().expect("small disk").free(),
        _ => {}
    }
    if let Some(m) = injected.etcd_member {
        fleet.etcd.start_member(m);
        crate::wait_for(
            "etcd quorum after a member restart",
            std::time::Duration::from_secs(30),
            || fleet.etcd.leader(),
        )
        .await;
    }
}

fn ns_of_host(fleet: &Fleet, h: usize) -> crate::netns::Ns {
    fleet.hosts[h].ns.clone().expect("host in a namespace")
}

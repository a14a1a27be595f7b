//! Hosts and LBs in network namespaces on one bridge, so a test can cut one of them off from etcd,
//! from the LBs or from everything, or make its link lose packets, without touching the others.
//!
//! Layout of one [`Net`]: a bridge `bg<k>b` with 10.99.<k>.1 (the test, the coordinator and the
//! load generator) and 10.99.<k>.2 (etcd) in the test's own namespace; each namespace `bg<k>n<i>`
//! has a veth on the bridge with 10.99.<k>.<10+i>. Cuts are nftables rules inside the namespace
//! that drop packets silently (a real partition gives no error, only silence); heal removes them.
//! Loss is an nftables rule too. Added latency would need `tc netem`, which the kernels this
//! runs on here are built without (CONFIG_NET_SCH_NETEM unset), so there is none.
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn run(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_in(ns: &str, program: &str, args: &[&str]) {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run(&all);
}

/// One bridge and its namespaces; everything is deleted on drop.
pub struct Net {
    k: u32,
    namespaces: std::sync::Mutex<Vec<String>>,
}

impl Net {
    pub fn new() -> Net {
        // A subnet number no other Net on this machine holds: creating the bridge is the claim
        // (it fails while another test or fault runner owns that number). Taking an existing
        // bridge over instead cut a concurrently running fleet off from its etcd.
        let start = std::process::id() * 7 + NEXT.fetch_add(1, Ordering::Relaxed);
        let k = (0..250)
            .map(|i| (start + i) % 250 + 1)
            .find(|k| {
                // A fixed address: a bridge left to choose its own takes the lowest address of
                // its ports and changes it whenever a port with a lower one is attached. The
                // namespaces' neighbour caches then still hold the old address, and their replies
                // to the test's side (a coordinator's smoke check) vanish until the entries
                // expire: up to a minute of silence mid-test.
                Command::new("ip")
                    .args(["link", "add", &format!("bg{k}b")])
                    .args(["address", &format!("02:62:67:00:00:{k:02x}")])
                    .args(["type", "bridge"])
                    .output()
                    .is_ok_and(|out| out.status.success())
            })
            .expect("a free bridge name bg1b..bg250b");
        let net = Net {
            k,
            namespaces: Default::default(),
        };
        net.remove_leftovers();
        let bridge = net.bridge();
        run(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway()),
            "dev",
            &bridge,
        ]);
        run(&[
            "addr",
            "add",
            &format!("{}/24", net.etcd_address()),
            "dev",
            &bridge,
        ]);
        run(&["link", "set", &bridge, "up"]);
        net
    }

    /// Namespaces and veths of this number left by a run that died without cleaning up: no live
    /// Net owns them, since their bridge did not exist until we created it.
    fn remove_leftovers(&self) {
        let prefix = format!("bg{}", self.k);
        let listed = Command::new("ip").args(["netns", "list"]).output();
        let names = listed.map(|o| String::from_utf8_lossy(&o.stdout).to_string());
        for line in names.unwrap_or_default().lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name
                .strip_prefix(&prefix)
                .is_some_and(|r| r.starts_with('n'))
            {
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
        }
        let links = Command::new("ip").args(["-o", "link", "show"]).output();
        let text = links.map(|o| String::from_utf8_lossy(&o.stdout).to_string());
        for line in text.unwrap_or_default().lines() {
            let name = line
                .split(": ")
                .nth(1)
                .unwrap_or("")
                .split('@')
                .next()
                .unwrap_or("");
            if name
                .strip_prefix(&prefix)
                .is_some_and(|r| r.starts_with('v'))
            {
                let _ = Command::new("ip").args(["link", "del", name]).output();
            }
        }
    }

    fn bridge(&self) -> String {
        format!("bg{}b", self.k)
    }

    /// The bridge's link-layer address, the one the namespaces reach the test's side by.
    pub fn bridge_mac(&self) -> String {
        link_mac(None, &self.bridge())
    }

    /// The address of this (the test's) side of the bridge: the load generator's and the
    /// coordinator's packets come from here.
    pub fn gateway(&self) -> String {
        format!("10.99.{}.1", self.k)
    }

    /// A second address on the bridge, where etcd listens: cutting a namespace off from it cuts
    /// it off from etcd only, not from the test's load.
    pub fn etcd_address(&self) -> String {
        format!("10.99.{}.2", self.k)
    }

    /// Namespace number `i` (1..=200), attached to the bridge.
    pub fn ns(&self, i: u8) -> Ns {
        let name = format!("bg{}n{i}", self.k);
        let veth = format!("bg{}v{i}", self.k);
        let peer = format!("bg{}p{i}", self.k);
        let address = format!("10.99.{}.{}", self.k, 10 + u32::from(i));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["netns", "add", &name]);
        run(&[
            "link", "add", &veth, "type", "veth", "peer", "name", &peer, "netns", &name,
        ]);
        run(&["link", "set", &veth, "master", &self.bridge(), "up"]);
        run_in(
            &name,
            "ip",
            &["addr", "add", &format!("{address}/24"), "dev", &peer],
        );
        run_in(&name, "ip", &["link", "set", &peer, "up"]);
        run_in(&name, "ip", &["link", "set", "lo", "up"]);
        // A table of this namespace's own, with one chain per direction for the cuts.
        run_in(&name, "nft", &["add", "table", "inet", "bg"]);
        for (chain, hook) in [("out", "output"), ("in", "input")] {
            run_in(
                &name,
                "nft",
                &[
                    "add",
                    "chain",
                    "inet",
                    "bg",
                    chain,
                    &format!("{{ type filter hook {hook} priority 0; }}"),
                ],
            );
        }
        self.namespaces.lock().unwrap().push(name.clone());
        Ns {
            name,
            address,
            peer,
            veth,
        }
    }
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.namespaces.lock().unwrap().iter() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .output();
    }
}

/// A namespace: one host's or one LB's network.
#[derive(Debug, Clone)]
pub struct Ns {
    pub name: String,
    /// Its address on the bridge.
    pub address: String,
    /// Its end of the veth pair.
    peer: String,
    /// The bridge's end of the veth pair.
    veth: String,
}

/// The link-layer address of `link` (in namespace `ns`, or the test's own).
fn link_mac(ns: Option<&str>, link: &str) -> String {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let out = cmd
        .args(["-br", "link", "show", link])
        .output()
        .expect("run ip");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no address for {link}: {text}"))
        .to_string()
}

impl Ns {
    /// `program args…` run inside this namespace (`ip netns exec` execs it: same pid).
    pub fn wrap(
        &self,
        program: PathBuf,
        args: Vec<std::ffi::OsString>,
    ) -> (PathBuf, Vec<std::ffi::OsString>) {
        let mut all: Vec<std::ffi::OsString> = vec![
            "netns".into(),
            "exec".into(),
            self.name.clone().into(),
            program.into(),
        ];
        all.extend(args);
        ("ip".into(), all)
    }

    fn rule(&self, chain: &str, rule: &str) {
        let mut args = vec!["add", "rule", "inet", "bg", chain];
        args.extend(rule.split_whitespace());
        run_in(&self.name, "nft", &args);
    }

    /// Silently drops every packet between this namespace and `address`, both ways.
    pub fn cut_from(&self, address: &str) {
        self.rule("out", &format!("ip daddr {address} drop"));
        self.rule("in", &format!("ip saddr {address} drop"));
    }

    /// Drops everything on its link: cut off from every other machine (its loopback still works).
    pub fn cut_all(&self) {
        self.rule("out", &format!("oifname {} drop", self.peer));
        self.rule("in", &format!("iifname {} drop", self.peer));
    }

    /// Drops `percent` of the packets it sends, at random.
    pub fn lose(&self, percent: u32) {
        self.rule(
            "out",
            &format!(
                "oifname {} numgen random mod 100 < {percent} drop",
                self.peer
            ),
        );
    }

    /// Gives the bridge's end of this namespace's veth the link-layer address `mac`.
    pub fn set_bridge_port_mac(&self, mac: &str) {
        run(&["link", "set", &self.veth, "address", mac]);
    }

    /// Removes every cut and loss.
    pub fn heal(&self) {
        for chain in ["out", "in"] {
            run_in(&self.name, "nft", &["flush", "chain", "inet", "bg", chain]);
        }
    }
}

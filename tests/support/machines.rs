//! Real test machines on the real node's bridge: what a remediation Job reaches over SSH.
//!
//! A machine is a network namespace (`plmS-I`, a veth on the node's bridge, address
//! `198.18.S.(200+I)`, no route beyond the bridge's subnet, no NAT), its own Debian 12 root (an
//! overlay on the cached `machine-root` of `scripts/node-images.sh`: openssh-server, and
//! [`PACKAGE`] at bookworm's own, older, version), `/proc` and `/dev` mounted in it, and `sshd`
//! started in the namespace and chroot with a host key of its own. Root logs in with the test
//! binary's client key. Its apt source is a flat repository bind-mounted read-only at
//! `/srv/patchloop-repo`: the fixed repository (the newest [`PACKAGE`] the host's apt knows,
//! from bookworm-security) or an empty one (a machine whose repository lacks the fix).
//!
//! Everything lives under the node's directory (the overlay, the mounts); the namespaces are
//! named after the node's slot. The node's teardown removes both (`node.rs`).

use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use super::node::Node;
use super::process::{self, ManagedChild};

/// The binary package the machines run old and the fixed repository holds new.
pub const PACKAGE: &str = "libexpat1";
/// Where a machine's apt repository is mounted, inside its root.
const REPO_MOUNT: &str = "srv/patchloop-repo";
const SSHD_TIMEOUT: Duration = Duration::from_secs(30);

/// Which repository a machine's apt sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repository {
    /// Holds the fixed [`PACKAGE`].
    Fixed,
    /// Holds nothing: an upgrade finds no newer version.
    Empty,
}

/// One running machine. Its sshd dies with the test binary; its namespace and mounts go with
/// the node's teardown.
pub struct Machine {
    pub name: String,
    pub address: Ipv4Addr,
    /// The machine's host key as a `known_hosts` line wants it: `ssh-ed25519 <key>`.
    pub host_key: String,
    /// The line for an SSH `known_hosts` file: `<address> ssh-ed25519 <key>`.
    pub known_hosts_line: String,
    root: PathBuf,
    netns: String,
    _sshd: ManagedChild,
}

/// The client key every machine accepts for root (made once per node).
pub struct ClientKey {
    pub private_key: PathBuf,
    pub public_key: String,
}

impl ClientKey {
    fn create(dir: &Path) -> Result<ClientKey, String> {
        let private_key = dir.join("id_ed25519");
        if !private_key.exists() {
            process::run(
                Command::new("ssh-keygen")
                    .args([
                        "-q",
                        "-t",
                        "ed25519",
                        "-N",
                        "",
                        "-C",
                        "patchloop-test",
                        "-f",
                    ])
                    .arg(&private_key),
            )?;
        }
        let public_key = read(&dir.join("id_ed25519.pub"))?;
        Ok(ClientKey {
            private_key,
            public_key: public_key.trim().to_owned(),
        })
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn mount(args: &[&str]) -> Result<(), String> {
    process::run(Command::new("mount").args(args))
}

fn ip(args: &[&str]) -> Result<(), String> {
    process::run(Command::new("ip").args(args))
}

/// A small `/dev` of its own (a tmpfs with the usual character devices): bind-mounting the
/// host's would copy every mount under `/dev/shm`, this node's directory included.
fn make_dev(dev: &Path) -> Result<(), String> {
    let dev_str = dev.display().to_string();
    mount(&["-t", "tmpfs", "-o", "mode=0755,size=64k", "tmpfs", &dev_str])?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        process::run(
            Command::new("mknod")
                .args(["-m", "0666"])
                .arg(dev.join(name))
                .args(["c", &major.to_string(), &minor.to_string()]),
        )?;
    }
    Ok(())
}

impl Machine {
    /// Starts machine `index` (0–49) of `node`, with `repository`.
    pub fn start(
        node: &Node,
        index: u8,
        repository: Repository,
        client: &ClientKey,
    ) -> Result<Machine, String> {
        if index >= 50 {
            return Err(format!(
                "machine index {index} is beyond the 50 a node has room for"
            ));
        }
        let slot = node.network.slot;
        let name = format!("machine-{index}");
        let address = Ipv4Addr::new(198, 18, slot, 200 + index);
        let netns = format!("plm{slot}-{index}");
        let dir = node.dir.join("machines").join(&name);
        let images = &node.images;
        let lower = images.join("machine-root");
        if !lower.join(".patchloop-complete").exists() {
            return Err(format!(
                "{} is missing: run `scripts/testenv.sh` (it runs scripts/node-images.sh)",
                lower.display()
            ));
        }

        // Root file system: an overlay on the cached root, /proc, /dev and the repository.
        let root = dir.join("root");
        for sub in ["root", "upper", "work"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("cannot create {}: {e}", dir.join(sub).display()))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        let root_str = root.display().to_string();
        mount(&["-t", "overlay", "overlay", "-o", &options, &root_str])?;
        mount(&["-t", "proc", "proc", &format!("{root_str}/proc")])?;
        make_dev(&root.join("dev"))?;
        let repo = root.join(REPO_MOUNT);
        std::fs::create_dir_all(&repo)
            .map_err(|e| format!("cannot create {}: {e}", repo.display()))?;
        let source = match repository {
            Repository::Fixed => images.join("repo-fixed"),
            Repository::Empty => {
                let empty = dir.join("repo-empty");
                std::fs::create_dir_all(&empty)
                    .map_err(|e| format!("cannot create {}: {e}", empty.display()))?;
                write(&empty.join("Packages"), "")?;
                empty
            }
        };
        let repo_str = repo.display().to_string();
        mount(&["--bind", &source.display().to_string(), &repo_str])?;
        mount(&["-o", "remount,bind,ro", &repo_str])?;
        write(
            &root.join("etc/apt/sources.list"),
            &format!("deb [trusted=yes] file:/{REPO_MOUNT} ./\n"),
        )?;

        // sshd: its own host key, root by the client key only.
        let chroot = |args: &[&str]| process::run(Command::new("chroot").arg(&root).args(args));
        chroot(&[
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            "/etc/ssh/ssh_host_ed25519_key",
        ])?;
        std::fs::create_dir_all(root.join("root/.ssh"))
            .map_err(|e| format!("cannot create root's .ssh: {e}"))?;
        write(
            &root.join("root/.ssh/authorized_keys"),
            &format!("{}\n", client.public_key),
        )?;
        std::fs::create_dir_all(root.join("run/sshd"))
            .map_err(|e| format!("cannot create /run/sshd: {e}"))?;
        let host_key = read(&root.join("etc/ssh/ssh_host_ed25519_key.pub"))?;
        let host_key = host_key
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let known_hosts_line = format!("{address} {host_key}");

        // The namespace, on the node's bridge.
        let host_veth = format!("plv{slot}x{index}");
        ip(&["netns", "add", &netns])?;
        ip(&[
            "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ])?;
        ip(&[
            "link",
            "set",
            &host_veth,
            "master",
            &node.network.bridge(),
            "up",
        ])?;
        let in_ns = |args: &[&str]| {
            let mut full = vec!["netns", "exec", netns.as_str(), "ip"];
            full.extend_from_slice(args);
            ip(&full)
        };
        in_ns(&["link", "set", "lo", "up"])?;
        in_ns(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        in_ns(&["link", "set", "eth0", "up"])?;

        let mut sshd = Command::new("ip");
        sshd.args(["netns", "exec", &netns, "chroot", &root_str])
            .args(["/usr/sbin/sshd", "-D", "-e"])
            .args(["-o", "PermitRootLogin=prohibit-password"])
            .args(["-o", "PasswordAuthentication=no"])
            .args(["-o", "UsePAM=no"])
            .args(["-o", "HostKey=/etc/ssh/ssh_host_ed25519_key"]);
        let sshd = process::spawn_logged(&format!("sshd {name}"), sshd, &dir.join("sshd.log"))?;
        let deadline = Instant::now() + SSHD_TIMEOUT;
        while TcpStream::connect_timeout(&(address, 22).into(), Duration::from_millis(200)).is_err()
        {
            if Instant::now() >= deadline {
                return Err(format!(
                    "sshd of {name} not listening at {address}:22 within {SSHD_TIMEOUT:?}:\n{}",
                    process::tail(&dir.join("sshd.log"), 20)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Machine {
            name,
            address,
            host_key,
            known_hosts_line,
            root,
            netns,
            _sshd: sshd,
        })
    }

    /// Runs `command` on the machine over SSH as root (host key pinned); returns its stdout.
    pub fn ssh(&self, client: &ClientKey, command: &str) -> Result<String, String> {
        let known_hosts = self.root.parent().unwrap_or(&self.root).join("known_hosts");
        write(&known_hosts, &format!("{}\n", self.known_hosts_line))?;
        let out = Command::new("ssh")
            .arg("-i")
            .arg(&client.private_key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .args(["-o", "ConnectTimeout=10"])
            .arg(format!("root@{}", self.address))
            .arg(command)
            .output()
            .map_err(|e| format!("cannot run ssh: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "ssh {} {command:?} failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The installed version of `package` (`dpkg-query` over SSH).
    pub fn installed_version(&self, client: &ClientKey, package: &str) -> Result<String, String> {
        self.ssh(
            client,
            &format!("dpkg-query -W -f '${{Version}}' {package}"),
        )
        .map(|v| v.trim().to_owned())
    }

    /// What the machine's sshd logged (`sshd -e`: connections, authentications).
    pub fn sshd_log(&self) -> String {
        let log = self.root.parent().unwrap_or(&self.root).join("sshd.log");
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// The network namespace's name (`ip netns`).
    pub fn netns(&self) -> &str {
        &self.netns
    }
}

/// The client key every machine of this test binary accepts (made on first use).
pub fn client_key(node: &Node) -> &'static ClientKey {
    static KEY: OnceLock<Result<ClientKey, String>> = OnceLock::new();
    match KEY.get_or_init(|| ClientKey::create(&node.dir)) {
        Ok(key) => key,
        Err(e) => panic!("{e}"),
    }
}

/// `count` new machines of `node` (indices are never reused within a test binary), the first
/// `count - empty` with the fixed repository, the rest with an empty one.
pub fn start(node: &Node, count: u8, empty: u8) -> Result<Vec<Machine>, String> {
    static NEXT_INDEX: AtomicU8 = AtomicU8::new(0);
    let client = client_key(node);
    (0..count)
        .map(|i| {
            let repository = if i + empty >= count {
                Repository::Empty
            } else {
                Repository::Fixed
            };
            let index = NEXT_INDEX.fetch_add(1, Ordering::Relaxed);
            Machine::start(node, index, repository, client)
        })
        .collect()
}

//! The fleet's etcd: etcdctl against it, its members (leader, cut off,
//! isolated), revisions and compaction, and authentication.

use std::{fs, io, net::Ipv4Addr, path::PathBuf};

use super::*;

/// Where etcd member `m` (1-based) of a multi-member fleet listens.
pub fn etcd_member_ip(m: u16) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 2 + m as u8)
}

/// The etcd user of cluster `cluster` (1-based) in a fleet with
/// [`FleetSpec::etcd_auth`].
pub fn etcd_user(cluster: u16) -> String {
    format!("fleetnet-c{cluster}")
}

impl FleetInABox {
    /// Runs `work` on a tokio runtime (2 workers) inside the underlay,
    /// where etcd and the nodes are reached.
    pub fn in_underlay<T: Send>(&self, work: impl AsyncFnOnce() -> T + Send) -> T {
        self.underlay
            .enter(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(work())
            })
            .expect("entering the underlay")
    }

    /// Runs `work` on a client of the fleet's etcd, from the underlay (for
    /// benchmarks that write many keys, where etcdctl would be too slow).
    pub fn with_etcd<T: Send>(&self, work: impl AsyncFnOnce(etcd_client::Client) -> T + Send) -> T {
        let endpoint = self.etcd.endpoint();
        self.in_underlay(async move || {
            let client = fleetnet_store::connect(&[endpoint], None)
                .await
                .expect("etcd");
            work(client).await
        })
    }

    /// Keys under `prefix` in the fleet's etcd (read with etcdctl from the
    /// underlay).
    pub fn etcd_keys(&self, prefix: &str) -> io::Result<Vec<String>> {
        let output = self.etcdctl(&["get", "--prefix", "--keys-only", prefix])?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Writes a key directly into the fleet's etcd, as a rogue or broken
    /// member could.
    pub fn etcd_put(&self, key: &str, value: &str) -> io::Result<()> {
        self.etcdctl(&["put", key, value]).map(|_| ())
    }

    /// `etcdctl <args>` against every member, from the underlay, logged in
    /// as root when etcd requires a login; fails with its stderr.
    pub fn etcdctl(&self, args: &[&str]) -> io::Result<std::process::Output> {
        let root = self
            .etcd_root
            .as_ref()
            .map(|password| format!("root:{password}"));
        netns::run(&mut self.etcdctl_as(root.as_deref(), args)?)
    }

    /// An `etcdctl <args>` command against every member, from the
    /// underlay, logged in as `user` (`name:password`) if given.
    pub fn etcdctl_as(
        &self,
        user: Option<&str>,
        args: &[&str],
    ) -> io::Result<std::process::Command> {
        self.etcdctl_command(&self.etcd_endpoints().join(","), user, args)
    }

    /// `etcdctl <args>` against etcd member `index` (0-based) alone, as
    /// root if etcd requires a login; fails with its stderr.
    pub fn etcdctl_on(&self, index: usize, args: &[&str]) -> io::Result<std::process::Output> {
        let member = self.etcd_members().nth(index).expect("no such etcd member");
        let root = self
            .etcd_root
            .as_ref()
            .map(|password| format!("root:{password}"));
        netns::run(&mut self.etcdctl_command(&member.endpoint(), root.as_deref(), args)?)
    }

    fn etcdctl_command(
        &self,
        endpoints: &str,
        user: Option<&str>,
        args: &[&str],
    ) -> io::Result<std::process::Command> {
        let mut command = self.underlay.command("etcdctl")?;
        command
            .args(["--endpoints", endpoints])
            .args(["--dial-timeout=2s", "--command-timeout=10s"])
            .args(user.map(|user| format!("--user={user}")))
            .args(args)
            .env("ETCDCTL_API", "3");
        Ok(command)
    }

    /// Client URLs of every etcd member.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd_members().map(Etcd::endpoint).collect()
    }

    /// Every etcd member, the first ([`FleetInABox::etcd`]) first.
    pub fn etcd_members(&self) -> impl Iterator<Item = &Etcd> {
        std::iter::once(&self.etcd).chain(&self.etcd_peers)
    }

    /// etcd member `index` (0-based: 0 is [`FleetInABox::etcd`]).
    pub fn etcd_member_mut(&mut self, index: usize) -> &mut Etcd {
        match index {
            0 => &mut self.etcd,
            _ => &mut self.etcd_peers[index - 1],
        }
    }

    /// The index of the member that leads the etcd cluster now, asked of
    /// every member that answers.
    pub fn etcd_leader(&self) -> io::Result<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        let root = self
            .etcd_root
            .as_ref()
            .map(|password| format!("root:{password}"));
        for etcd in self.etcd_members() {
            let output = self
                .etcdctl_command(
                    &etcd.endpoint(),
                    root.as_deref(),
                    &["endpoint", "status", "-w", "json"],
                )?
                .output()?;
            let status: serde_json::Value =
                serde_json::from_slice(&output.stdout).unwrap_or_default();
            let status = &status[0]["Status"];
            ids.push(status["header"]["member_id"].as_u64());
            if let Some(id) = status["leader"].as_u64().filter(|id| *id != 0) {
                leader = Some(id);
            }
        }
        let leader = leader.ok_or_else(|| io::Error::other("no etcd member reports a leader"))?;
        ids.iter()
            .position(|id| *id == Some(leader))
            .ok_or_else(|| io::Error::other(format!("the etcd leader {leader:x} did not answer")))
    }

    /// Cuts etcd member `index` (0-based) off the underlay (its bridge port
    /// down: neither peers nor clients reach it, and nothing tells them),
    /// or joins it again. Needs a multi-member fleet.
    pub fn cut_etcd_member(&self, index: usize, cut: bool) -> io::Result<()> {
        assert!(
            !self.etcd_netns.is_empty(),
            "cutting an etcd member off needs FleetSpec::etcd_members > 1"
        );
        let state = if cut { "down" } else { "up" };
        self.underlay
            .ip(&format!("link set etcd{} {state}", index + 1))
            .map(|_| ())
    }

    /// Cuts etcd member `index` (0-based) off from its peers only (routes
    /// between it and each of them blackholed on both ends), so that it
    /// loses its leader while clients still reach it; or lets it talk to
    /// them again.
    pub fn isolate_etcd_member(&self, index: usize, isolate: bool) -> io::Result<()> {
        assert!(
            index < self.etcd_netns.len(),
            "isolating an etcd member needs FleetSpec::etcd_members > 1"
        );
        let verb = if isolate { "add" } else { "del" };
        let ip = |i: usize| etcd_member_ip(i as u16 + 1);
        for peer in (0..self.etcd_netns.len()).filter(|peer| *peer != index) {
            self.etcd_netns[index].ip(&format!("route {verb} blackhole {}/32", ip(peer)))?;
            self.etcd_netns[peer].ip(&format!("route {verb} blackhole {}/32", ip(index)))?;
        }
        Ok(())
    }

    /// etcd's current revision.
    pub fn etcd_revision(&self) -> io::Result<i64> {
        let output = self.etcdctl(&["get", "--limit=1", "-w", "json", "/"])?;
        let response: serde_json::Value =
            serde_json::from_slice(&output.stdout).map_err(io::Error::other)?;
        response["header"]["revision"]
            .as_i64()
            .ok_or_else(|| io::Error::other("etcdctl get printed no revision"))
    }

    /// Compacts etcd's history up to now: a watch from before is told it
    /// fell behind.
    pub fn etcd_compact(&self) -> io::Result<i64> {
        let revision = self.etcd_revision()?;
        self.etcdctl(&["compact", &revision.to_string()])?;
        Ok(revision)
    }

    /// Where the password of etcd user `user` is kept.
    pub fn etcd_password_file(&self, user: &str) -> PathBuf {
        self.workdir.join(format!("etcd-{user}.password"))
    }

    /// `name:password` of cluster `cluster`'s etcd user.
    pub fn etcd_login(&self, cluster: u16) -> io::Result<String> {
        let user = etcd_user(cluster);
        let password = fs::read_to_string(self.etcd_password_file(&user))?;
        Ok(format!("{user}:{}", password.trim_end()))
    }

    /// `fleetnet <args>` as the fleet's admin (etcd's root when etcd
    /// requires a login), from the underlay: what `cluster` and `fleet`
    /// commands are run as.
    pub fn fleetnet_admin(&self, args: &[&str]) -> io::Result<std::process::Output> {
        let mut command = self.underlay.command(agent_binary())?;
        command
            .args(args)
            .arg("--etcd")
            .arg(self.etcd_endpoints().join(","));
        if self.etcd_root.is_some() {
            command
                .args(["--etcd-user", "root", "--etcd-password-file"])
                .arg(self.etcd_password_file("root"));
        }
        command.output()
    }

    /// Turns on etcd's authentication: root, then a user and role per
    /// cluster ([`fleetnet_store::roles::cluster_role`], as the
    /// recipe in docs/operations.md does it with etcdctl), then `auth enable`.
    pub(super) fn enable_etcd_auth(&mut self) -> io::Result<()> {
        let password = |user: &str| -> io::Result<String> {
            let password = format!("{user}-{}", unique_name());
            fs::write(self.etcd_password_file(user), format!("{password}\n"))?;
            Ok(password)
        };
        let root = password("root")?;
        self.etcdctl(&["user", "add", "root", "--new-user-password", &root])?;
        for cluster in 1..=self.spec.clusters.min(self.spec.etcd_users) {
            let user = etcd_user(cluster);
            let secret = password(&user)?;
            self.etcdctl(&["user", "add", &user, "--new-user-password", &secret])?;
            self.etcdctl(&["role", "add", &user])?;
            for grant in fleetnet_store::roles::cluster_role(&format!("c{cluster}"), cluster) {
                let command = grant.etcdctl(&user);
                let args: Vec<&str> = command.split_whitespace().skip(1).collect();
                self.etcdctl(&args)?;
            }
            self.etcdctl(&["user", "grant-role", &user, &user])?;
        }
        self.etcdctl(&["auth", "enable"])?;
        self.etcd_root = Some(root);
        Ok(())
    }
}

//! The certificates `fleetnet cluster join` issues, against an etcd that
//! requires TLS client certificates and maps their common name to a user
//! (`--client-cert-auth` with authentication on), as a real fleet runs it:
//! a joined cluster's certificate alone (no password) writes its own keys
//! and no other cluster's, and after `fleetnet cluster retire` it
//! authenticates as nobody, also once the name has joined again.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use etcd_client::Client;
use fleetnet_store::{self as kv, TlsFiles, keys};
use fleetnet_testing::{
    etcd::{Etcd, EtcdTls},
    fleet_in_a_box::agent_binary,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `fleetnet <args>` as etcd's root, over TLS; panics unless it succeeds.
fn admin(etcd: &Etcd, tls: &EtcdTls, root_password: &Path, args: &[&str]) -> String {
    let output = Command::new(agent_binary())
        .args(args)
        .args(["--etcd", &etcd.endpoint(), "--etcd-ca"])
        .arg(&tls.ca)
        .arg("--etcd-cert")
        .arg(&tls.client_cert)
        .arg("--etcd-key")
        .arg(&tls.client_key)
        .args(["--etcd-user", "root", "--etcd-password-file"])
        .arg(root_password)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "fleetnet {args:?}: {said}");
    said
}

/// A client holding only the certificate of an overlay in `dir`.
async fn with_certificate(etcd: &Etcd, tls: &EtcdTls, dir: &Path) -> Client {
    let files = TlsFiles {
        ca_file: tls.ca.clone(),
        cert_file: Some(dir.join("etcd-client/tls.crt")),
        key_file: Some(dir.join("etcd-client/tls.key")),
    };
    kv::connect(&[etcd.endpoint()], Some(&files)).await.unwrap()
}

async fn put(client: &mut Client, key: &str) -> Result<(), String> {
    client
        .put(key, "x", None)
        .await
        .map(|_| ())
        .map_err(|error| error.to_string())
}

#[test]
fn a_joined_clusters_certificate_is_its_etcd_user_until_it_retires() {
    let dir = std::env::temp_dir().join(format!("fleetnet-join-certs-{}", std::process::id()));
    let tls = EtcdTls::generate(&dir).unwrap();
    let mut etcd = Etcd::start_local_tls(tls.clone()).unwrap();
    let root_password = dir.join("root.password");
    std::fs::write(&root_password, "root-secret\n").unwrap();
    runtime().block_on(async {
        let files = TlsFiles {
            ca_file: tls.ca.clone(),
            cert_file: Some(tls.client_cert.clone()),
            key_file: Some(tls.client_key.clone()),
        };
        let mut client = kv::connect(&[etcd.endpoint()], Some(&files)).await.unwrap();
        client.user_add("root", "root-secret", None).await.unwrap();
        client.role_add("root").await.unwrap();
        client.user_grant_role("root", "root").await.unwrap();
        client.auth_enable().await.unwrap();
    });

    // The fleet's CA, trusted by etcd beside the one of its own clients.
    let fleet_ca = dir.join("fleet-ca.crt");
    admin(
        &etcd,
        &tls,
        &root_password,
        &[
            "fleet",
            "ca",
            "init",
            "--out",
            &fleet_ca.display().to_string(),
        ],
    );
    let bundle = format!(
        "{}{}",
        std::fs::read_to_string(&tls.ca).unwrap(),
        std::fs::read_to_string(&fleet_ca).unwrap()
    );
    std::fs::write(&tls.ca, bundle).unwrap();
    etcd.restart().unwrap();

    let join = |name: &str, cidr: &str, out: &PathBuf| {
        admin(
            &etcd,
            &tls,
            &root_password,
            &[
                "cluster",
                "join",
                name,
                "--pod-cidr",
                cidr,
                "--out",
                &out.display().to_string(),
            ],
        )
    };
    let (c1, c2) = (dir.join("c1"), dir.join("c2"));
    join("c1", "10.1.0.0/16", &c1);
    join("c2", "10.2.0.0/16", &c2);
    let own = keys::endpoint("c1", "10.1.0.5".parse().unwrap());
    runtime().block_on(async {
        let mut as_c1 = with_certificate(&etcd, &tls, &c1).await;
        put(&mut as_c1, &own)
            .await
            .expect("c1's certificate writes c1's keys");
        for other in [
            keys::endpoint("c2", "10.2.0.5".parse().unwrap()),
            keys::member("c1"),
            fleetnet_store::fleet_keys::ca(),
        ] {
            let refused = put(&mut as_c1, &other).await;
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|error| error.contains("permission denied")),
                "c1's certificate wrote {other}: {refused:?}"
            );
        }
        let mut as_c2 = with_certificate(&etcd, &tls, &c2).await;
        put(
            &mut as_c2,
            &keys::endpoint("c2", "10.2.0.5".parse().unwrap()),
        )
        .await
        .expect("c2's certificate writes c2's keys");
    });

    // Joining again with the same parameters issues new credentials.
    let c2_again = dir.join("c2-again");
    let said = join("c2", "10.2.0.0/16", &c2_again);
    assert!(
        said.contains("had joined: new credentials issued"),
        "{said}"
    );
    runtime().block_on(async {
        let mut as_c2 = with_certificate(&etcd, &tls, &c2_again).await;
        put(
            &mut as_c2,
            &keys::endpoint("c2", "10.2.0.6".parse().unwrap()),
        )
        .await
        .expect("c2's new certificate writes c2's keys");
    });
    let said = admin(
        &etcd,
        &tls,
        &root_password,
        &["cluster", "retire", "c1", "--drain-timeout", "0s"],
    );
    assert!(said.contains("cluster c1 retired"), "{said}");
    // The same name joins again: a new user, and the old certificate
    // names none.
    let c1_again = dir.join("c1-again");
    let said = join("c1", "10.1.0.0/16", &c1_again);
    assert!(said.contains("etcd user fleetnet-c1-g2"), "{said}");
    runtime().block_on(async {
        let mut retired = with_certificate(&etcd, &tls, &c1).await;
        let refused = put(&mut retired, &own).await;
        assert!(
            refused.is_err(),
            "the retired cluster's certificate still writes"
        );
        let mut rejoined = with_certificate(&etcd, &tls, &c1_again).await;
        put(&mut rejoined, &own)
            .await
            .expect("the new certificate writes c1's keys");
    });
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}

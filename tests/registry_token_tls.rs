//! A registry that wants bearer tokens (the docker token protocol, as
//! Docker Hub and most registries with accounts have it): plyfs gets a
//! token from the realm the registry names, with the user's credentials,
//! then pulls, mounts, commits and pushes; the pushed image pulls back
//! with the same digests. Refused or missing credentials: one line, the
//! store as it was. And a registry that speaks TLS with a certificate
//! nobody trusts: refused (never retried in plain http) until
//! `--tls-verify=false`.
//!
//! Needs root, docker-registry, skopeo, openssl and fuse3; under CI=true
//! a missing one fails.

mod common;

use std::sync::atomic::Ordering;

use common::images::*;
use common::registry::{Registry, committed_digest, plyfs_fails, plyfs_run, store_state};
use common::token::TokenServer;
use common::users::require_tools;
use common::*;

#[test]
fn bearer_token_registry_pull_commit_push() {
    if !(require_mount_privileges() && require_tools(&["docker-registry", "skopeo", "openssl"])) {
        return;
    }
    let s = open_scratch();
    let tokens = TokenServer::start(&s.path("token"));
    let reg = Registry::start_token(&s.path("registry"), &tokens.realm, &tokens.cert);
    let a = write_archive(&s, "a.tar", &[image_a()]);
    reg.seed(&a, "plyfs-test/a:1");
    let (a1, a2) = (reg.image("plyfs-test/a:1"), reg.image("plyfs-test/a:2"));
    let creds = reg.creds.clone().unwrap();
    let store = s.path("store");
    let nowhere = s.path("no-auth.json");
    let anon = [("REGISTRY_AUTH_FILE", nowhere.as_os_str())];

    std::fs::create_dir_all(&store).unwrap();
    plyfs_run(&store, &["image", "ls"], &[]);
    let before = store_state(&store);
    let refused = tokens.refused.load(Ordering::SeqCst);
    plyfs_fails(
        &store,
        &["image", "pull", "-q", "--creds", "plyfs:wrong", &a1],
        &anon,
        "refused the credentials of plyfs",
    );
    plyfs_fails(&store, &["image", "pull", "-q", &a1], &anon, "unauthorized");
    assert!(
        tokens.refused.load(Ordering::SeqCst) > refused,
        "the token server said no"
    );
    assert!(before == store_state(&store), "the store as it was");

    let issued = tokens.issued.load(Ordering::SeqCst);
    plyfs_run(
        &store,
        &["image", "pull", "-q", "--creds", &creds, &a1],
        &anon,
    );
    assert!(
        tokens.issued.load(Ordering::SeqCst) > issued,
        "a token was fetched"
    );
    let (upper, mp) = (s.path("ctr/upper"), s.path("ctr/mnt"));
    {
        let _m = mount_image(&store, &a1, Some(&upper), &mp);
        assert_eq!(
            std::fs::read_to_string(mp.join("etc/motd")).unwrap(),
            "hello v2\n"
        );
        std::fs::write(mp.join("etc/motd"), "changed\n").unwrap();
    }
    let (out, _) = plyfs_run(
        &store,
        &[
            "commit",
            upper.to_str().unwrap(),
            "--image",
            &a1,
            "--tag",
            &a2,
            "--gzip",
        ],
        &anon,
    );
    let layer = committed_digest(&out);
    let (pushed, _) = plyfs_run(
        &store,
        &["image", "push", "-q", "--creds", &creds, &a2],
        &anon,
    );
    let info = reg.inspect("plyfs-test/a:2");
    assert_eq!(info["Digest"].as_str(), Some(pushed.trim()));
    assert_eq!(
        info["Layers"].as_array().unwrap().last().unwrap().as_str(),
        Some(layer.as_str())
    );

    let elsewhere = s.path("elsewhere");
    plyfs_run(
        &elsewhere,
        &["image", "pull", "-q", "--creds", &creds, &a2],
        &anon,
    );
    let _m = mount_image(&elsewhere, &a2, None, &s.path("mnt-elsewhere"));
    assert_eq!(
        std::fs::read_to_string(s.path("mnt-elsewhere/etc/motd")).unwrap(),
        "changed\n"
    );
}

#[test]
fn self_signed_tls_registry_needs_tls_verify_false() {
    if !(require_mount_privileges() && require_tools(&["docker-registry", "skopeo", "openssl"])) {
        return;
    }
    let s = open_scratch();
    let reg = Registry::start_tls(&s.path("registry"));
    let a = write_archive(&s, "a.tar", &[image_a()]);
    reg.seed(&a, "plyfs-test/a:1");
    let (a1, a2) = (reg.image("plyfs-test/a:1"), reg.image("plyfs-test/copy:1"));
    let store = s.path("store");
    std::fs::create_dir_all(&store).unwrap();
    plyfs_run(&store, &["image", "ls"], &[]);
    let before = store_state(&store);
    plyfs_fails(
        &store,
        &["image", "pull", "-q", &a1],
        &[],
        "TLS certificate is not trusted",
    );
    assert!(before == store_state(&store));
    plyfs_run(
        &store,
        &["image", "pull", "-q", "--tls-verify=false", &a1],
        &[],
    );
    plyfs_run(
        &store,
        &["image", "push", "-q", "--tls-verify=false", &a1, &a2],
        &[],
    );
    assert_eq!(
        reg.inspect("plyfs-test/copy:1")["Layers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

//! The OpenLDAP harness itself (`common::slapd`), against the real `slapd`
//! and the real ldap-utils clients: binds, the memberof overlay, TLS with the
//! test CA, ACLs, the search log, stop and restart, servers side by side.
//! The LDAP identity tests build on what these show.

use crate::common;

use std::process::Output;
use std::time::Instant;

use common::clients::stderr_of;
use common::slapd::{ROOT_DN, ROOT_PASSWORD, SUFFIX, Slapd, SlapdOptions, tree};

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn assert_ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        stderr_of(out)
    );
    stdout_of(out)
}

/// The values of `attr` in `ldapsearch -LLL` output, in order.
fn values(ldif: &str, attr: &str) -> Vec<String> {
    let prefix = format!("{attr}: ");
    ldif.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect()
}

/// `memberOf` of `dn` as the root DN sees it.
fn member_of(slapd: &Slapd, dn: &str) -> Vec<String> {
    let out = slapd.search(
        Some((ROOT_DN, ROOT_PASSWORD)),
        dn,
        "(objectClass=*)",
        &["memberOf"],
    );
    let mut groups = values(&assert_ok(&out, "search memberOf"), "memberOf");
    groups.sort();
    groups
}

#[test]
fn a_user_binds_with_the_right_password_only() {
    let slapd = Slapd::start_seeded(SlapdOptions::default());
    for user in tree::USERS {
        let out = slapd.whoami(&slapd.url(), &user.dn(), user.password, &[]);
        let who = assert_ok(&out, user.uid);
        assert_eq!(
            who.trim(),
            format!("dn:{}", user.dn()),
            "hashed: {}",
            user.hashed
        );

        let out = slapd.whoami(&slapd.url(), &user.dn(), "wrong-password", &[]);
        assert_eq!(
            out.status.code(),
            Some(49),
            "{}: {}",
            user.uid,
            stderr_of(&out)
        );
        assert!(stderr_of(&out).contains("Invalid credentials"));
    }
    let out = slapd.whoami(&slapd.url(), tree::SERVICE_DN, tree::SERVICE_PASSWORD, &[]);
    assert_ok(&out, "service account");
    let out = slapd.whoami(&slapd.url(), &tree::user_dn("nobody"), "x", &[]);
    assert_eq!(out.status.code(), Some(49), "an unknown user is refused");
}

#[test]
fn memberof_is_there_only_with_the_overlay() {
    let with = Slapd::start_seeded(SlapdOptions {
        memberof: true,
        ..Default::default()
    });
    let without = Slapd::start_seeded(SlapdOptions::default());
    let groups = |names: &[&str]| {
        let mut dns: Vec<String> = names.iter().map(|n| tree::group_dn(n)).collect();
        dns.sort();
        dns
    };
    assert_eq!(
        member_of(&with, &tree::ALICE.dn()),
        groups(&[tree::DEVELOPERS, tree::ADMINS])
    );
    assert_eq!(
        member_of(&with, &tree::BOB.dn()),
        groups(&[tree::DEVELOPERS])
    );
    assert_eq!(
        member_of(&with, &tree::CAROL.dn()),
        groups(&[tree::STAFF_RING])
    );
    assert_eq!(member_of(&with, &tree::DAVE.dn()), groups(&[]));
    // The cycle, both ways, and one level only.
    let all_staff = tree::group_dn(tree::ALL_STAFF);
    let ring = tree::group_dn(tree::STAFF_RING);
    assert_eq!(member_of(&with, &ring), groups(&[tree::ALL_STAFF]));
    assert_eq!(member_of(&with, &all_staff), groups(&[tree::STAFF_RING]));
    assert_eq!(
        member_of(&with, &tree::group_dn(tree::DEVELOPERS)),
        groups(&[tree::ALL_STAFF])
    );

    for user in tree::USERS {
        assert_eq!(member_of(&without, &user.dn()), groups(&[]), "{}", user.uid);
    }
    // The same groups exist in both trees.
    let members = without.search(
        Some((tree::SERVICE_DN, tree::SERVICE_PASSWORD)),
        &ring,
        "(objectClass=groupOfNames)",
        &["member"],
    );
    let mut members = values(&assert_ok(&members, "ring members"), "member");
    members.sort();
    assert_eq!(members, vec![all_staff, tree::CAROL.dn()]);
}

#[test]
fn ldaps_and_starttls_verify_the_test_ca() {
    let slapd = Slapd::start_seeded(SlapdOptions {
        tls: true,
        ..Default::default()
    });
    let ca = std::fs::read_to_string(slapd.ca_cert()).expect("read CA");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    let key = std::fs::read_to_string(slapd.dir().join("tls/server.key")).expect("key");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");

    let alice = tree::ALICE;
    let ldaps = slapd.ldaps_url();
    let starttls = slapd.url();
    let cases: [(&str, &[&str]); 2] = [(&ldaps, &[]), (&starttls, &["-ZZ"])];
    for (url, extra) in cases {
        let out = slapd.whoami(url, &alice.dn(), alice.password, extra);
        let who = assert_ok(&out, &format!("{url} {extra:?}"));
        assert_eq!(who.trim(), format!("dn:{}", alice.dn()));
    }
    let log = slapd.log();
    assert!(log.contains(" STARTTLS"), "{log}");
    assert!(log.contains("TLS established"), "{log}");

    // Without the CA, LDAPTLS_REQCERT=demand refuses the server.
    for (url, extra) in cases {
        let mut cmd = slapd.command("ldapwhoami");
        cmd.env_remove("LDAPTLS_CACERT").args(extra).args([
            "-x",
            "-H",
            url,
            "-D",
            &alice.dn(),
            "-w",
            alice.password,
        ]);
        let out = common::clients::output_within(cmd, None, common::slapd::CLIENT_DEADLINE);
        assert!(!out.status.success(), "{url} {extra:?} without the CA");
        let expected = if extra.is_empty() {
            "Can't contact LDAP server"
        } else {
            "ldap_start_tls"
        };
        assert!(stderr_of(&out).contains(expected), "{}", stderr_of(&out));
    }
}

#[test]
fn acls_let_users_bind_and_the_service_read_but_nobody_read_passwords() {
    let slapd = Slapd::start_seeded(SlapdOptions::default());
    let service = Some((tree::SERVICE_DN, tree::SERVICE_PASSWORD));
    let all = ["uid", "member", "uniqueMember", "memberUid", "userPassword"];

    let people = slapd.search(service, tree::PEOPLE, "(uid=*)", &all);
    let people = assert_ok(&people, "service reads people");
    let mut uids = values(&people, "uid");
    uids.sort();
    assert_eq!(uids, ["alice", "bob", "carol", "dave"]);
    assert!(!people.contains("userPassword"), "{people}");
    let groups = slapd.search(service, tree::GROUPS, "(cn=*)", &all);
    let groups = assert_ok(&groups, "service reads groups");
    assert_eq!(values(&groups, "uniqueMember").len(), 2, "{groups}");
    assert_eq!(values(&groups, "memberUid"), ["alice", "bob"]);

    // A user reads their own entry, without its password, and nothing else:
    // not even the suffix, which slapd then calls missing.
    let alice = tree::ALICE;
    let bound = Some((alice.dn(), alice.password));
    let bound = bound.as_ref().map(|(dn, pw)| (dn.as_str(), *pw));
    let own = slapd.search(bound, &alice.dn(), "(objectClass=*)", &all);
    let own = assert_ok(&own, "alice reads her entry");
    assert_eq!(values(&own, "uid"), ["alice"], "{own}");
    assert!(!own.contains("userPassword"), "{own}");
    let above = slapd.search(bound, SUFFIX, "(objectClass=*)", &all);
    assert_eq!(
        above.status.code(),
        Some(32),
        "No such object: {}",
        stderr_of(&above)
    );
    let bob = slapd.search(bound, &tree::BOB.dn(), "(objectClass=*)", &all);
    assert_eq!(
        bob.status.code(),
        Some(32),
        "alice reads not bob: {}",
        stderr_of(&bob)
    );
    // Anonymous sees nothing.
    let anonymous = slapd.search(None, SUFFIX, "(objectClass=*)", &[]);
    let anonymous = stdout_of(&anonymous);
    assert!(!anonymous.contains("dn:"), "{anonymous}");
    // The root DN is above the ACLs.
    let root = slapd.search(Some((ROOT_DN, ROOT_PASSWORD)), &alice.dn(), "(uid=*)", &all);
    let root = assert_ok(&root, "root reads");
    assert_eq!(values(&root, "userPassword").len(), 0, "base64: {root}");
    assert!(root.contains("userPassword:: "), "{root}");
}

#[test]
fn the_log_shows_each_search_filter_as_sent() {
    let slapd = Slapd::start_seeded(SlapdOptions::default());
    let service = Some((tree::SERVICE_DN, tree::SERVICE_PASSWORD));
    // An escaped `*` is a literal asterisk: it matches no one.
    let literal = slapd.search(service, tree::PEOPLE, r"(uid=\2a)", &["uid"]);
    assert_eq!(assert_ok(&literal, "literal star"), "");
    let wildcard = slapd.search(service, tree::PEOPLE, "(uid=*)", &["uid"]);
    assert_eq!(values(&assert_ok(&wildcard, "wildcard"), "uid").len(), 4);

    // Read at once: slapd logs SRCH before it answers.
    assert_eq!(
        slapd.searches_with_filter(r"(uid=\2A)"),
        1,
        "{}",
        slapd.log()
    );
    assert_eq!(slapd.searches_with_filter("(uid=*)"), 1);
    assert_eq!(
        slapd.searches_with_filter(r"(uid=\2a)"),
        0,
        "upper-case hex"
    );
    // The seed's ldapadd, ldapmodify and the readiness probe search nothing.
    assert_eq!(slapd.search_filters(), [r"(uid=\2A)", "(uid=*)"]);
    assert!(
        slapd
            .log_lines()
            .iter()
            .any(|l| l.contains(&format!("BIND dn=\"{}\"", tree::SERVICE_DN))),
        "{}",
        slapd.log()
    );
}

#[test]
fn stop_and_restart_keep_the_ports_and_the_data() {
    let mut slapd = Slapd::start_seeded(SlapdOptions {
        memberof: true,
        tls: true,
    });
    let (port, tls_port) = (slapd.port(), slapd.tls_port());
    slapd.add(&format!(
        "dn: {}\nobjectClass: inetOrgPerson\nuid: erin\ncn: erin\nsn: erin\nuserPassword: erin-password\n",
        tree::user_dn("erin")
    ));
    let erin = tree::user_dn("erin");

    slapd.stop();
    assert!(!slapd.is_running());
    let out = slapd.whoami(&slapd.url(), &erin, "erin-password", &[]);
    assert_eq!(out.status.code(), Some(255), "down: {}", stderr_of(&out));
    assert!(stderr_of(&out).contains("Can't contact LDAP server"));

    slapd.restart();
    assert!(slapd.is_running());
    assert_eq!((slapd.port(), slapd.tls_port()), (port, tls_port));
    assert_ok(
        &slapd.whoami(&slapd.url(), &erin, "erin-password", &[]),
        "after restart",
    );
    let ldaps = slapd.ldaps_url();
    assert_ok(
        &slapd.whoami(&ldaps, &erin, "erin-password", &[]),
        "ldaps after restart",
    );
    assert_eq!(
        member_of(&slapd, &tree::ALICE.dn()).len(),
        2,
        "the overlay's data too"
    );
    // A restart of a running server, and a delete that sticks.
    slapd.delete(&erin);
    slapd.restart();
    let out = slapd.whoami(&slapd.url(), &erin, "erin-password", &[]);
    assert_eq!(out.status.code(), Some(49), "deleted: {}", stderr_of(&out));
    assert_eq!(slapd.log().matches("slapd starting").count(), 3);
}

#[test]
fn two_servers_run_side_by_side() {
    let one = Slapd::start_seeded(SlapdOptions::default());
    let two = Slapd::start(SlapdOptions::default());
    assert_ne!(one.port(), two.port());
    assert_ne!(one.dir(), two.dir());
    two.add("dn: dc=example,dc=org\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Two\n");
    let alice = tree::ALICE;
    assert_ok(
        &one.whoami(&one.url(), &alice.dn(), alice.password, &[]),
        "one",
    );
    let out = two.whoami(&two.url(), &alice.dn(), alice.password, &[]);
    assert_eq!(out.status.code(), Some(49), "two has no alice");
    let root = Some((ROOT_DN, ROOT_PASSWORD));
    let o = |s: &Slapd| values(&stdout_of(&s.search(root, SUFFIX, "(o=*)", &["o"])), "o");
    assert_eq!(
        (o(&one), o(&two)),
        (vec!["Example".into()], vec!["Two".to_owned()])
    );
    drop(one);
    assert_ok(
        &two.whoami(&two.url(), ROOT_DN, ROOT_PASSWORD, &[]),
        "two outlives one",
    );
}

/// Dozens of tests each start their own: a start (to the first answered
/// bind) must stay far below a second, alone and eight at once. Printed for
/// the record (`--nocapture`); the bound leaves room for a loaded machine.
#[test]
fn a_start_is_quick() {
    let full = SlapdOptions {
        memberof: true,
        tls: true,
    };
    for options in [SlapdOptions::default(), full] {
        let started = Instant::now();
        let slapd = Slapd::start(options);
        let up = started.elapsed();
        slapd.seed();
        let seeded = started.elapsed();
        drop(slapd);
        let stopped = started.elapsed();
        eprintln!(
            "slapd {options:?}: answers after {up:?}, seeded after {seeded:?}, stopped after {stopped:?}"
        );
        assert!(up.as_secs() < 5, "{options:?} took {up:?}");
    }
    let started = Instant::now();
    let starts: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || (Slapd::start(full), started.elapsed())))
        .collect();
    let servers: Vec<_> = starts
        .into_iter()
        .map(|t| t.join().expect("start"))
        .collect();
    let slowest = servers.iter().map(|(_, up)| *up).max().expect("eight");
    eprintln!("slapd {full:?}, eight at once: all answer after {slowest:?}");
    assert!(slowest.as_secs() < 10, "eight at once took {slowest:?}");
}

//! Section `ldap`: logins against a directory. A private slapd (the test
//! suite's harness: Debian's OpenLDAP, mdb, `-d stats` logging to a file)
//! holds the test tree plus [`USERS`] bench users, all members of one
//! `groupOfNames`. Two more Portcullis serve its users after the users file
//! (which does not know them): one with the login cache off, so that every
//! token request is a cold login, one with the default cache.
//!
//! A cold login is three directory operations: search the user on a
//! pooled service connection, then at once bind as the found DN on a pooled
//! bind connection and search the user's groups (`(member={dn})`) on the
//! service one. The reference does the same three, one after the other, in
//! this process, with `ldap3` on two connections of its own per client (one
//! bound once as the service), so the ratios show what Portcullis adds
//! around them: HTTP, the limiter, the policy, an ES256 signature and its
//! pool. Plain binds with as many clients are printed beside, for what
//! slapd alone serves of its cheapest operation.
//!
//! slapd runs on one core and everything else (both measured Portcullis,
//! started there so that each runtime is sized for one core; wrk; this
//! harness' clients, on a one-thread runtime bound there) on the other, as a
//! directory runs on a machine of its own: on two shared cores the CPU
//! Portcullis spends per login (HTTP, the signature, its LDAP client) is
//! taken from slapd, and the ratios measured which process the scheduler
//! favoured (0.65× with 64 clients, 1.4–1.5× one login's latency, on
//! 2026-12-02) rather than whether Portcullis or its pool holds the
//! directory back. The cached-issuance row shares the cores, as the
//! `tokens` section does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use data_encoding::BASE64;
use ldap3::{Ldap, LdapConnAsync, Scope, SearchEntry};
use portcullis::auth::identity::ldap::LdapSource;
use portcullis::auth::identity::{Login, Source};
use portcullis::config;

use crate::Options;
use crate::blobs::cpu_seconds;
use crate::report::{Better, Row};
use crate::servers::{self, Servers, Target};
use crate::slapd::{Slapd, SlapdOptions, tree};
use crate::small::{self, LoadResult};

/// Directory users the load rotates through.
const USERS: usize = 64;
/// Clients at once, as wrk's `-c64`.
const CLIENTS: usize = 64;
/// Sequential logins timed for the latency rows.
const ROUNDS: usize = 2000;
/// How long the direct load runs, as wrk's measured run (`-d10s`).
const LOAD: Duration = Duration::from_secs(10);
const GROUP: &str = "bench-team";
const REPOSITORY: &str = "bench-ldap/app";

const COLD_NOTE: &str = "the user search, then the bind and the group search at once on two \
    pooled connections, plus the HTTP request, the policy and an ES256 signature (the cached row \
    below); the reference runs the three operations one after the other";
const SOURCE_NOTE: &str = "the directory part of a cold login alone: `LdapSource::login` called \
    in the harness, the bind and the group search overlapped";
const CACHED_ONE_NOTE: &str = "what a login costs besides the directory: one HTTP request, the \
    keyed cache lookup, the policy and an ES256 signature";
const CONCURRENT_NOTE: &str = "slapd's core, saturated in both runs; Portcullis keeps at most \
    pool_size (16) logins at the directory at once, on 16 connections of each kind, where the \
    reference holds 128 connections; from one address at most 20 logins are checked at once (the \
    failed-login limiter's in-flight bound), the rest wait";
const WARM_NOTE: &str = "as for file users: the keyed login-cache lookup, the policy and an \
    ES256 signature; the directory is not asked";

fn uid(i: usize) -> String {
    format!("bench-user-{i:02}")
}

fn password(i: usize) -> String {
    format!("bench-password-{i:02}")
}

pub async fn run(servers: &Servers, _options: &Options) -> Vec<Row> {
    let slapd = tokio::task::spawn_blocking(|| {
        let slapd = Slapd::start_seeded(SlapdOptions::default());
        slapd.add(&bench_ldif());
        slapd
    })
    .await
    .expect("slapd");
    let slapd_pid: u32 = std::fs::read_to_string(slapd.dir().join("slapd.pid"))
        .expect("slapd.pid")
        .trim()
        .parse()
        .expect("slapd pid");
    let url = slapd.url();
    eprintln!("slapd at {url}");

    // The directory on a core of its own, as on a machine of its own, and
    // what measures logins on the other: the two Portcullis it asks (started
    // there, so that each runtime is sized for one core), wrk, and this
    // harness' clients (a one-thread runtime on a thread bound there). On
    // one core there is nothing to split.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let side = (cores >= 2).then_some("1");
    if side.is_some() {
        pin("0", slapd_pid);
    }
    let (_cold_proc, cold) = start(servers, &url, "cold", 0, side);
    let (_cached_proc, cached) = start(servers, &url, "cached", 60, side);
    let (_warm_proc, warm) = start(servers, &url, "warm", 60, None);
    let script = servers.path("ldap/logins.lua");
    std::fs::write(&script, rotation_script()).expect("wrk script");
    let source_config = config_path(servers, "cold");
    let logins = {
        let url = url.clone();
        std::thread::spawn(move || {
            if side.is_some() {
                pin_this_thread(1);
            }
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(measure_logins(
                    &url,
                    slapd_pid,
                    [&cold, &cached],
                    &source_config,
                    &script,
                ))
        })
        .join()
        .expect("the login measurements")
    };
    if side.is_some() {
        pin(&format!("0-{}", cores - 1), slapd_pid);
    }

    // Cached, with the cores shared as in the `tokens` section: the
    // directory is asked once per credential.
    let client = reqwest::Client::new();
    let access = token_access(&client, &warm, 0).await;
    assert!(
        access.contains(REPOSITORY),
        "no pull for a directory user: {access}"
    );
    let header = format!("Authorization: {}", basic(0));
    let issued = small::wrk(&token_url(&warm), &[header.as_str()]).await;
    drop(slapd);
    let Logins {
        through,
        cached_one,
        in_source,
        direct,
        concurrent,
        direct_rate,
        bind_rate,
    } = logins;

    let reference = "the same operations, ldap3 in-process";
    vec![
        Row::new(
            "LDAP login, cold, /token, p50",
            "ms",
            through.0,
            Better::Lower,
        )
        .against(reference, direct.0)
        .target(1.0 / 1.3)
        .note(COLD_NOTE),
        Row::new(
            "LDAP login, cold, /token, p99",
            "ms",
            through.1,
            Better::Lower,
        )
        .against(reference, direct.1)
        .target(1.0 / 1.3),
        Row::new(
            "LDAP login, cold, the identity source in-process, p50",
            "ms",
            in_source.0,
            Better::Lower,
        )
        .against(reference, direct.0)
        .note(SOURCE_NOTE),
        Row::new(
            "LDAP login, cached, /token, one client, p50",
            "ms",
            cached_one.0,
            Better::Lower,
        )
        .note(CACHED_ONE_NOTE),
        Row::new(
            "LDAP logins, cold, 64 clients",
            "req/s",
            concurrent.requests_per_sec,
            Better::Higher,
        )
        .against("the same operations, 64 ldap3 clients", direct_rate)
        .target(0.8)
        .note(CONCURRENT_NOTE),
        Row::new(
            "LDAP logins, cold, 64 clients",
            "req/s",
            concurrent.requests_per_sec,
            Better::Higher,
        )
        .against("slapd binds alone, 64 ldap3 clients", bind_rate),
        Row::new(
            "token issuance, cached LDAP login, 64 connections",
            "req/s",
            issued.requests_per_sec,
            Better::Higher,
        )
        .target(10_000.0)
        .note(WARM_NOTE),
    ]
}

/// What [`measure_logins`] measured: p50 and p99 in ms for one client,
/// logins per second for many.
struct Logins {
    through: (f64, f64),
    cached_one: (f64, f64),
    in_source: (f64, f64),
    direct: (f64, f64),
    concurrent: LoadResult,
    direct_rate: f64,
    bind_rate: f64,
}

/// The rows' measurements on the side away from slapd: `servers` are the
/// Portcullis without and with the login cache; `source_config` the first
/// one's configuration, for the source in-process; `script` wrk's.
async fn measure_logins(
    url: &str,
    slapd_pid: u32,
    servers: [&Target; 2],
    source_config: &Path,
    script: &Path,
) -> Logins {
    let [cold, cached] = servers;
    let client = reqwest::Client::new();
    // Every user is granted pull by its group, through either server.
    for target in servers {
        for i in 0..USERS {
            let access = token_access(&client, target, i).await;
            assert!(
                access.contains(REPOSITORY),
                "{}: no pull for {} by its directory group: {access}",
                target.name,
                uid(i)
            );
        }
    }

    // One client, one login after the other: through /token, with the
    // cache on (what HTTP and the token cost), in the source alone, and
    // the directory operations done directly.
    let through = timed(async |i| {
        token(&client, cold, i % USERS).await;
    })
    .await;
    let cached_one = timed(async |i| {
        token(&client, cached, i % USERS).await;
    })
    .await;
    let config = config::Config::load(source_config).expect("config");
    let source = LdapSource::new(&config.identity.ldap[0]).expect("the directory source");
    let in_source = timed(async |i| {
        let login = source.login(&uid(i % USERS), &password(i % USERS)).await;
        assert!(matches!(login, Ok(Login::Verified(_))), "in-process login");
    })
    .await;
    let mut one = direct_client(url).await;
    let direct = timed(async |i| direct_login(&mut one, i % USERS).await).await;
    eprintln!(
        "  one client, p50/p99 ms: /token {:.3}/{:.3}, /token cached {:.3}/{:.3}, \
         the source in-process {:.3}/{:.3}, direct {:.3}/{:.3}",
        through.0,
        through.1,
        cached_one.0,
        cached_one.1,
        in_source.0,
        in_source.1,
        direct.0,
        direct.1
    );

    // Many clients at once.
    let (cpu_p, cpu_s) = (cpu_seconds(cold.pid), cpu_seconds(slapd_pid));
    let started = Instant::now();
    let concurrent = small::wrk_with(
        &token_url(cold),
        &["-s", script.to_str().expect("utf-8 path")],
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "  (wrk warm-up and run: portcullis {:.2} cores, slapd {:.2} cores)",
        (cpu_seconds(cold.pid) - cpu_p) / elapsed,
        (cpu_seconds(slapd_pid) - cpu_s) / elapsed
    );
    let direct_rate = load(url, slapd_pid, "the same operations", |direct, i| {
        Box::pin(direct_login(direct, i))
    })
    .await;
    let bind_rate = load(url, slapd_pid, "binds", |direct, i| {
        Box::pin(direct_bind(direct, i))
    })
    .await;
    Logins {
        through,
        cached_one,
        in_source,
        direct,
        concurrent,
        direct_rate,
        bind_rate,
    }
}

/// Binds every thread of process `pid` to the CPUs `cpus` (a `taskset`
/// list: `0`, `0-1`); threads it starts later inherit it.
fn pin(cpus: &str, pid: u32) {
    let pinned = std::process::Command::new("taskset")
        .args(["-a", "-cp", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(pinned, "taskset -a -cp {cpus} {pid} failed");
}

/// Binds the calling thread to CPU `cpu`; what it spawns (wrk) inherits it.
fn pin_this_thread(cpu: usize) {
    // SAFETY: a zeroed `cpu_set_t` is the empty set; CPU_SET writes into
    // it and sched_setaffinity reads it, both within its size.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(set, 0, "sched_setaffinity to CPU {cpu} failed");
}

/// Starts a Portcullis that knows the directory at `url`, its login cache
/// kept `cache_secs` (0: off), on the CPUs `cpus` when given.
fn start(
    servers: &Servers,
    url: &str,
    name: &'static str,
    cache_secs: u64,
    cpus: Option<&str>,
) -> (servers::Proc, Target) {
    let config = config_path(servers, name);
    let dir = config.parent().expect("config dir").to_owned();
    std::fs::create_dir_all(dir.join("policies")).expect("ldap dir");
    std::fs::write(
        dir.join("policies/10-team.toml"),
        format!(
            "[[rule]]\ngroups = [\"{GROUP}\"]\nrepositories = [\"bench-ldap/**\"]\nactions = [\"pull\"]\n"
        ),
    )
    .expect("policy");
    std::fs::write(
        dir.join("ldap-password"),
        format!("{}\n", tree::SERVICE_PASSWORD),
    )
    .expect("service password");
    std::fs::write(
        &config,
        format!(
            "[log]\nlevel = \"warn\"\n[storage]\nroot = {root:?}\n\
             [token]\nservice = \"{service}\"\nkey_dir = {keys:?}\n\
             [users]\nfile = {users:?}\n[policy]\ndir = {policies:?}\n\
             [[identity.ldap]]\nname = \"corp\"\nurls = [\"{url}\"]\n\
             bind_dn = \"{bind_dn}\"\nbind_password_file = {secret:?}\n\
             user_base = \"{people}\"\n\
             user_filter = \"(&(objectClass=inetOrgPerson)(uid={{username}}))\"\n\
             cache_secs = {cache_secs}\n\
             [identity.ldap.groups]\nfrom = \"search\"\nbase = \"{groups}\"\n\
             filter = \"(member={{dn}})\"\n",
            root = dir.join("data"),
            service = servers::SERVICE,
            keys = dir.join("certs"),
            users = servers.path("portcullis/users.toml"),
            policies = dir.join("policies"),
            bind_dn = tree::SERVICE_DN,
            secret = dir.join("ldap-password"),
            people = tree::PEOPLE,
            groups = tree::GROUPS,
        ),
    )
    .expect("config");
    servers.start_portcullis_on(&config, name, cpus)
}

fn config_path(servers: &Servers, name: &str) -> PathBuf {
    servers.path(&format!("ldap/{name}/portcullis.toml"))
}

/// The bench users and their group, as LDIF.
fn bench_ldif() -> String {
    let mut out = String::new();
    for i in 0..USERS {
        let uid = uid(i);
        out.push_str(&format!(
            "dn: {}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n\
             userPassword: {}\n\n",
            tree::user_dn(&uid),
            password(i)
        ));
    }
    out.push_str(&format!(
        "dn: {}\nobjectClass: groupOfNames\ncn: {GROUP}\n",
        tree::group_dn(GROUP)
    ));
    for i in 0..USERS {
        out.push_str(&format!("member: {}\n", tree::user_dn(&uid(i))));
    }
    out
}

fn basic(i: usize) -> String {
    format!(
        "Basic {}",
        BASE64.encode(format!("{}:{}", uid(i), password(i)).as_bytes())
    )
}

fn token_url(target: &Target) -> String {
    format!(
        "{}/token?service={}&scope=repository:{REPOSITORY}:pull",
        target.url,
        servers::SERVICE
    )
}

/// A wrk script that sends each request as the next bench user.
fn rotation_script() -> String {
    let headers: Vec<String> = (0..USERS).map(|i| format!("  {:?},", basic(i))).collect();
    format!(
        "local headers = {{\n{}\n}}\nlocal n = 0\n\
         request = function()\n  n = n + 1\n  \
         return wrk.format(nil, nil, {{ [\"Authorization\"] = headers[n % #headers + 1] }})\nend\n",
        headers.join("\n")
    )
}

/// The token response for bench user `i`, checked to be a 200.
async fn token(client: &reqwest::Client, target: &Target, i: usize) -> bytes::Bytes {
    let res = client
        .get(token_url(target))
        .header("authorization", basic(i))
        .send()
        .await
        .expect("token request");
    assert_eq!(
        res.status(),
        reqwest::StatusCode::OK,
        "token for {}",
        uid(i)
    );
    res.bytes().await.expect("token body")
}

/// The access a token for bench user `i` grants, as JSON text.
async fn token_access(client: &reqwest::Client, target: &Target, i: usize) -> String {
    let body: serde_json::Value =
        serde_json::from_slice(&token(client, target, i).await).expect("token json");
    let token = body["token"].as_str().expect("token");
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims = data_encoding::BASE64URL_NOPAD
        .decode(payload.as_bytes())
        .expect("base64url payload");
    let claims: serde_json::Value = serde_json::from_slice(&claims).expect("claims");
    claims["access"].to_string()
}

/// p50 and p99, in milliseconds, of [`ROUNDS`] calls of `login`, one after
/// the other, after [`USERS`] untimed ones (connections, pages).
async fn timed(mut login: impl AsyncFnMut(usize)) -> (f64, f64) {
    for i in 0..USERS {
        login(i).await;
    }
    let mut times = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let start = Instant::now();
        login(i).await;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (times[ROUNDS / 2], times[ROUNDS * 99 / 100])
}

/// A direct client: a connection bound as the service account for the
/// searches, another for the user binds, as Portcullis keeps them.
struct Direct {
    service: Ldap,
    binder: Ldap,
}

async fn connect(url: &str) -> Ldap {
    let (conn, ldap) = LdapConnAsync::new(url).await.expect("ldap connect");
    ldap3::drive!(conn);
    ldap
}

async fn direct_client(url: &str) -> Direct {
    let mut service = connect(url).await;
    service
        .simple_bind(tree::SERVICE_DN, tree::SERVICE_PASSWORD)
        .await
        .and_then(|r| r.success())
        .expect("service bind");
    Direct {
        service,
        binder: connect(url).await,
    }
}

/// What a cold login asks of the directory, one operation after the
/// other: the user search, the bind, the group search.
async fn direct_login(direct: &mut Direct, i: usize) {
    let filter = format!("(&(objectClass=inetOrgPerson)(uid={}))", uid(i));
    let (entries, _) = direct
        .service
        .search(tree::PEOPLE, Scope::Subtree, &filter, vec!["uid"])
        .await
        .and_then(|r| r.success())
        .expect("user search");
    let dn = SearchEntry::construct(entries.into_iter().next().expect("one user")).dn;
    direct
        .binder
        .simple_bind(&dn, &password(i))
        .await
        .and_then(|r| r.success())
        .expect("user bind");
    let (groups, _) = direct
        .service
        .search(
            tree::GROUPS,
            Scope::Subtree,
            &format!("(member={dn})"),
            vec!["cn"],
        )
        .await
        .and_then(|r| r.success())
        .expect("group search");
    assert!(!groups.is_empty(), "{} in no group", uid(i));
}

/// One bind as bench user `i`, by DN.
async fn direct_bind(direct: &mut Direct, i: usize) {
    direct
        .binder
        .simple_bind(&tree::user_dn(&uid(i)), &password(i))
        .await
        .and_then(|r| r.success())
        .expect("user bind");
}

type Work = for<'a> fn(
    &'a mut Direct,
    usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Completed `work` per second with [`CLIENTS`] connections of their own
/// for [`LOAD`], each client rotating through the users from its own offset.
async fn load(url: &str, slapd_pid: u32, what: &str, work: Work) -> f64 {
    let mut connections = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        connections.push(direct_client(url).await);
    }
    let (own, slapd) = (own_cpu(), cpu_seconds(slapd_pid));
    let started = Instant::now();
    let deadline = started + LOAD;
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(client, mut direct)| {
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    work(&mut direct, (client + done as usize) % USERS).await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await.expect("direct client");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = done as f64 / elapsed;
    eprintln!(
        "  direct, {what}, {CLIENTS} clients: {rate:.0}/s (slapd {:.2} cores, this process {:.2})",
        (cpu_seconds(slapd_pid) - slapd) / elapsed,
        (own_cpu() - own) / elapsed
    );
    rate
}

fn own_cpu() -> f64 {
    cpu_seconds(std::process::id())
}

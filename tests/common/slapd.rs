//! A real OpenLDAP server for the tests: Debian's `slapd` started by hand as
//! the current user, with everything it owns (configuration, mdb database,
//! TLS files, log) in a temporary directory, on ephemeral ports of its own,
//! and the `ldap-utils` clients pointed at it with nothing of the machine's
//! configuration.
//!
//! Facts this harness relies on, found on Debian 12 (OpenLDAP 2.5.13):
//!
//! - `slapd` is `/usr/sbin/slapd` (not on a non-root user's PATH) and its
//!   modules are in `/usr/lib/ldap`; `back_mdb` and the `memberof` overlay
//!   are modules (`moduleload`), only `config`, `ldif` and `monitor` are
//!   built in. A plain `slapd.conf` (`-f`) is still accepted by 2.5 and is
//!   the simplest robust configuration: one file written per server, no
//!   `slapadd` of a cn=config tree.
//! - `-d stats` keeps slapd in the foreground and writes its log to stderr,
//!   here into `slapd.log` (appended to across restarts). A search is logged
//!   as `conn=N op=M SRCH base="…" scope=2 deref=0 filter="(uid=\2A)"`:
//!   slapd prints the filter as it parsed it, normalized: escapes in
//!   *upper-case* hex (`(uid=\2a)` on the wire is logged `(uid=\2A)`), the
//!   attribute in its schema spelling and a case-insensitive value in lower
//!   case (`(UID=Alice\2a*)` is logged `(uid=alice\2A*)`), so an injected
//!   `)(uid=*` shows as `\29\28uid=\2A` inside one assertion. The `SRCH` line
//!   is written when the request is parsed, before any result is sent, so it
//!   is in the file by the time the client has its answer (a `RESULT` line
//!   may not be yet). The harness's readiness probes are logged as
//!   anonymous binds (`BIND dn="" method=128`).
//! - Readiness: the harness waits for an answered anonymous bind (a real
//!   LDAP request over a real connection), not for the port to accept or
//!   for the `slapd starting` line.
//!   On this project's 2-core machine, busy, a start takes 50–150 ms
//!   (TLS and memberof add some 50 ms; the first start after a build or
//!   boot up to 0.5 s, the files coming from disk), eight at once
//!   0.2–0.35 s, and the seed another 50–100 ms.
//! - Ports: each server's are picked by binding `127.0.0.1:0` and closing;
//!   when another process takes one in between, slapd exits with
//!   `bind(…) failed errno=98 (Address already in use)` and the harness
//!   tries again with new ports. slapd sets `SO_REUSEADDR`, so a restart
//!   gets the same ports back at once (unless another process took one
//!   while it was stopped: the restart then fails, saying so).
//! - Stopping: SIGTERM makes slapd close its listeners and the database and
//!   exit (0); the harness waits for that exit, so a restart never meets a
//!   database still open.
//! - TLS: slapd and the clients are built with GnuTLS. It takes rcgen's
//!   PKCS#8 PEM key (`BEGIN PRIVATE KEY`, ECDSA P-256) as
//!   `TLSCertificateKeyFile` as it is. The server certificate names
//!   `127.0.0.1` and `localhost` (IP and DNS SANs, serverAuth EKU); ldaps://
//!   and StartTLS (`-ZZ`) on ldap:// both use it. libldap checks a server
//!   it reaches as `localhost` against the *machine's host name* instead
//!   ("hostname (vm) does not match common name"), so clients here use
//!   `127.0.0.1`; the `localhost` SAN is for other clients.
//! - Clients: `LDAPNOINIT=1` would turn off *all* defaults, the
//!   `LDAPTLS_*` environment variables included, so a CA given that way is
//!   ignored; the harness sets `LDAPCONF=/dev/null` instead (and a `HOME` and
//!   working directory of its own, where no `ldaprc` exists), and
//!   `LDAPTLS_REQCERT=demand` with `LDAPTLS_CACERT` naming the test CA.
//!   Without the CA a TLS client fails: `ldap_sasl_bind(SIMPLE): Can't
//!   contact LDAP server (-1)` for ldaps://, `ldap_start_tls: Connect error
//!   (-11)` for `-ZZ`. A refused password is exit status 49 (`Invalid
//!   credentials`); a server that is down is exit status 255.
//! - Passwords: slapd accepts a `userPassword` stored in clear (no scheme)
//!   as well as `{SSHA}` from `slappasswd`; the seed tree has both (see
//!   [`tree`]).
//! - memberOf: the overlay maintains `memberOf` (an operational attribute:
//!   a search must ask for it by name or with `+`) on the members of
//!   `groupOfNames` groups only (`member`), one level deep, not through
//!   nested groups; it ignores a member that does not exist yet, so the seed
//!   closes its group cycle with a modify once both groups exist.
#![allow(dead_code)]

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::clients::{describe, output_within, terminate, wait_until_ready};
use super::pki::TestCa;

// Named by path: the benchmark harness includes this file with `#[path]`,
// which would look for `tree.rs` beside it.
#[path = "slapd/tree.rs"]
pub mod tree;

/// The suffix of every server's one database.
pub const SUFFIX: &str = "dc=example,dc=org";
/// The database's root DN, which no ACL restricts, and its password.
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=org";
pub const ROOT_PASSWORD: &str = "root-secret";

const SLAPD: &str = "/usr/sbin/slapd";
const SLAPPASSWD: &str = "/usr/sbin/slappasswd";
const MODULES: &str = "/usr/lib/ldap";
const SCHEMA: &str = "/etc/ldap/schema";

/// How long slapd may take to answer, and to exit after SIGTERM; how long a
/// client may run.
const START_DEADLINE: Duration = Duration::from_secs(30);
const STOP_DEADLINE: Duration = Duration::from_secs(15);
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(30);
/// Starts tried when another process takes a picked port first.
const PORT_ATTEMPTS: usize = 5;

/// What a server has beyond the plain database.
#[derive(Clone, Copy, Debug, Default)]
pub struct SlapdOptions {
    /// The `memberof` overlay: users get `memberOf` values.
    pub memberof: bool,
    /// A test CA, a server certificate, and an ldaps:// listener beside
    /// ldap:// (which offers StartTLS).
    pub tls: bool,
}

/// A running slapd of its own. Dropping it stops slapd and removes its
/// directory.
pub struct Slapd {
    dir: TempDir,
    child: Option<Child>,
    port: u16,
    tls_port: Option<u16>,
    ca: Option<PathBuf>,
}

/// Fails (never skips) when slapd or the clients are missing.
fn require_slapd() {
    let present = Path::new(SLAPD).is_file()
        && Path::new(SLAPPASSWD).is_file()
        && Command::new("ldapwhoami")
            .arg("-VV")
            .stderr(Stdio::null())
            .status()
            .is_ok();
    assert!(
        present,
        "{SLAPD} or ldap-utils (ldapwhoami, ldapsearch…) are not installed; the LDAP \
         tests need a real server. Install them with scripts/install-test-deps.sh (as root)"
    );
}

impl Slapd {
    /// Starts slapd on fresh ports with an empty database and waits until it
    /// answers a bind.
    pub fn start(options: SlapdOptions) -> Self {
        require_slapd();
        let dir = tempfile::Builder::new()
            .prefix("slapd")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        fs::create_dir(root.join("db")).expect("db dir");
        let ca = options.tls.then(|| write_tls(&root.join("tls")));
        fs::write(root.join("slapd.conf"), config(root, options)).expect("slapd.conf");
        let mut slapd = Self {
            dir,
            child: None,
            port: 0,
            tls_port: None,
            ca,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            let ports = free_ports(if options.tls { 2 } else { 1 });
            slapd.port = ports[0];
            slapd.tls_port = ports.get(1).copied();
            match slapd.launch() {
                Ok(()) => return slapd,
                Err(log) if attempt < PORT_ATTEMPTS && log.contains("errno=98") => continue,
                Err(log) => panic!("slapd did not start:\n{log}"),
            }
        }
        unreachable!("the last attempt panics")
    }

    /// [`Slapd::start`], then the common tree ([`Slapd::seed`]).
    pub fn start_seeded(options: SlapdOptions) -> Self {
        let slapd = Self::start(options);
        slapd.seed();
        slapd
    }

    /// Spawns slapd on `self`'s ports and waits until it answers; `Err` with
    /// what it logged when it exited first.
    fn launch(&mut self) -> Result<(), String> {
        let log_path = self.log_path();
        let logged_before = fs::metadata(&log_path).map_or(0, |m| m.len());
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("slapd log");
        let mut urls = format!("ldap://127.0.0.1:{}/", self.port);
        if let Some(port) = self.tls_port {
            urls.push_str(&format!(" ldaps://127.0.0.1:{port}/"));
        }
        let child = Command::new(SLAPD)
            .arg("-h")
            .arg(urls)
            .arg("-f")
            .arg(self.dir.path().join("slapd.conf"))
            .args(["-d", "stats"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("slapd log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {SLAPD}: {e}"));
        let child = self.child.insert(child);
        let port = self.port;
        let ready = wait_until_ready(
            child,
            &log_path,
            logged_before,
            START_DEADLINE,
            Duration::from_millis(5),
            || answers_bind(port),
        );
        if ready.is_err() {
            self.child = None;
        }
        ready
    }

    /// Stops slapd (SIGTERM) and waits for it to exit; its ports and data
    /// stay for [`Slapd::restart`]. Panics when it had to be killed.
    pub fn stop(&mut self) {
        assert!(
            self.terminate(),
            "slapd did not exit on SIGTERM:\n{}",
            self.log()
        );
    }

    /// Starts slapd again, stopped or not, on the same ports over the same
    /// data.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.launch() {
            panic!(
                "slapd did not restart on ports {} / {:?}:\n{log}",
                self.port, self.tls_port
            );
        }
    }

    /// SIGTERM, then SIGKILL past a deadline; `false` when it took SIGKILL.
    fn terminate(&mut self) -> bool {
        self.child
            .take()
            .is_none_or(|child| terminate(child, STOP_DEADLINE))
    }

    /// Whether slapd is running (not stopped, not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// `ldap://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:PORT`; panics without `options.tls`.
    pub fn ldaps_url(&self) -> String {
        let port = self
            .tls_port
            .expect("an ldaps:// listener needs options.tls");
        format!("ldaps://127.0.0.1:{port}")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The test CA that signed the server certificate (PEM); panics without
    /// `options.tls`.
    pub fn ca_cert(&self) -> &Path {
        self.ca.as_deref().expect("a CA needs options.tls")
    }

    /// The server's own directory (`slapd.conf`, `db/`, `tls/`, `slapd.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("slapd.log")
    }

    /// slapd's log so far (every start of this server).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log().lines().map(str::to_owned).collect()
    }

    /// The filter of every search slapd logged, in order, as slapd prints
    /// it (normalized: `(uid=\2A)`, see the module comment).
    pub fn search_filters(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains(" SRCH base="))
            .filter_map(|line| line.split_once(" filter=\"")?.1.strip_suffix('"'))
            .map(str::to_owned)
            .collect()
    }

    /// How many searches slapd logged with exactly `filter` (as
    /// [`Slapd::search_filters`] lists them).
    pub fn searches_with_filter(&self, filter: &str) -> usize {
        self.search_filters()
            .iter()
            .filter(|f| *f == filter)
            .count()
    }

    /// An ldap-utils `program` with nothing of the machine's or the user's
    /// configuration: `LDAPCONF=/dev/null`, a `HOME` and working directory
    /// without `ldaprc`, certificates verified (`LDAPTLS_REQCERT=demand`)
    /// against the test CA when there is one (`LDAPTLS_CACERT`; remove it
    /// to see a client refuse the server).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path().join("home"))
            .env("LDAPCONF", "/dev/null")
            .env("LDAPTLS_REQCERT", "demand")
            .current_dir(self.dir.path());
        if let Some(ca) = &self.ca {
            cmd.env("LDAPTLS_CACERT", ca);
        }
        cmd
    }

    /// `program -x -H <ldap://…> -D ROOT_DN -w ROOT_PASSWORD ARGS`, LDIF
    /// on stdin; must succeed.
    fn as_root(&self, program: &str, args: &[&str], ldif: &str) -> Output {
        let mut cmd = self.command(program);
        cmd.args(["-x", "-H", &self.url(), "-D", ROOT_DN, "-w", ROOT_PASSWORD])
            .args(args);
        let shown = format!("{cmd:?}");
        let out = output_within(cmd, Some(ldif), CLIENT_DEADLINE);
        assert!(
            out.status.success(),
            "failed: {}\nLDIF:\n{ldif}",
            describe(&shown, &out)
        );
        out
    }

    /// Adds the entries of `ldif` (`ldapadd` as the root DN).
    pub fn add(&self, ldif: &str) {
        self.as_root("ldapadd", &[], ldif);
    }

    /// Applies the changes of `ldif` (`ldapmodify` as the root DN).
    pub fn modify(&self, ldif: &str) {
        self.as_root("ldapmodify", &[], ldif);
    }

    /// Deletes the entry `dn` (`ldapdelete` as the root DN).
    pub fn delete(&self, dn: &str) {
        self.as_root("ldapdelete", &[dn], "");
    }

    /// `ldapwhoami -x -H url -D dn -w password` (`extra` before them, e.g.
    /// `-ZZ`); its output whatever the outcome.
    pub fn whoami(&self, url: &str, dn: &str, password: &str, extra: &[&str]) -> Output {
        let mut cmd = self.command("ldapwhoami");
        cmd.args(extra)
            .args(["-x", "-H", url, "-D", dn, "-w", password]);
        output_within(cmd, None, CLIENT_DEADLINE)
    }

    /// `ldapsearch -LLL` on ldap:// bound as `dn`/`password` (anonymous
    /// when `None`) below `base`; its output whatever the outcome.
    pub fn search(
        &self,
        bind: Option<(&str, &str)>,
        base: &str,
        filter: &str,
        attrs: &[&str],
    ) -> Output {
        let mut cmd = self.command("ldapsearch");
        cmd.args(["-x", "-LLL", "-o", "ldif-wrap=no", "-H", &self.url()]);
        if let Some((dn, password)) = bind {
            cmd.args(["-D", dn, "-w", password]);
        }
        cmd.args(["-b", base, filter]).args(attrs);
        output_within(cmd, None, CLIENT_DEADLINE)
    }

    /// Seeds the common tree ([`tree`]): people, groups, the service account.
    pub fn seed(&self) {
        self.add(tree::ldif());
        // The cycle's second edge, now that both groups exist: the memberof
        // overlay skips a member that does not exist yet.
        self.modify(&format!(
            "dn: {}\nchangetype: modify\nadd: member\nmember: {}\n",
            tree::group_dn(tree::ALL_STAFF),
            tree::group_dn(tree::STAFF_RING)
        ));
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// `count` distinct free ports on 127.0.0.1: bound together, then closed
/// for slapd to take (a race [`Slapd::start`] retries).
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// Whether slapd on `port` answers an anonymous simple bind with success.
fn answers_bind(port: u16) -> bool {
    // BindRequest: message 1, version 3, empty name, empty simple password.
    const BIND: [u8; 14] = [
        0x30, 0x0c, 0x02, 0x01, 0x01, 0x60, 0x07, 0x02, 0x01, 0x03, 0x04, 0x00, 0x80, 0x00,
    ];
    // UnbindRequest: message 2.
    const UNBIND: [u8; 7] = [0x30, 0x05, 0x02, 0x01, 0x02, 0x42, 0x00];
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(&BIND).is_err() {
        return false;
    }
    // BindResponse: message 1, resultCode 0 (success), empty DN and message.
    let mut reply = [0u8; 14];
    let answered = stream.read_exact(&mut reply).is_ok()
        && reply[5] == 0x61
        && reply[7..10] == [0x0a, 0x01, 0x00];
    let _ = stream.write_all(&UNBIND);
    answered
}

/// A test CA and a server pair for 127.0.0.1 and localhost in `dir`;
/// returns the CA's path.
fn write_tls(dir: &Path) -> PathBuf {
    let ca = TestCa::new(dir, "slapd");
    ca.issue_server("server", &["127.0.0.1", "localhost"]);
    ca.cert
}

/// `slapd.conf` for a server in `root`.
fn config(root: &Path, options: SlapdOptions) -> String {
    let path = |name: &str| root.join(name).display().to_string();
    let mut conf = String::new();
    for schema in ["core", "cosine", "nis", "inetorgperson"] {
        conf.push_str(&format!("include {SCHEMA}/{schema}.schema\n"));
    }
    conf.push_str(&format!(
        "modulepath {MODULES}\nmoduleload back_mdb\n\
         pidfile \"{}\"\nargsfile \"{}\"\n",
        path("slapd.pid"),
        path("slapd.args")
    ));
    if options.memberof {
        conf.push_str("moduleload memberof\n");
    }
    if options.tls {
        conf.push_str(&format!(
            "TLSCACertificateFile \"{}\"\nTLSCertificateFile \"{}\"\nTLSCertificateKeyFile \"{}\"\n",
            path("tls/slapd-ca.crt"),
            path("tls/server.crt"),
            path("tls/server.key")
        ));
    }
    let service = tree::SERVICE_DN;
    conf.push_str(&format!(
        "database mdb\nsuffix \"{SUFFIX}\"\nrootdn \"{ROOT_DN}\"\nrootpw {ROOT_PASSWORD}\n\
         directory \"{}\"\n\
         access to attrs=userPassword\n  by anonymous auth\n  by * none\n\
         access to dn.subtree=\"{people}\"\n  by dn.exact=\"{service}\" read\n  by self read\n  by * none\n\
         access to *\n  by dn.exact=\"{service}\" read\n  by * none\n",
        path("db"),
        people = tree::PEOPLE,
    ));
    if options.memberof {
        conf.push_str(
            "overlay memberof\nmemberof-group-oc groupOfNames\n\
             memberof-member-ad member\nmemberof-memberof-ad memberOf\n",
        );
    }
    conf
}

/// `{SSHA}…` of `password`, by `slappasswd`.
pub fn ssha(password: &str) -> String {
    let mut cmd = Command::new(SLAPPASSWD);
    cmd.args(["-h", "{SSHA}", "-s", password]);
    let shown = format!("{cmd:?}");
    let out = output_within(cmd, None, CLIENT_DEADLINE);
    assert!(out.status.success(), "failed: {}", describe(&shown, &out));
    String::from_utf8(out.stdout)
        .expect("UTF-8 hash")
        .trim()
        .to_owned()
}

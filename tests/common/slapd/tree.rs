//! The common tree [`Slapd::seed`](super::Slapd::seed) adds below [`SUFFIX`](super::SUFFIX).
//!
//! ```text
//! ou=people    uid=alice  inetOrgPerson + posixAccount  {SSHA} "alice-password"
//!              uid=bob    inetOrgPerson + posixAccount  clear  "bob-password"
//!              uid=carol  inetOrgPerson                 {SSHA} "carol-password"
//!              uid=dave   inetOrgPerson                 clear  "dave-password"  (no group)
//! ou=groups    cn=developers  groupOfNames        member alice, bob
//!              cn=admins      groupOfNames        member alice
//!              cn=operators   groupOfUniqueNames  uniqueMember bob, carol
//!              cn=posix-users posixGroup          memberUid alice, bob
//!              cn=all-staff   groupOfNames        member developers, staff-ring
//!              cn=staff-ring  groupOfNames        member all-staff, carol   (a cycle)
//! ou=services  cn=portcullis  applicationProcess + simpleSecurityObject
//!                             {SSHA} "service-password"
//! ```
//!
//! ACLs: anyone may bind (`auth` on `userPassword`) and nobody but the root
//! DN reads a password; a user reads their own entry and nothing else (a
//! search as a user must start at their own DN: from any other base,
//! slapd answers `No such object` (32)); the service account reads
//! everything else (people, groups, services). Anonymous reads nothing.
//!
//! With the memberof overlay, `memberOf` is: alice developers, admins; bob
//! developers; carol staff-ring; developers all-staff; all-staff
//! staff-ring; staff-ring all-staff. Never operators or posix-users (not
//! groupOfNames), never transitive.

use std::sync::OnceLock;

use super::ssha;

pub const PEOPLE: &str = "ou=people,dc=example,dc=org";
pub const GROUPS: &str = "ou=groups,dc=example,dc=org";
pub const SERVICES: &str = "ou=services,dc=example,dc=org";

/// The service account, which reads people and groups.
pub const SERVICE_DN: &str = "cn=portcullis,ou=services,dc=example,dc=org";
pub const SERVICE_PASSWORD: &str = "service-password";

/// A seeded person.
pub struct User {
    pub uid: &'static str,
    pub password: &'static str,
    /// Stored as `{SSHA}` (else in clear).
    pub hashed: bool,
}

pub const ALICE: User = User::new("alice", "alice-password", true);
pub const BOB: User = User::new("bob", "bob-password", false);
pub const CAROL: User = User::new("carol", "carol-password", true);
pub const DAVE: User = User::new("dave", "dave-password", false);
pub const USERS: [&User; 4] = [&ALICE, &BOB, &CAROL, &DAVE];

pub const DEVELOPERS: &str = "developers";
pub const ADMINS: &str = "admins";
pub const OPERATORS: &str = "operators";
pub const POSIX_USERS: &str = "posix-users";
pub const ALL_STAFF: &str = "all-staff";
pub const STAFF_RING: &str = "staff-ring";

impl User {
    const fn new(uid: &'static str, password: &'static str, hashed: bool) -> Self {
        Self {
            uid,
            password,
            hashed,
        }
    }

    pub fn dn(&self) -> String {
        user_dn(self.uid)
    }
}

pub fn user_dn(uid: &str) -> String {
    format!("uid={uid},{PEOPLE}")
}

pub fn group_dn(cn: &str) -> String {
    format!("cn={cn},{GROUPS}")
}

/// The LDIF of the tree (cycle half-closed, see [`super::Slapd::seed`]);
/// built once per test process (`slappasswd` runs once per hash).
pub fn ldif() -> &'static str {
    static LDIF: OnceLock<String> = OnceLock::new();
    LDIF.get_or_init(build)
}

fn password(value: &str, hashed: bool) -> String {
    if hashed {
        ssha(value)
    } else {
        value.to_owned()
    }
}

fn build() -> String {
    let mut out = String::from(
        "dn: dc=example,dc=org\nobjectClass: dcObject\nobjectClass: organization\n\
         dc: example\no: Example\n\n",
    );
    for ou in ["people", "groups", "services"] {
        out.push_str(&format!(
            "dn: ou={ou},dc=example,dc=org\nobjectClass: organizationalUnit\nou: {ou}\n\n"
        ));
    }
    for (number, user) in (10001..).zip(USERS) {
        let uid = user.uid;
        out.push_str(&format!(
            "dn: {}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid} example\n\
             sn: {uid}\nmail: {uid}@example.org\nuserPassword: {}\n",
            user.dn(),
            password(user.password, user.hashed)
        ));
        if [ALICE.uid, BOB.uid].contains(&uid) {
            out.push_str(&format!(
                "objectClass: posixAccount\nuidNumber: {number}\ngidNumber: 20000\n\
                 homeDirectory: /home/{uid}\n"
            ));
        }
        out.push('\n');
    }
    let entries = [
        (
            DEVELOPERS,
            "groupOfNames",
            "member",
            vec![ALICE.dn(), BOB.dn()],
        ),
        (ADMINS, "groupOfNames", "member", vec![ALICE.dn()]),
        (
            OPERATORS,
            "groupOfUniqueNames",
            "uniqueMember",
            vec![BOB.dn(), CAROL.dn()],
        ),
        (
            ALL_STAFF,
            "groupOfNames",
            "member",
            vec![group_dn(DEVELOPERS)],
        ),
        (
            STAFF_RING,
            "groupOfNames",
            "member",
            vec![group_dn(ALL_STAFF), CAROL.dn()],
        ),
    ];
    for (cn, class, attr, members) in entries {
        out.push_str(&format!(
            "dn: {}\nobjectClass: {class}\ncn: {cn}\n",
            group_dn(cn)
        ));
        for dn in members {
            out.push_str(&format!("{attr}: {dn}\n"));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "dn: {}\nobjectClass: posixGroup\ncn: {POSIX_USERS}\ngidNumber: 20000\n\
         memberUid: {}\nmemberUid: {}\n\n",
        group_dn(POSIX_USERS),
        ALICE.uid,
        BOB.uid
    ));
    out.push_str(&format!(
        "dn: {SERVICE_DN}\nobjectClass: applicationProcess\n\
         objectClass: simpleSecurityObject\ncn: portcullis\nuserPassword: {}\n",
        password(SERVICE_PASSWORD, true)
    ));
    out
}

//! `[identity]`, `[[identity.ldap]]` and `[[identity.oidc]]`: which
//! identity sources answer logins, in which order, how each directory is
//! reached, and which OpenID Connect issuers' tokens are credentials.

use std::path::PathBuf;

use serde::Deserialize;

/// `[identity]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct IdentityConfig {
    /// The sources in the order they are asked: `file` (the users file) and
    /// the `name` of each `[[identity.ldap]]`. Unset: the users file, then
    /// each directory in the order written, so a local account still works
    /// when a directory is down.
    pub order: Option<Vec<String>>,
    pub ldap: Vec<LdapConfig>,
    /// OpenID Connect issuers whose tokens are accepted as passwords. They
    /// are not in `order`: a token names its issuer, so it goes to that
    /// issuer alone, before any password source is asked.
    pub oidc: Vec<OidcConfig>,
}

impl IdentityConfig {
    /// The source names in the order they are asked.
    pub fn order(&self) -> Vec<String> {
        match &self.order {
            Some(order) => order.clone(),
            None => std::iter::once(FILE_SOURCE.to_owned())
                .chain(self.ldap.iter().map(|l| l.name.clone()))
                .collect(),
        }
    }
}

/// The name of the users file in `identity.order`.
pub const FILE_SOURCE: &str = "file";

/// One directory (`[[identity.ldap]]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]

pub struct LdapConfig {
    /// The source's name in `identity.order`, logs and `Identity::source`.
    pub name: String,
    /// `ldap://` or `ldaps://` URLs, tried in order (failover).
    pub urls: Vec<String>,
    /// Upgrade `ldap://` connections with StartTLS before anything is sent.
    #[serde(default)]
    pub starttls: bool,
    /// CA certificates (PEM) the directory's certificate must chain to.
    /// Unset: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (a loud warning at start). For trials only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// The service account searches run as. Unset: anonymous searches.
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// A file holding the service account's password (its first line);
    /// never the password itself in the configuration.
    #[serde(default)]
    pub bind_password_file: Option<PathBuf>,
    /// Where users are searched.
    pub user_base: String,
    /// The search filter, with `{username}` (escaped per RFC 4515).
    #[serde(default = "default_user_filter")]
    pub user_filter: String,
    /// The attribute whose value is the identity's name (`uid`,
    /// `sAMAccountName`, `userPrincipalName`).
    #[serde(default = "default_user_attribute")]
    pub user_attribute: String,
    /// Bind directly as this DN (with `{username}`, escaped per RFC 4514)
    /// instead of searching first.
    #[serde(default)]
    pub bind_dn_template: Option<String>,
    /// Refuse accounts Active Directory marks disabled (`userAccountControl`
    /// bit 2).
    #[serde(default)]
    pub active_directory: bool,
    #[serde(default = "default_timeout")]
    pub connect_timeout_secs: u64,
    #[serde(default = "default_timeout")]
    pub operation_timeout_secs: u64,
    /// Connections kept open of each kind (service searches, user binds),
    /// and the bound on logins and look-ups asking the directory at once.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How long a good login is remembered (seconds): the most a disabled,
    /// deleted or regrouped user keeps their access.
    #[serde(default = "default_cache_secs")]
    pub cache_secs: u64,
    #[serde(default)]
    pub groups: LdapGroups,
}

/// `[identity.ldap.groups]`: where a user's groups come from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct LdapGroups {
    /// `member_of` (a user attribute listing group DNs), `search` (groups
    /// whose members include the user) or `none`.
    pub from: GroupsFrom,
    /// The user attribute for `member_of`.
    pub attribute: String,
    /// Where groups are searched (`search`, and the nested walk).
    pub base: Option<String>,
    /// The group search filter, with `{dn}` (the user's DN) and/or
    /// `{username}`, both escaped per RFC 4515.
    pub filter: String,
    /// The attribute naming a found group (`cn`).
    pub name_attribute: String,
    /// Nested groups: `none`, `in_chain` (Active Directory's
    /// `LDAP_MATCHING_RULE_IN_CHAIN`) or `walk` (groups of groups, searched
    /// level by level up to `max_depth`, cycle-safe).
    pub nested: Nested,
    pub max_depth: usize,
    /// Prepended to every directory group name (`ldap:` makes `dev`
    /// `ldap:dev`), so they cannot collide with local group names.
    pub prefix: String,
    /// Groups that count at all (names before the prefix). Empty: all.
    pub allow: Vec<String>,
}

impl Default for LdapGroups {
    fn default() -> Self {
        Self {
            from: GroupsFrom::MemberOf,
            attribute: "memberOf".into(),
            base: None,
            filter: "(member={dn})".into(),
            name_attribute: "cn".into(),
            nested: Nested::None,
            max_depth: 5,
            prefix: String::new(),
            allow: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GroupsFrom {
    MemberOf,
    Search,
    None,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Nested {
    None,
    InChain,
    Walk,
}

fn default_user_filter() -> String {
    "(uid={username})".into()
}

fn default_user_attribute() -> String {
    "uid".into()
}

fn default_timeout() -> u64 {
    5
}

fn default_pool_size() -> usize {
    16
}

fn default_cache_secs() -> u64 {
    60
}

impl LdapConfig {
    /// Problems with the values, each as (key under this entry, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut found: Vec<_> = name_problem(&self.name).into_iter().collect();
        if self.urls.is_empty() {
            found.push((
                "urls",
                "urls must list at least one ldap:// or ldaps:// URL".into(),
            ));
        }
        for url in &self.urls {
            let ldaps = url.starts_with("ldaps://");
            if !ldaps && !url.starts_with("ldap://") {
                found.push(("urls", format!("`{url}` is not an ldap:// or ldaps:// URL")));
            }
            if ldaps && self.starttls {
                found.push((
                    "starttls",
                    format!("starttls is for ldap:// URLs; `{url}` is already TLS"),
                ));
            }
        }
        if self.bind_dn.is_some() != self.bind_password_file.is_some() {
            found.push((
                "bind_dn",
                "bind_dn and bind_password_file go together".into(),
            ));
        }
        match &self.bind_dn_template {
            Some(template) if !template.contains("{username}") => found.push((
                "bind_dn_template",
                "bind_dn_template must contain {username}".into(),
            )),
            _ => {}
        }
        if !self.user_filter.contains("{username}") {
            found.push(("user_filter", "user_filter must contain {username}".into()));
        }
        if self.user_attribute.is_empty() {
            found.push(("user_attribute", "user_attribute must not be empty".into()));
        }
        for (key, value) in [
            ("connect_timeout_secs", self.connect_timeout_secs),
            ("operation_timeout_secs", self.operation_timeout_secs),
        ] {
            if value == 0 {
                found.push((key, format!("{key} must be positive")));
            }
        }
        if self.pool_size == 0 {
            found.push(("pool_size", "pool_size must be positive".into()));
        }
        let groups = &self.groups;
        if groups.from == GroupsFrom::Search
            && !(groups.filter.contains("{dn}") || groups.filter.contains("{username}"))
        {
            found.push((
                "groups",
                "groups.filter must contain {dn} or {username}".into(),
            ));
        }
        if groups.nested == Nested::Walk && !groups.filter.contains("{dn}") {
            // The walk asks which groups list a group as a member: only a
            // filter on the member's DN can say.
            found.push((
                "groups",
                "groups.nested = \"walk\" needs a groups.filter with {dn}".into(),
            ));
        }
        if (groups.from == GroupsFrom::Search || groups.nested == Nested::Walk)
            && groups.base.is_none()
        {
            found.push(("groups", "groups.base is needed to search groups".into()));
        }
        found
    }
}

/// One OpenID Connect issuer (`[[identity.oidc]]`) whose ID tokens (or JWT
/// access tokens) are accepted as the password at `/token`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct OidcConfig {
    /// The source's name in logs, `Identity::source` and policy `sources`.
    pub name: String,
    /// The issuer URL exactly as tokens carry it in `iss`; discovery reads
    /// `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// The `aud` values accepted; a token must carry one of them.
    pub audiences: Vec<String>,
    /// The claim whose value names the user: `sub` (the default; stable),
    /// `preferred_username`, `email` (only when `email_verified` is not
    /// false), or any string claim.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// The claim listing the user's groups (an array of strings, or one
    /// string). Unset: no groups.
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Prepended to the user name and to every group (`gha:`), so that
    /// names from this issuer cannot collide with local ones.
    #[serde(default)]
    pub prefix: String,
    /// The Basic user name that must come with a token (`oauth2accesstoken`,
    /// as cloud registries ask). Unset: any name.
    #[serde(default)]
    pub username: Option<String>,
    /// CA certificates (PEM) the issuer's certificate must chain to.
    /// Unset: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allow a plain `http://` issuer (and JWKS). Never in production: the
    /// keys that vouch for every login would travel unprotected.
    #[serde(default)]
    pub allow_http: bool,
    /// Each request to the issuer (discovery, keys), in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// How long the issuer's keys are used before they are fetched again
    /// (seconds). A token naming an unknown key fetches them at once.
    #[serde(default = "default_jwks_cache_secs")]
    pub jwks_cache_secs: u64,
    /// The least time between two fetches of the keys (seconds), so that
    /// tokens naming made-up keys cannot make Portcullis hammer the issuer.
    #[serde(default = "default_jwks_min_refresh_secs")]
    pub jwks_min_refresh_secs: u64,
    /// Clock drift tolerated on `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
}

fn default_username_claim() -> String {
    "sub".into()
}

fn default_jwks_cache_secs() -> u64 {
    3600
}

fn default_jwks_min_refresh_secs() -> u64 {
    10
}

fn default_leeway_secs() -> u64 {
    30
}

impl OidcConfig {
    /// Problems with the values, each as (key under this entry, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut found: Vec<_> = name_problem(&self.name).into_iter().collect();
        let https = self.issuer.starts_with("https://");
        if !https && !self.issuer.starts_with("http://") {
            found.push((
                "issuer",
                format!("`{}` is not an https:// URL", self.issuer),
            ));
        } else if !https && !self.allow_http {
            found.push((
                "issuer",
                format!(
                    "`{}` is plain http: the keys that vouch for logins would travel unprotected (set allow_http = true only for a local test provider)",
                    self.issuer
                ),
            ));
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            found.push((
                "audiences",
                "audiences must list the `aud` values this registry accepts".into(),
            ));
        }
        if self.username_claim.is_empty() {
            found.push(("username_claim", "username_claim must not be empty".into()));
        }
        if self.groups_claim.as_deref() == Some("") {
            found.push(("groups_claim", "groups_claim must not be empty".into()));
        }
        if self.timeout_secs == 0 {
            found.push(("timeout_secs", "timeout_secs must be positive".into()));
        }
        if self.jwks_cache_secs == 0 {
            found.push(("jwks_cache_secs", "jwks_cache_secs must be positive".into()));
        }
        if self.leeway_secs > 300 {
            found.push((
                "leeway_secs",
                "leeway_secs above 300 would accept tokens long expired".into(),
            ));
        }
        found
    }
}

/// A source's name must be set and must not be the users file's.
fn name_problem(name: &str) -> Option<(&'static str, String)> {
    (name.is_empty() || name == FILE_SOURCE).then(|| {
        (
            "name",
            format!("name must be set and not `{FILE_SOURCE}` (the users file)"),
        )
    })
}

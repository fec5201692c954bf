//! LDAP filter and DN text: templates filled with escaped values, so that no
//! user name widens a search or names another entry, and group names read
//! from DNs.

use ldap3::{dn_escape, ldap_escape};

/// Active Directory's `LDAP_MATCHING_RULE_IN_CHAIN`: a `member` match that
/// follows nested groups on the server.
pub const IN_CHAIN: &str = "1.2.840.113556.1.4.1941";

/// `template` with `{username}` replaced by the filter-escaped (RFC 4515)
/// `username` and `{dn}` by the filter-escaped `dn`.
pub fn fill(template: &str, username: &str, dn: &str) -> String {
    template
        .replace("{username}", &ldap_escape(username))
        .replace("{dn}", &ldap_escape(dn))
}

/// A bind DN template with `{username}` replaced by the RDN-escaped
/// (RFC 4514) `username`.
pub fn bind_dn(template: &str, username: &str) -> String {
    template.replace("{username}", &dn_escape(username))
}

/// Groups whose members include `dn`, nested ones included, on an Active
/// Directory server.
pub fn in_chain(dn: &str) -> String {
    format!("(member:{IN_CHAIN}:={})", ldap_escape(dn))
}

/// `filter` restricted to accounts Active Directory does not mark disabled
/// (`userAccountControl` bit 2, `ACCOUNTDISABLE`), with the bitwise-AND
/// matching rule.
pub fn enabled_only(filter: &str) -> String {
    format!("(&{filter}(!(userAccountControl:1.2.840.113556.1.4.803:=2)))")
}

/// The value of a DN's first RDN (`cn=dev,ou=groups,dc=example,dc=org` →
/// `dev`), with RFC 4514 escapes undone. `None` for text that is not a DN.
pub fn first_rdn_value(dn: &str) -> Option<String> {
    let (_, rest) = dn.split_once('=')?;
    // Bytes, since a hex escape may be one byte of a UTF-8 character.
    let mut value = Vec::new();
    let mut bytes = rest.bytes().peekable();
    let hex = |b: u8| (b as char).to_digit(16);
    while let Some(b) = bytes.next() {
        match b {
            b',' | b'+' => break,
            b'\\' => {
                let next = bytes.next()?;
                // `\2c` (a hex pair) or `\,` (a special character itself).
                match (hex(next), bytes.peek().copied().and_then(hex)) {
                    (Some(high), Some(low)) => {
                        bytes.next();
                        value.push((high * 16 + low) as u8);
                    }
                    _ => value.push(next),
                }
            }
            b => value.push(b),
        }
    }
    let value = String::from_utf8(value).ok()?.trim().to_owned();
    (!value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_widen_a_filter_are_escaped() {
        let t = "(&(objectClass=person)(uid={username}))";
        assert_eq!(fill(t, "alice", ""), "(&(objectClass=person)(uid=alice))");
        assert_eq!(fill(t, "*", ""), "(&(objectClass=person)(uid=\\2a))");
        assert_eq!(
            fill(t, "admin)(uid=*", ""),
            "(&(objectClass=person)(uid=admin\\29\\28uid=\\2a))"
        );
        assert_eq!(fill(t, "a\\2a", ""), "(&(objectClass=person)(uid=a\\5c2a))");
        assert_eq!(fill(t, "a\0b", ""), "(&(objectClass=person)(uid=a\\00b))");
        assert_eq!(
            fill("(member={dn})", "", "cn=a (x),dc=example"),
            "(member=cn=a \\28x\\29,dc=example)"
        );
    }

    #[test]
    fn active_directory_filters() {
        assert_eq!(
            enabled_only("(sAMAccountName=bob)"),
            "(&(sAMAccountName=bob)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))"
        );
        assert_eq!(
            in_chain("CN=Bob,OU=People,DC=corp,DC=example"),
            "(member:1.2.840.113556.1.4.1941:=CN=Bob,OU=People,DC=corp,DC=example)"
        );
        assert_eq!(
            fill("(userPrincipalName={username})", "bob@corp.example", ""),
            "(userPrincipalName=bob@corp.example)"
        );
    }

    #[test]
    fn bind_dns_escape_the_name_as_an_rdn_value() {
        let t = "uid={username},ou=people,dc=example,dc=org";
        assert_eq!(bind_dn(t, "alice"), "uid=alice,ou=people,dc=example,dc=org");
        assert_eq!(
            bind_dn(t, "x,ou=admins"),
            "uid=x\\2cou\\3dadmins,ou=people,dc=example,dc=org"
        );
    }

    #[test]
    fn group_names_come_from_the_first_rdn() {
        assert_eq!(
            first_rdn_value("cn=dev,ou=groups,dc=example,dc=org").as_deref(),
            Some("dev")
        );
        assert_eq!(
            first_rdn_value("CN=Domain Users,CN=Users,DC=corp").as_deref(),
            Some("Domain Users")
        );
        assert_eq!(first_rdn_value("cn=a\\2cb,dc=x").as_deref(), Some("a,b"));
        assert_eq!(first_rdn_value("cn=a\\,b,dc=x").as_deref(), Some("a,b"));
        assert_eq!(
            first_rdn_value("cn=caf\\c3\\a9,dc=x").as_deref(),
            Some("café")
        );
        assert_eq!(first_rdn_value("not a dn"), None);
        assert_eq!(first_rdn_value("cn=,dc=x"), None);
    }
}

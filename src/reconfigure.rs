//! `SIGHUP`: every watched file looked at now (users, policies, signing
//! keys, the TLS pair and client CA, each reloaded by its owner when it
//! changed), and the configuration file read again when it changed (on
//! `SIGHUP`, or found changed by the check every second).
//!
//! Of the configuration, what can change safely while requests are served
//! is applied: the password sources (`identity.order`, `[[identity.ldap]]`)
//! and the upstreams (`[[upstream]]`). The new file must parse and validate
//! as a whole, and every new source and upstream must build (their CA and
//! password files read), before anything is put in force; otherwise one log
//! line says why and nothing changes. What needs a restart (the listen
//! address, storage, TLS files, the log, …) is reported as ignored, never
//! half applied: a new storage root under a running upload would split it.
//!
//! In force means swapped whole ([`crate::auth::reload::Current`]): a
//! request routed to an upstream, or a login under way in a directory,
//! finishes on the one it started with. A source or upstream whose settings
//! did not change is kept, with its connections and caches.

use std::sync::Arc;

use crate::AppState;
use crate::config::Config;
use crate::serve::tls::Tls;

/// One `SIGHUP`: the files, then the configuration `reread` brought
/// (`Ok(None)`: there is no file, the embedded default is in use). Reads
/// files and may connect nowhere but builds clients: call it off the async
/// threads.
pub fn hangup(state: &AppState, tls: Option<&Tls>, reread: Result<Option<Config>, String>) {
    files(state, tls);
    match reread {
        Ok(Some(config)) => apply(state, config),
        Ok(None) => tracing::info!(
            "configuration not read again on SIGHUP: none was read at start (the embedded default is in use); the watched files were checked"
        ),
        Err(e) => refused(&e),
    }
}

/// The watched files looked at now (users, policies, keys, the TLS files),
/// each reloaded by its owner when it changed: a `SIGHUP` when the
/// configuration file itself did not change.
pub fn files(state: &AppState, tls: Option<&Tls>) {
    if let Some(authority) = &state.auth {
        authority.check_files();
    }
    if let Some(tls) = tls {
        tls.check_now();
    }
}

fn refused(why: &str) {
    // One line however many problems: a raw newline would split the record.
    tracing::error!(
        error = %why.replace('\n', "; "),
        "configuration reload refused, nothing changed"
    );
}

/// Applies what can change of `new` (the file read again, with the command
/// line's overrides) and logs one line: what changed and what is in force
/// now, what was ignored until a restart, or why nothing changed.
pub fn apply(state: &AppState, new: Config) {
    let mut applied = state.applied.lock().unwrap_or_else(|e| e.into_inner());
    let mut ignored = restart_only_changes(&applied, &new);
    let identity_changed = identity_of(&applied) != identity_of(&new);
    let upstreams_changed = applied.upstream != new.upstream;

    // Everything built before anything is put in force.
    let upstreams = match upstreams_changed {
        false => None,
        true => match state.upstreams.get().reconfigured(&new.upstream) {
            Ok(upstreams) => Some(upstreams),
            Err(e) => return refused(&e),
        },
    };
    let identities = match (identity_changed, &state.auth) {
        (false, _) => None,
        (true, None) => {
            ignored.push("identity (authentication is off)");
            None
        }
        (true, Some(authority)) => match authority.prepare_identities(&new.identity) {
            Ok(prepared) => Some((authority, prepared)),
            Err(e) => return refused(&e),
        },
    };

    let mut changed = Vec::new();
    if let Some(upstreams) = upstreams {
        let summary = upstreams.summary();
        state.upstreams.set(Arc::new(upstreams));
        applied.upstream = new.upstream.clone();
        changed.push(format!("upstreams now {summary}"));
    }
    if let Some((authority, prepared)) = identities {
        let order = prepared.order.clone();
        authority.install_identities(prepared);
        applied.identity.order = new.identity.order.clone();
        applied.identity.ldap = new.identity.ldap.clone();
        changed.push(format!("identity sources now {order}"));
    }
    let changed = match changed.is_empty() {
        true => "nothing applied changed".to_owned(),
        false => changed.join("; "),
    };
    if ignored.is_empty() {
        tracing::info!("configuration reloaded: {changed}");
    } else {
        tracing::warn!(
            "configuration reloaded: {changed}; changed but ignored until a restart: {}",
            ignored.join(", ")
        );
    }
}

/// The part of `[identity]` a reload applies.
fn identity_of(config: &Config) -> (Vec<String>, &[crate::config::LdapConfig]) {
    (config.identity.order(), &config.identity.ldap)
}

/// The sections of `new` that differ from `old` and can only change with a
/// restart: everything but the password sources and the upstreams.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let sections = [
        ("server", old.server != new.server),
        ("storage", old.storage != new.storage),
        ("log", old.log != new.log),
        ("auth", old.auth != new.auth),
        ("token", old.token != new.token),
        ("users", old.users != new.users),
        ("policy", old.policy != new.policy),
        ("identity.oidc", old.identity.oidc != new.identity.oidc),
        ("v1", old.v1 != new.v1),
        ("login", old.login != new.login),
        ("metrics", old.metrics != new.metrics),
        ("audit", old.audit != new.audit),
    ];
    sections
        .into_iter()
        .filter(|(_, differs)| *differs)
        .map(|(name, _)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sections_that_need_a_restart_are_reported_as_ignored() {
        let old = Config::default();
        let mut new = old.clone();
        assert!(restart_only_changes(&old, &new).is_empty());
        new.upstream = Config::parse(
            "[[upstream]]\nname = \"hub\"\nprefix = \"hub\"\nurl = \"https://registry.example\"\n",
        )
        .unwrap()
        .upstream;
        new.identity.order = Some(vec!["file".into()]);
        assert!(
            restart_only_changes(&old, &new).is_empty(),
            "upstreams and identity sources are applied"
        );
        new.server.listen = "127.0.0.1:1".parse().unwrap();
        new.storage.root = "elsewhere".into();
        assert_eq!(restart_only_changes(&old, &new), ["server", "storage"]);
    }
}

//! The sign-in page's HTML: plain forms, no script (the page's
//! Content-Security-Policy allows none), every value from a person, an
//! issuer or a policy file escaped.

use std::fmt::Write;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::session::Session;
use crate::auth::access_tokens::Record;
use crate::auth::token::rfc3339 as when;
use crate::policy::Applicable;

/// A token just made, shown once.
pub struct Created {
    pub name: String,
    pub token: String,
}

pub struct SignedIn<'a> {
    pub session: &'a Session,
    pub rules: &'a [Applicable],
    pub tokens: &'a [(Record, Option<u64>)],
    pub created: Option<&'a Created>,
    pub registry: &'a str,
    pub max_days: u64,
}

pub fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `&`, `<`, `>`, `"` and `'` as entities: safe in text and in quoted
/// attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}\
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}\
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top}\
code,pre{background:#f4f4f4;padding:.1rem .3rem;border-radius:3px}pre{padding:.6rem;white-space:pre-wrap;word-break:break-all}\
.new{border:2px solid #2a7;padding:1rem;border-radius:6px;background:#f3fbf6}\
.problem{border:2px solid #c33;padding:1rem;border-radius:6px;background:#fdf3f3}\
label{display:block;margin:.5rem 0 .2rem}input,textarea{font:inherit;padding:.3rem}button{font:inherit;padding:.3rem .8rem}";

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        escape(title)
    )
}

pub fn signed_out(issuer: &str) -> String {
    document(
        "Sign in — Portcullis",
        &format!(
            "<h1>Portcullis</h1><p>Sign in to get an access token for <code>docker login</code>.</p>\
             <p><a id=\"sign-in\" href=\"/login/start\">Sign in with {}</a></p>",
            escape(issuer)
        ),
    )
}

pub fn problem(message: &str) -> String {
    document(
        "Sign-in problem — Portcullis",
        &format!(
            "<h1>Portcullis</h1><div class=\"problem\" id=\"problem\">{}</div>\
             <p><a href=\"/login\">Back to the sign-in page</a></p>",
            escape(message)
        ),
    )
}

/// The user name to give `docker login` with a token: the token names its
/// owner, and a name with `:` cannot travel in Basic credentials.
fn login_name(name: &str) -> &str {
    if name.contains(':') { "token" } else { name }
}

pub fn signed_in(view: &SignedIn<'_>) -> String {
    let s = view.session;
    let form_token = escape(&s.form_token);
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>Portcullis</h1><p>Signed in as <strong id=\"user\">{}</strong> through <code>{}</code>.</p>\
         <form method=\"post\" action=\"/login/logout\"><button id=\"logout\">Sign out</button></form>",
        escape(&s.sub),
        escape(&s.source)
    );
    if let Some(created) = view.created {
        let _ = write!(
            body,
            "<div class=\"new\"><h2>Your new token <code>{}</code></h2>\
             <p>Copy it now: it is shown only this once.</p>\
             <pre id=\"token\">{}</pre><p>Log in with it, giving the token as the password \
             (or pipe it to <code>--password-stdin</code>; keep it out of your shell's history):</p>\
             <pre id=\"docker-login\">docker login {} --username {}</pre></div>",
            escape(&created.name),
            escape(&created.token),
            escape(view.registry),
            escape(login_name(&s.sub))
        );
    }
    body.push_str("<h2>Your groups</h2>");
    if s.groups.is_empty() {
        body.push_str("<p id=\"groups\">None.</p>");
    } else {
        body.push_str("<ul id=\"groups\">");
        for group in &s.groups {
            let _ = write!(body, "<li>{}</li>", escape(group));
        }
        body.push_str("</ul>");
    }
    body.push_str(
        "<h2>What the policy lets you do</h2><p>Rules are tried in this order; for each repository the first that matches decides.</p>",
    );
    if view.rules.is_empty() {
        body.push_str("<p id=\"rules\">No rule applies to you: you may do nothing yet.</p>");
    } else {
        body.push_str(
            "<table id=\"rules\"><tr><th>Repositories</th><th>Actions</th><th>Rule</th></tr>",
        );
        for rule in view.rules {
            let actions: Vec<&str> = rule.actions.iter().map(|a| a.as_str()).collect();
            let mut actions = match actions.is_empty() {
                true => "none".to_owned(),
                false => actions.join(", "),
            };
            if rule.catalog {
                actions.push_str("; lists the catalog");
            }
            let _ = write!(
                body,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                escape(&rule.repositories.join(" ")),
                escape(&actions),
                escape(rule.origin.description.as_deref().unwrap_or("")),
            );
        }
        body.push_str("</table>");
    }
    body.push_str("<h2>Your access tokens</h2>");
    if view.tokens.is_empty() {
        body.push_str("<p id=\"tokens\">None yet.</p>");
    } else {
        body.push_str(
            "<table id=\"tokens\"><tr><th>Name</th><th>Scopes</th><th>Expires</th><th>Last used</th><th></th></tr>",
        );
        for (record, used) in view.tokens {
            let scopes = match record.scopes.is_empty() {
                true => "all you may do".to_owned(),
                false => record.scopes.join(" "),
            };
            let _ = write!(
                body,
                "<tr><td>{name}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>\
                 <form method=\"post\" action=\"/login/tokens/revoke\">\
                 <input type=\"hidden\" name=\"form_token\" value=\"{form_token}\">\
                 <input type=\"hidden\" name=\"name\" value=\"{name}\">\
                 <button>Revoke</button></form></td></tr>",
                escape(&scopes),
                record.expires.map_or_else(|| "never".to_owned(), when),
                used.map_or_else(|| "never".to_owned(), when),
                name = escape(&record.name),
            );
        }
        body.push_str("</table>");
    }
    let _ = write!(
        body,
        "<h2>Make a token</h2><form method=\"post\" action=\"/login/tokens\" id=\"create\">\
         <input type=\"hidden\" name=\"form_token\" value=\"{form_token}\">\
         <label for=\"name\">Name</label><input id=\"name\" name=\"name\" required maxlength=\"64\" value=\"laptop\">\
         <label for=\"expires_days\">Lifetime in days (at most {max})</label>\
         <input id=\"expires_days\" name=\"expires_days\" type=\"number\" min=\"1\" max=\"{max}\" value=\"30\">\
         <label for=\"scopes\">Scopes, one per line or space-separated (<code>REPO_GLOB:ACTIONS</code>, e.g. <code>team/**:pull,push</code>); empty: all you may do</label>\
         <textarea id=\"scopes\" name=\"scopes\" rows=\"3\" cols=\"50\"></textarea>\
         <p><button id=\"make\">Make token</button></p></form>",
        max = view.max_days
    );
    document("Portcullis — signed in", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_shown_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert!(!signed_out("<b>corp</b>").contains("<b>"));
        assert!(!problem("<img src=x>").contains("<img"));
    }

    #[test]
    fn a_name_basic_cannot_carry_is_not_suggested() {
        assert_eq!(login_name("alice"), "alice");
        assert_eq!(login_name("sso:alice"), "token");
    }
}

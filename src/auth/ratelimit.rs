//! Failed-login limiter for the token endpoint.
//!
//! The token endpoint asks [`LoginLimiter::check`] before it verifies a
//! password, reports the outcome with [`LoginLimiter::failure`] or
//! [`LoginLimiter::success`], and answers 429 `TOOMANYREQUESTS` with a
//! `Retry-After` of [`retry_after_secs`] when `check` refuses. Three rules,
//! each counting *failed verifications* only:
//!
//! 1. **Per account and client** — `per_account` failures within `window` for
//!    one (account, client) pair refuse that pair until the window since the
//!    oldest counted failure has passed. A success clears the pair.
//! 2. **Per client** — `per_address` failures within `window` from one client,
//!    whatever the accounts, refuse that client for every account (password
//!    spraying). A success does not clear it: otherwise an attacker holding
//!    one valid account could reset the counter between guesses.
//! 3. **Per account, from anywhere** — `per_account × account_wide_factor`
//!    failures within `window` from all clients together throttle the account
//!    (distributed guessing). This throttle is what an attacker could turn
//!    against a real user, so it is deliberately weak against them: a refusal
//!    lasts at most `account_wide_max_refusal` after the latest failure, and a
//!    client the account has recently logged in from (the last
//!    `trusted_per_account` clients, for `trust_lifetime`) is never refused by
//!    it. Rules 1 and 2 still apply to such a client. The price: an attacker
//!    spread over many addresses still gets about the account-wide threshold
//!    of guesses per window, plus one per `account_wide_max_refusal`; the
//!    throttle bounds their rate, it does not stop them.
//!
//! **Sliding window, exact.** Each rule keeps the times of the latest
//! failures, at most as many as its threshold, so "refused until the oldest
//! counted failure leaves the window" is computed exactly and `retry_after` is
//! the precise time after which `check` passes again (unless new failures come
//! in). A fixed window with decay would need less memory per key but would
//! only approximate both the decision and the retry time, and would let an
//! attacker fit twice the threshold around a window boundary; with thresholds
//! of a few dozen the exact log costs little.
//!
//! **No self-extending lockout.** `check` records nothing: a refused attempt
//! never reaches password verification, so it is never a failure. Only
//! `failure` (called after credentials were verified and found wrong) moves
//! the window.
//!
//! **Reservations, so a burst cannot slip through.** A verification takes
//! tens of milliseconds; had `check` been the gate, every request of a
//! concurrent burst would pass it before the first failure was counted. The
//! token endpoint therefore takes a [`Reservation`] with
//! [`LoginLimiter::reserve`] before it looks at the credentials: under the
//! same lock as the check, the attempt is counted as a failure *in flight* by
//! all three rules, until it resolves as a failure (then recorded), a success,
//! or nothing (dropped unresolved: released). So at most the threshold of
//! attempts is ever verified per key, whatever the concurrency. An attempt
//! refused only because of attempts in flight is told so
//! ([`Refusal::InFlight`]): its caller may wait for them to resolve (a burst of
//! right passwords then goes through once the first has succeeded).
//!
//! **Clients.** An IPv4 address is one client; an IPv6 address is grouped by
//! its /64, which one host or site normally controls entirely (privacy
//! addresses rotate inside it). IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a
//! dual-stack socket reports) is the IPv4 address.
//!
//! **Bounded memory.** Account names are kept as given (case-sensitive) up to
//! [`MAX_ACCOUNT_BYTES`]; a longer name is kept as its SHA-256, so a long name
//! costs 32 bytes however long it is. Each failure log holds at most its
//! threshold (itself at most [`MAX_THRESHOLD`]). Expired entries are swept out
//! once the updates since the last sweep reach the number of entries (and at
//! least 1024), so a sweep costs O(1) per update amortized; and when the
//! failure entries or the trusted-client entries exceed `max_entries`, they are
//! swept at once and, if still too many, the oldest are evicted
//! down to 90% of it. Trusted clients live in their own table, created only by
//! successful logins, so an attacker without a password cannot flood a real
//! user's trusted clients out of memory.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Longest account name stored as is; longer ones are stored hashed.
pub const MAX_ACCOUNT_BYTES: usize = 128;
/// Thresholds above this behave as this: it bounds the size of one failure log.
pub const MAX_THRESHOLD: u32 = 1000;
/// Windows and durations above this behave as this, so that no time
/// arithmetic can overflow.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);
/// Updates between two sweeps of expired entries, at the least.
const SWEEP_EVERY: usize = 1024;

/// The limits from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitConfig {
    /// Failures allowed per (account, client) within `window`; 0 disables
    /// this rule and the account-wide one.
    pub per_account: u32,
    /// Failures allowed per client (any account) within `window`; 0 disables.
    pub per_address: u32,
    pub window: Duration,
}

impl From<&crate::config::AuthConfig> for LimitConfig {
    fn from(auth: &crate::config::AuthConfig) -> Self {
        Self {
            per_account: auth.max_failures_per_account,
            per_address: auth.max_failures_per_address,
            window: Duration::from_secs(auth.failure_window_secs),
        }
    }
}

/// Settings below the configuration; the defaults suit the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// The account-wide threshold is `per_account` times this.
    pub account_wide_factor: u32,
    /// Longest refusal by the account-wide throttle after its latest failure.
    pub account_wide_max_refusal: Duration,
    /// How many recent successful clients per account are exempt from the
    /// account-wide throttle (0: none).
    pub trusted_per_account: usize,
    /// How long a successful login keeps its client trusted.
    pub trust_lifetime: Duration,
    /// Cap on failure entries (pairs + clients + accounts together), and
    /// separately on accounts with trusted clients.
    pub max_entries: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            account_wide_factor: 10,
            account_wide_max_refusal: Duration::from_secs(60),
            trusted_per_account: 4,
            trust_lifetime: Duration::from_secs(30 * 24 * 3600),
            max_entries: 100_000,
        }
    }
}

/// Failed-login limiter; one per server, shared by every request.
pub struct LoginLimiter {
    pair_limit: usize,
    address_limit: usize,
    account_limit: usize,
    window: Duration,
    max_refusal: Duration,
    trusted_per_account: usize,
    trust_lifetime: Duration,
    max_entries: usize,
    inner: Mutex<Inner>,
    /// Woken whenever a reservation resolves, for attempts waiting on
    /// [`Refusal::InFlight`].
    pub resolved: tokio::sync::Notify,
}

impl LoginLimiter {
    pub fn new(config: LimitConfig) -> Self {
        Self::with_tuning(config, Tuning::default())
    }

    pub fn with_tuning(config: LimitConfig, tuning: Tuning) -> Self {
        let limit = |n: u32| n.min(MAX_THRESHOLD) as usize;
        Self {
            pair_limit: limit(config.per_account),
            address_limit: limit(config.per_address),
            account_limit: limit(
                config
                    .per_account
                    .saturating_mul(tuning.account_wide_factor),
            ),
            window: config.window.min(MAX_DURATION),
            max_refusal: tuning.account_wide_max_refusal.min(MAX_DURATION),
            trusted_per_account: tuning.trusted_per_account,
            trust_lifetime: tuning.trust_lifetime.min(MAX_DURATION),
            max_entries: tuning.max_entries.max(1),
            inner: Mutex::new(Inner::default()),
            resolved: tokio::sync::Notify::new(),
        }
    }

    /// Before verifying credentials: `Err(retry_after)` when this attempt must
    /// be refused now; `check` again at `now + retry_after` passes unless new
    /// failures came in meanwhile. Records nothing.
    pub fn check(&self, account: &str, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = AccountKey::new(account);
        let mut inner = self.lock();
        match self.judge(&mut inner, &key, Client::of(addr), now).until {
            Some(u) if u > now => Err(u - now),
            _ => Ok(()),
        }
    }

    /// What the three rules say of an attempt at `now`, for `check` and
    /// `reserve` alike.
    fn judge(
        &self,
        inner: &mut Inner,
        key: &AccountKey,
        client: Client,
        now: Instant,
    ) -> Judgement {
        let trusted = inner.is_trusted(key, client, now, self.trust_lifetime);
        let mut judgement = Judgement {
            until: None,
            in_flight: false,
            trusted,
        };
        let mut take = |gate: Gate| match gate {
            Gate::Open => {}
            Gate::InFlight => judgement.in_flight = true,
            Gate::Until(u) => judgement.until = judgement.until.max(Some(u)),
        };
        if let Some(log) = inner.pairs.get_mut(&(key.clone(), client)) {
            take(log.gate(now, self.window, self.pair_limit));
        }
        if let Some(log) = inner.clients.get_mut(&client) {
            take(log.gate(now, self.window, self.address_limit));
        }
        if let Some(log) = inner.accounts.get_mut(key).filter(|_| !trusted) {
            match log.gate(now, self.window, self.account_limit) {
                Gate::Until(u) => {
                    // Capped so that the throttle only ever delays, never
                    // locks out.
                    let capped = log.newest().map_or(u, |n| u.min(n + self.max_refusal));
                    if capped > now {
                        take(Gate::Until(capped));
                    }
                }
                gate => take(gate),
            }
        }
        judgement
    }

    /// Before looking at credentials: counts the attempt as a failure in
    /// flight for its pair, client and account, or refuses it, atomically, so
    /// that concurrent attempts can never outnumber a threshold. The attempt
    /// is refused when a rule's recorded failures plus those in flight reach
    /// its threshold.
    pub fn reserve(
        self: &Arc<Self>,
        account: &str,
        addr: IpAddr,
        now: Instant,
    ) -> Result<Reservation, Refusal> {
        let key = AccountKey::new(account);
        let client = Client::of(addr);
        let mut inner = self.lock();
        let Judgement {
            until,
            in_flight,
            trusted,
        } = self.judge(&mut inner, &key, client, now);
        match until {
            Some(u) if u > now => return Err(Refusal::Failures(u - now)),
            _ => {}
        }
        if in_flight {
            return Err(Refusal::InFlight);
        }
        let pair = (key.clone(), client);
        if self.pair_limit > 0 {
            inner.pairs.entry(pair).or_default().pending += 1;
        }
        if self.address_limit > 0 {
            inner.clients.entry(client).or_default().pending += 1;
        }
        // A trusted client's attempts are not counted by the account-wide
        // rule when checked, so they do not occupy it in flight either.
        let account_wide = self.account_limit > 0 && !trusted;
        if account_wide {
            inner.accounts.entry(key.clone()).or_default().pending += 1;
        }
        self.maintain(&mut inner, now);
        Ok(Reservation {
            limiter: Arc::clone(self),
            account: key,
            client,
            account_wide,
            resolved: false,
        })
    }

    /// Gives a reservation back, without an outcome.
    fn release(&self, inner: &mut Inner, r: &Reservation) {
        let pair = (r.account.clone(), r.client);
        let drop_one = |log: Option<&mut FailLog>| {
            if let Some(log) = log {
                log.pending = log.pending.saturating_sub(1);
            }
        };
        if self.pair_limit > 0 {
            drop_one(inner.pairs.get_mut(&pair));
        }
        if self.address_limit > 0 {
            drop_one(inner.clients.get_mut(&r.client));
        }
        if r.account_wide {
            drop_one(inner.accounts.get_mut(&r.account));
        }
    }

    /// Credentials were verified and were wrong. Never call this for an
    /// attempt `check` refused.
    pub fn failure(&self, account: &str, addr: IpAddr, now: Instant) {
        let account = AccountKey::new(account);
        let client = Client::of(addr);
        let mut inner = self.lock();
        self.record_failure(&mut inner, account, client, now);
    }

    fn record_failure(&self, inner: &mut Inner, account: AccountKey, client: Client, now: Instant) {
        let window = self.window;
        if self.pair_limit > 0 {
            let log = inner.pairs.entry((account.clone(), client)).or_default();
            log.record(now, window, self.pair_limit);
        }
        if self.address_limit > 0 {
            let log = inner.clients.entry(client).or_default();
            log.record(now, window, self.address_limit);
        }
        if self.account_limit > 0 {
            let log = inner.accounts.entry(account).or_default();
            log.record(now, window, self.account_limit);
        }
        self.maintain(inner, now);
    }

    /// Credentials were verified and were right: the pair's failures are
    /// forgotten and the client becomes trusted for this account.
    pub fn success(&self, account: &str, addr: IpAddr, now: Instant) {
        let account = AccountKey::new(account);
        let client = Client::of(addr);
        let mut inner = self.lock();
        self.record_success(&mut inner, account, client, now);
    }

    fn record_success(&self, inner: &mut Inner, account: AccountKey, client: Client, now: Instant) {
        // Other attempts of the pair may still be in flight: their
        // reservations stay counted, only the recorded failures go.
        let pair = (account.clone(), client);
        if let Some(log) = inner.pairs.get_mut(&pair) {
            log.times.clear();
            if log.pending == 0 {
                inner.pairs.remove(&pair);
            }
        }
        if self.trusted_per_account > 0 {
            let recent = inner.trusted.entry(account).or_default();
            recent.retain(|(c, _)| *c != client);
            recent.push_front((client, now));
            recent.truncate(self.trusted_per_account);
        }
        self.maintain(inner, now);
    }

    /// An administrator cleared these accounts' lockouts (`portcullis user
    /// unlock`): their failures recorded up to each cutoff are forgotten, per
    /// (account, client) and account-wide. The per-client rule is left
    /// alone: it is about the address, not the account, and clearing it would
    /// let a sprayer reset its counter through any account it can unlock.
    /// Attempts in flight stay counted. A cutoff older than the window has
    /// nothing left to forget, so applying old unlocks again costs nothing.
    /// Returns the accounts that had failures to forget.
    pub fn forget_before<'a>(&self, cutoffs: &[(&'a str, Instant)], now: Instant) -> Vec<&'a str> {
        let cutoffs: HashMap<AccountKey, (&str, Instant)> = cutoffs
            .iter()
            .filter(|(_, cutoff)| *cutoff + self.window > now)
            .map(|(name, cutoff)| (AccountKey::new(name), (*name, *cutoff)))
            .collect();
        let mut forgotten = Vec::new();
        if cutoffs.is_empty() {
            return forgotten;
        }
        // Whether the log is still worth keeping, noting whose failures went.
        let mut forget = |key: &AccountKey, log: &mut FailLog| {
            let Some((name, cutoff)) = cutoffs.get(key) else {
                return true;
            };
            let before = log.times.len();
            log.times.retain(|t| t > cutoff);
            if log.times.len() < before && !forgotten.contains(name) {
                forgotten.push(*name);
            }
            !log.is_idle()
        };
        let mut inner = self.lock();
        inner.pairs.retain(|(key, _), log| forget(key, log));
        inner.accounts.retain(|key, log| forget(key, log));
        forgotten
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held; if something ever did, the
        // tables are still consistent enough to go on with.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn maintain(&self, inner: &mut Inner, now: Instant) {
        inner.updates += 1;
        let over =
            inner.failure_entries() > self.max_entries || inner.trusted.len() > self.max_entries;
        if !over && inner.updates < SWEEP_EVERY.max(inner.failure_entries() + inner.trusted.len()) {
            return;
        }
        inner.updates = 0;
        inner.sweep(now, self.window, self.trust_lifetime);
        let target = self.max_entries - self.max_entries / 10;
        if inner.failure_entries() > self.max_entries {
            inner.evict_failures(inner.failure_entries() - target);
        }
        if inner.trusted.len() > self.max_entries {
            let excess = inner.trusted.len() - target;
            evict_oldest(&mut inner.trusted, excess, |recent| {
                recent.front().map(|(_, at)| *at)
            });
        }
    }
}

/// Seconds for a `Retry-After` header: rounded up, so that a client that
/// waits that long is not refused again, and at least 1.
pub fn retry_after_secs(retry_after: Duration) -> u64 {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    secs.max(1)
}

/// Why [`LoginLimiter::reserve`] refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Recorded failures: refused for this long (exactly, as `check`).
    Failures(Duration),
    /// Attempts in flight fill a threshold; they resolve within a
    /// verification's time, so waiting for them is worth it.
    InFlight,
}

/// One attempt counted in flight by the limiter: resolve it with
/// [`Reservation::failure`] or [`Reservation::success`]; dropped unresolved,
/// it is released and counts for nothing (the attempt got no answer).
pub struct Reservation {
    limiter: Arc<LoginLimiter>,
    account: AccountKey,
    client: Client,
    account_wide: bool,
    resolved: bool,
}

impl Reservation {
    /// The credentials were checked and were wrong.
    pub fn failure(mut self, now: Instant) {
        self.resolved = true;
        let limiter = Arc::clone(&self.limiter);
        let mut inner = limiter.lock();
        limiter.release(&mut inner, &self);
        limiter.record_failure(&mut inner, self.account.clone(), self.client, now);
    }

    /// The credentials were checked and were right.
    pub fn success(mut self, now: Instant) {
        self.resolved = true;
        let limiter = Arc::clone(&self.limiter);
        let mut inner = limiter.lock();
        limiter.release(&mut inner, &self);
        limiter.record_success(&mut inner, self.account.clone(), self.client, now);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.resolved {
            let limiter = Arc::clone(&self.limiter);
            let mut inner = limiter.lock();
            limiter.release(&mut inner, self);
        }
        self.limiter.resolved.notify_waiters();
    }
}

/// An account as stored: the name itself when short, its SHA-256 otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum AccountKey {
    Name(Box<str>),
    Hashed([u8; 32]),
}

impl AccountKey {
    fn new(name: &str) -> Self {
        if name.len() <= MAX_ACCOUNT_BYTES {
            AccountKey::Name(name.into())
        } else {
            AccountKey::Hashed(Sha256::digest(name.as_bytes()).into())
        }
    }
}

/// A client as counted: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Client {
    V4(Ipv4Addr),
    V6Net(u64),
}

impl Client {
    fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(v4) => Client::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Client::V4(v4),
                None => Client::V6Net((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

/// Times of the latest failures of one key, oldest first, at most the
/// threshold of its rule: enough to know exactly when the oldest one that
/// still counts leaves the window.
#[derive(Debug, Default)]
struct FailLog {
    times: VecDeque<Instant>,
    /// Reserved attempts not yet resolved: failures in flight.
    pending: u32,
}

/// Where one rule stands for one key.
enum Gate {
    Open,
    /// Refused by failures in flight only: open again once they resolve
    /// (unless they turn out to be failures).
    InFlight,
    /// Refused by recorded failures until then.
    Until(Instant),
}

/// The three rules' verdict on one attempt.
struct Judgement {
    /// The latest moment a rule refuses until.
    until: Option<Instant>,
    /// A rule is full only counting the failures in flight.
    in_flight: bool,
    /// The client recently logged in to the account: the account-wide rule
    /// does not apply.
    trusted: bool,
}

impl FailLog {
    fn expire(&mut self, now: Instant, window: Duration) {
        while self.times.front().is_some_and(|t| *t + window <= now) {
            self.times.pop_front();
        }
    }

    fn record(&mut self, now: Instant, window: Duration, limit: usize) {
        self.expire(now, window);
        // Callers take `now` before the lock, so times may arrive slightly
        // out of order; keep the log sorted.
        let at = self
            .times
            .iter()
            .rposition(|t| *t <= now)
            .map_or(0, |i| i + 1);
        self.times.insert(at, now);
        while self.times.len() > limit {
            self.times.pop_front();
        }
    }

    /// When `limit` or more failures are within the window at `now`: the
    /// moment enough of them have left it for one more attempt.
    fn blocked_until(&mut self, now: Instant, window: Duration, limit: usize) -> Option<Instant> {
        self.expire(now, window);
        if limit == 0 || self.times.len() < limit {
            return None;
        }
        Some(self.times[self.times.len() - limit] + window)
    }

    fn newest(&self) -> Option<Instant> {
        self.times.back().copied()
    }

    /// Like `blocked_until`, counting the failures in flight as well.
    fn gate(&mut self, now: Instant, window: Duration, limit: usize) -> Gate {
        if let Some(until) = self.blocked_until(now, window, limit) {
            return Gate::Until(until);
        }
        if limit > 0 && self.times.len() + self.pending as usize >= limit {
            Gate::InFlight
        } else {
            Gate::Open
        }
    }

    fn is_idle(&self) -> bool {
        self.times.is_empty() && self.pending == 0
    }
}

#[derive(Default)]
struct Inner {
    pairs: HashMap<(AccountKey, Client), FailLog>,
    clients: HashMap<Client, FailLog>,
    accounts: HashMap<AccountKey, FailLog>,
    /// Per account, its recent successful clients, most recent first.
    trusted: HashMap<AccountKey, VecDeque<(Client, Instant)>>,
    /// Updates since the last sweep.
    updates: usize,
}

impl Inner {
    fn failure_entries(&self) -> usize {
        self.pairs.len() + self.clients.len() + self.accounts.len()
    }

    fn is_trusted(
        &self,
        account: &AccountKey,
        client: Client,
        now: Instant,
        lifetime: Duration,
    ) -> bool {
        self.trusted.get(account).is_some_and(|recent| {
            recent
                .iter()
                .any(|(c, at)| *c == client && now < *at + lifetime)
        })
    }

    /// Drops every failure that has left the window and every trust that has
    /// expired, and the entries left empty.
    fn sweep(&mut self, now: Instant, window: Duration, lifetime: Duration) {
        let keep = |log: &mut FailLog| {
            log.expire(now, window);
            !log.is_idle()
        };
        self.pairs.retain(|_, log| keep(log));
        self.clients.retain(|_, log| keep(log));
        self.accounts.retain(|_, log| keep(log));
        self.trusted.retain(|_, recent| {
            recent.retain(|(_, at)| now < *at + lifetime);
            !recent.is_empty()
        });
    }

    /// Removes the `count` failure entries whose latest failure is oldest,
    /// across the three tables.
    fn evict_failures(&mut self, count: usize) {
        let mut ages: Vec<Instant> = (self.pairs.values())
            .chain(self.clients.values())
            .chain(self.accounts.values())
            .filter_map(FailLog::newest)
            .collect();
        let Some(cutoff) = nth_oldest(&mut ages, count) else {
            return;
        };
        let mut ties = ties_to_remove(&ages, cutoff, count);
        // A log with attempts in flight stays: forgetting them would let a
        // burst past its threshold.
        let mut keep =
            |log: &FailLog| log.pending > 0 || keep_newer(log.newest(), cutoff, &mut ties);
        self.pairs.retain(|_, log| keep(log));
        self.clients.retain(|_, log| keep(log));
        self.accounts.retain(|_, log| keep(log));
    }
}

/// Removes the `count` entries of `map` whose `age` is oldest.
fn evict_oldest<K, V>(map: &mut HashMap<K, V>, count: usize, age: impl Fn(&V) -> Option<Instant>) {
    let mut ages: Vec<Instant> = map.values().filter_map(&age).collect();
    let Some(cutoff) = nth_oldest(&mut ages, count) else {
        return;
    };
    let mut ties = ties_to_remove(&ages, cutoff, count);
    map.retain(|_, v| keep_newer(age(v), cutoff, &mut ties));
}

/// The age of the `count`-th oldest (1-based), reordering `ages`.
fn nth_oldest(ages: &mut [Instant], count: usize) -> Option<Instant> {
    if count == 0 || ages.is_empty() {
        return None;
    }
    let index = count.min(ages.len()) - 1;
    Some(*ages.select_nth_unstable(index).1)
}

/// How many entries exactly as old as `cutoff` must go, so that exactly
/// `count` go in all (all the older ones go).
fn ties_to_remove(ages: &[Instant], cutoff: Instant, count: usize) -> usize {
    let older = ages.iter().filter(|a| **a < cutoff).count();
    count.saturating_sub(older)
}

fn keep_newer(age: Option<Instant>, cutoff: Instant, ties: &mut usize) -> bool {
    match age {
        None => false,
        Some(a) if a < cutoff => false,
        Some(a) if a == cutoff && *ties > 0 => {
            *ties -= 1;
            false
        }
        Some(_) => true,
    }
}

#[cfg(test)]
mod tests;

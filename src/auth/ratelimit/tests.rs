//! Every test drives the limiter with explicit instants (offsets from one
//! base), so nothing depends on the wall clock or on sleeping.

use super::*;

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn limiter(per_account: u32, per_address: u32, window_secs: u64) -> LoginLimiter {
    LoginLimiter::new(LimitConfig {
        per_account,
        per_address,
        window: secs(window_secs),
    })
}

fn tuned(per_account: u32, per_address: u32, window_secs: u64, tuning: Tuning) -> LoginLimiter {
    LoginLimiter::with_tuning(
        LimitConfig {
            per_account,
            per_address,
            window: secs(window_secs),
        },
        tuning,
    )
}

/// A distinct IPv4 address per index, none of them special.
fn nth_v4(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

#[test]
fn pair_is_refused_after_threshold_until_oldest_failure_leaves_window() {
    let l = limiter(3, 100, 60);
    let t0 = Instant::now();
    let a = ip("192.0.2.1");

    l.failure("alice", a, t0);
    l.failure("alice", a, t0 + secs(10));
    assert_eq!(
        l.check("alice", a, t0 + secs(15)),
        Ok(()),
        "two failures are under the threshold"
    );
    l.failure("alice", a, t0 + secs(20));

    assert_eq!(l.check("alice", a, t0 + secs(20)), Err(secs(40)));
    assert_eq!(l.check("alice", a, t0 + secs(25)), Err(secs(35)));
    assert_eq!(l.check("alice", a, t0 + secs(60) - ms(1)), Err(ms(1)));
    assert_eq!(
        l.check("alice", a, t0 + secs(60)),
        Ok(()),
        "the oldest failure left the window"
    );

    // Sliding: one more failure now makes three within the window again
    // (10 s, 20 s, 60 s), so the next opening is when the 10 s one leaves.
    l.failure("alice", a, t0 + secs(60));
    assert_eq!(l.check("alice", a, t0 + secs(60)), Err(secs(10)));
    assert_eq!(l.check("alice", a, t0 + secs(70)), Ok(()));
}

#[test]
fn retry_after_is_the_exact_time_until_check_passes() {
    let l = limiter(2, 100, 300);
    let t0 = Instant::now();
    let a = ip("192.0.2.1");
    l.failure("alice", a, t0 + ms(1500));
    l.failure("alice", a, t0 + ms(2750));
    let asked = t0 + ms(3333);
    let retry = l.check("alice", a, asked).expect_err("over the threshold");
    assert_eq!(retry, secs(300) + ms(1500) - ms(3333));
    assert_eq!(
        l.check("alice", a, asked + retry - Duration::from_nanos(1)),
        Err(Duration::from_nanos(1))
    );
    assert_eq!(l.check("alice", a, asked + retry), Ok(()));
}

#[test]
fn success_clears_the_pair() {
    let l = limiter(3, 100, 60);
    let t0 = Instant::now();
    let a = ip("192.0.2.1");
    l.failure("alice", a, t0);
    l.failure("alice", a, t0 + secs(1));
    l.success("alice", a, t0 + secs(2));
    l.failure("alice", a, t0 + secs(3));
    l.failure("alice", a, t0 + secs(4));
    assert_eq!(
        l.check("alice", a, t0 + secs(5)),
        Ok(()),
        "the two before the success are forgotten"
    );
    l.failure("alice", a, t0 + secs(5));
    assert_eq!(
        l.check("alice", a, t0 + secs(5)),
        Err(secs(58)),
        "counted from the first failure after the success"
    );
}

#[test]
fn pairs_are_independent() {
    let l = limiter(2, 100, 60);
    let t0 = Instant::now();
    let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
    l.failure("alice", a, t0);
    l.failure("alice", a, t0);
    assert_eq!(l.check("alice", a, t0), Err(secs(60)));
    assert_eq!(
        l.check("bob", a, t0),
        Ok(()),
        "another account from the same client"
    );
    assert_eq!(
        l.check("alice", b, t0),
        Ok(()),
        "the same account from another client"
    );
}

#[test]
fn account_names_are_case_sensitive() {
    let l = limiter(2, 100, 60);
    let t0 = Instant::now();
    let a = ip("192.0.2.1");
    l.failure("Alice", a, t0);
    l.failure("Alice", a, t0);
    assert!(l.check("Alice", a, t0).is_err());
    assert_eq!(l.check("alice", a, t0), Ok(()));
}

#[test]
fn refused_checks_do_not_extend_the_lockout() {
    let l = limiter(2, 3, 60);
    let t0 = Instant::now();
    let a = ip("192.0.2.1");
    l.failure("alice", a, t0);
    l.failure("alice", a, t0 + secs(1));
    // An attacker hammering through the whole lockout, every 50 ms, for this
    // pair and for other accounts from the same client.
    for i in 0..1160 {
        let now = t0 + secs(2) + ms(50 * i);
        assert_eq!(
            l.check("alice", a, now),
            Err(t0 + secs(60) - now),
            "at +{} ms",
            2000 + 50 * i
        );
        assert_eq!(l.check("bob", a, now), Ok(()), "the client has 2 of its 3");
    }
    assert_eq!(l.check("alice", a, t0 + secs(60)), Ok(()));
}

#[test]
fn spraying_from_one_client_refuses_it_for_every_account() {
    let l = limiter(3, 5, 60);
    let t0 = Instant::now();
    let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
    for (i, account) in ["u1", "u2", "u3", "u4", "u5"].into_iter().enumerate() {
        assert_eq!(l.check(account, a, t0 + secs(i as u64)), Ok(()));
        l.failure(account, a, t0 + secs(i as u64));
    }
    assert_eq!(
        l.check("fresh", a, t0 + secs(10)),
        Err(secs(50)),
        "refused until the first spray leaves the window"
    );
    assert_eq!(l.check("u1", a, t0 + secs(10)), Err(secs(50)));
    assert_eq!(
        l.check("fresh", b, t0 + secs(10)),
        Ok(()),
        "other clients are not affected"
    );
    assert_eq!(l.check("fresh", a, t0 + secs(60)), Ok(()));
}

#[test]
fn success_does_not_reset_the_client_count() {
    // An attacker holding one valid account must not be able to reset the
    // spraying counter by logging into it between guesses.
    let l = limiter(3, 4, 60);
    let t0 = Instant::now();
    let a = ip("192.0.2.1");
    l.failure("alice", a, t0);
    l.failure("alice", a, t0);
    l.failure("bob", a, t0);
    l.success("mallory", a, t0 + secs(1));
    l.failure("dave", a, t0 + secs(2));
    assert_eq!(l.check("mallory", a, t0 + secs(3)), Err(secs(57)));
    assert_eq!(l.check("alice", ip("192.0.2.9"), t0 + secs(3)), Ok(()));
}

#[test]
fn ipv6_clients_are_grouped_by_64() {
    let l = limiter(100, 3, 60);
    let t0 = Instant::now();
    l.failure("u1", ip("2001:db8:1:2::1"), t0);
    l.failure("u2", ip("2001:db8:1:2:ffff::5"), t0);
    l.failure("u3", ip("2001:db8:1:2:abcd:ef01:2345:6789"), t0);
    assert_eq!(
        l.check("u4", ip("2001:db8:1:2::9"), t0),
        Err(secs(60)),
        "same /64"
    );
    assert_eq!(l.check("u4", ip("2001:db8:1:3::1"), t0), Ok(()), "next /64");
    assert_eq!(
        l.check("u4", ip("2001:db9:1:2::1"), t0),
        Ok(()),
        "other prefix, same low bits"
    );
}

#[test]
fn ipv6_pairs_are_grouped_by_64_too() {
    // Rotating privacy addresses inside one /64 gives no fresh attempts.
    let l = limiter(2, 100, 60);
    let t0 = Instant::now();
    l.failure("alice", ip("2001:db8::1"), t0);
    l.failure("alice", ip("2001:db8::2"), t0);
    assert_eq!(l.check("alice", ip("2001:db8::3"), t0), Err(secs(60)));
}

#[test]
fn ipv4_addresses_are_not_grouped() {
    let l = limiter(100, 2, 60);
    let t0 = Instant::now();
    l.failure("u1", ip("192.0.2.1"), t0);
    l.failure("u2", ip("192.0.2.1"), t0);
    assert!(l.check("u3", ip("192.0.2.1"), t0).is_err());
    assert_eq!(l.check("u3", ip("192.0.2.2"), t0), Ok(()));
    assert_eq!(l.check("u3", ip("192.0.3.1"), t0), Ok(()));
}

#[test]
fn ipv4_mapped_ipv6_is_the_ipv4_address() {
    let l = limiter(2, 3, 60);
    let t0 = Instant::now();
    l.failure("u1", ip("::ffff:192.0.2.7"), t0);
    l.failure("u2", ip("192.0.2.7"), t0);
    l.failure("u3", ip("::ffff:192.0.2.7"), t0);
    assert_eq!(l.check("u4", ip("192.0.2.7"), t0), Err(secs(60)));
    assert_eq!(l.check("u4", ip("::ffff:192.0.2.7"), t0), Err(secs(60)));
    assert_eq!(l.check("u4", ip("::ffff:192.0.2.8"), t0), Ok(()));
    // And the pair rule sees the two spellings as one client.
    let l = limiter(2, 100, 60);
    l.failure("alice", ip("::ffff:198.51.100.1"), t0);
    l.failure("alice", ip("198.51.100.1"), t0);
    assert!(l.check("alice", ip("::ffff:198.51.100.1"), t0).is_err());
}

#[test]
fn distributed_guessing_throttles_the_account_briefly() {
    // per_account 2: the account-wide threshold is 20.
    let l = limiter(2, 100, 300);
    let t0 = Instant::now();
    for i in 0..19 {
        l.failure("alice", nth_v4(i), t0 + secs(u64::from(i)));
    }
    assert_eq!(
        l.check("alice", nth_v4(1000), t0 + secs(19)),
        Ok(()),
        "19 of 20"
    );
    l.failure("alice", nth_v4(19), t0 + secs(19));
    // Refused for 60 s after the latest failure, not until the window ends.
    assert_eq!(l.check("alice", nth_v4(1000), t0 + secs(19)), Err(secs(60)));
    assert_eq!(l.check("alice", nth_v4(1000), t0 + secs(78)), Err(secs(1)));
    assert_eq!(l.check("alice", nth_v4(1000), t0 + secs(79)), Ok(()));
    assert_eq!(
        l.check("bob", nth_v4(1000), t0 + secs(19)),
        Ok(()),
        "other accounts are not throttled"
    );
    // One more failure while still over the threshold: another 60 s at most.
    l.failure("alice", nth_v4(20), t0 + secs(79));
    assert_eq!(l.check("alice", nth_v4(1001), t0 + secs(79)), Err(secs(60)));
}

#[test]
fn account_wide_refusal_never_exceeds_its_cap() {
    let l = limiter(2, 1000, 3600);
    let t0 = Instant::now();
    for i in 0..200 {
        let now = t0 + secs(u64::from(i));
        if l.check("alice", nth_v4(i), now).is_ok() {
            l.failure("alice", nth_v4(i), now);
        }
        if let Err(retry) = l.check("alice", nth_v4(5000), now) {
            assert!(retry <= secs(60), "{retry:?} at +{i} s");
        }
    }
    // Over an hour-long window, the attacker got the 20 of the threshold and
    // then one guess a minute.
    let counted = l.lock().accounts[&AccountKey::new("alice")].times.len();
    assert_eq!(counted, 20, "the log never exceeds the threshold");
}

#[test]
fn account_wide_refusal_ends_with_the_window_when_that_is_sooner() {
    let l = limiter(2, 1000, 30);
    let t0 = Instant::now();
    for i in 0..20 {
        l.failure("alice", nth_v4(i), t0 + secs(u64::from(i)));
    }
    assert_eq!(l.check("alice", nth_v4(500), t0 + secs(19)), Err(secs(11)));
}

#[test]
fn real_user_is_never_locked_out_by_a_distributed_attack() {
    let l = limiter(5, 20, 300);
    let t0 = Instant::now();
    let at = |s: u64| t0 + secs(s);
    let home_v4 = ip("198.51.100.7");
    let home_v6 = ip("2001:db8:aa:bb::10");
    // The same home /64 after the host rotated its privacy address.
    let home_v6_rotated = ip("2001:db8:aa:bb:1234:5678:9abc:def0");
    let hotel = ip("192.0.2.200");
    let bystander = ip("192.0.2.201");
    l.success("alice", home_v4, at(0));
    l.success("alice", home_v6, at(0));

    // Two hours of a botnet of 10,000 addresses, one guess a second, each
    // bot seen once, so neither the pair nor the client rule ever fires.
    let mut guesses = 0u64;
    let mut refused = 0u64;
    let mut bystander_refused = 0u64;
    let mut hotel_retry: Option<Instant> = None;
    let mut hotel_in = false;
    for s in 1..=7200u64 {
        let now = at(s);
        // Alice goes first at each instant, the attacker second.
        for addr in [home_v4, home_v6, home_v6_rotated] {
            assert_eq!(
                l.check("alice", addr, now),
                Ok(()),
                "alice from {addr} at +{s} s"
            );
        }
        if s % 300 == 0 {
            l.success("alice", home_v4, now);
        }
        if l.check("alice", bystander, now).is_err() {
            bystander_refused += 1;
        }
        match (hotel_in, hotel_retry) {
            (false, Some(when)) if now >= when => {
                assert_eq!(now, when, "retry_after lands on a whole second here");
                assert_eq!(
                    l.check("alice", hotel, now),
                    Ok(()),
                    "let in when retry_after said"
                );
                l.success("alice", hotel, now);
                hotel_in = true;
            }
            (false, None) if s >= 3600 => {
                if let Err(retry) = l.check("alice", hotel, now) {
                    assert!(retry > Duration::ZERO && retry <= secs(60), "{retry:?}");
                    hotel_retry = Some(now + retry);
                }
            }
            (true, _) => assert_eq!(l.check("alice", hotel, now), Ok(()), "hotel is trusted now"),
            _ => {}
        }

        let bot = nth_v4((s % 10_000) as u32);
        if l.check("alice", bot, now).is_ok() {
            l.failure("alice", bot, now);
            guesses += 1;
        } else {
            refused += 1;
        }
    }
    assert!(hotel_retry.is_some(), "the hotel was throttled at first");
    assert!(hotel_in);
    assert!(
        bystander_refused > 0 && refused > 0,
        "the throttle did engage"
    );
    // The attacker gets at most the threshold per window plus one guess per
    // minute of refusal: far fewer than the 7200 tried.
    let bound = 50 * (7200 / 300 + 1) + 7200 / 60 + 1;
    assert!(guesses <= bound, "{guesses} guesses > {bound}");
    assert!(guesses < 7200 / 4, "{guesses} guesses");
}

#[test]
fn trusted_clients_are_bounded_per_account() {
    let l = limiter(2, 100, 300);
    let t0 = Instant::now();
    let homes: Vec<IpAddr> = (1..=5).map(|i| ip(&format!("198.51.100.{i}"))).collect();
    for (i, home) in homes.iter().enumerate() {
        l.success("alice", *home, t0 + secs(i as u64));
    }
    for i in 0..20 {
        l.failure("alice", nth_v4(i), t0 + secs(10));
    }
    assert_eq!(
        l.check("alice", homes[0], t0 + secs(10)),
        Err(secs(60)),
        "the oldest one was forgotten"
    );
    for home in &homes[1..] {
        assert_eq!(l.check("alice", *home, t0 + secs(10)), Ok(()), "{home}");
    }
    assert_eq!(l.lock().trusted[&AccountKey::new("alice")].len(), 4);
    // A repeated success moves a client to the front instead of adding it.
    l.success("alice", homes[1], t0 + secs(11));
    l.success("alice", homes[0], t0 + secs(12));
    assert_eq!(
        l.check("alice", homes[2], t0 + secs(12)),
        Err(secs(58)),
        "pushed out by homes[0]"
    );
    assert_eq!(l.check("alice", homes[1], t0 + secs(12)), Ok(()));
}

#[test]
fn trust_expires() {
    let day = 24 * 3600;
    let l = tuned(
        2,
        100,
        300,
        Tuning {
            trust_lifetime: secs(day),
            ..Tuning::default()
        },
    );
    let t0 = Instant::now();
    let home = ip("198.51.100.7");
    l.success("alice", home, t0);
    let later = t0 + secs(day);
    for i in 0..20 {
        l.failure("alice", nth_v4(i), later);
    }
    assert_eq!(
        l.check("alice", home, later - secs(1)),
        Ok(()),
        "still trusted a second before"
    );
    assert_eq!(l.check("alice", home, later), Err(secs(60)));
}

#[test]
fn trusted_clients_still_meet_the_pair_and_client_rules() {
    let l = limiter(3, 5, 60);
    let t0 = Instant::now();
    let home = ip("198.51.100.7");
    l.success("alice", home, t0);
    for _ in 0..3 {
        l.failure("alice", home, t0 + secs(1));
    }
    assert_eq!(
        l.check("alice", home, t0 + secs(1)),
        Err(secs(60)),
        "pair rule"
    );
    l.failure("bob", home, t0 + secs(2));
    l.failure("carol", home, t0 + secs(2));
    assert_eq!(
        l.check("dave", home, t0 + secs(2)),
        Err(secs(59)),
        "client rule"
    );
}

#[test]
fn account_wide_throttle_can_be_tuned_or_trust_disabled() {
    let l = tuned(
        2,
        1000,
        300,
        Tuning {
            account_wide_factor: 3,
            account_wide_max_refusal: secs(5),
            trusted_per_account: 0,
            ..Tuning::default()
        },
    );
    let t0 = Instant::now();
    let home = ip("198.51.100.7");
    l.success("alice", home, t0);
    for i in 0..6 {
        l.failure("alice", nth_v4(i), t0 + secs(1));
    }
    assert_eq!(
        l.check("alice", home, t0 + secs(1)),
        Err(secs(5)),
        "no client is trusted"
    );
    assert!(l.lock().trusted.is_empty());
}

#[test]
fn zero_thresholds_disable_their_rules() {
    let l = limiter(0, 0, 60);
    let t0 = Instant::now();
    let a = ip("192.0.2.1");
    for _ in 0..1000 {
        l.failure("alice", a, t0);
    }
    assert_eq!(l.check("alice", a, t0), Ok(()));
    assert_eq!(
        l.lock().failure_entries(),
        0,
        "nothing is recorded for a disabled rule"
    );

    let l = limiter(0, 2, 60);
    l.failure("alice", a, t0);
    l.failure("alice", a, t0);
    assert_eq!(
        l.check("bob", a, t0),
        Err(secs(60)),
        "the client rule alone still works"
    );
}

#[test]
fn extreme_settings_do_not_panic() {
    let l = LoginLimiter::with_tuning(
        LimitConfig {
            per_account: u32::MAX,
            per_address: u32::MAX,
            window: Duration::MAX,
        },
        Tuning {
            account_wide_factor: u32::MAX,
            account_wide_max_refusal: Duration::MAX,
            trusted_per_account: usize::MAX,
            trust_lifetime: Duration::MAX,
            max_entries: usize::MAX,
        },
    );
    let t0 = Instant::now();
    let a = ip("192.0.2.1");
    l.success("alice", a, t0);
    for _ in 0..MAX_THRESHOLD {
        l.failure("alice", ip("192.0.2.2"), t0);
    }
    // Thresholds behave as MAX_THRESHOLD and the window as MAX_DURATION.
    assert_eq!(l.check("alice", ip("192.0.2.2"), t0), Err(MAX_DURATION));
    assert!(
        l.lock()
            .pairs
            .values()
            .all(|log| log.times.len() <= MAX_THRESHOLD as usize)
    );

    let l = tuned(
        5,
        20,
        60,
        Tuning {
            max_entries: 0,
            ..Tuning::default()
        },
    );
    for i in 0..100 {
        l.failure(&format!("user{i}"), nth_v4(i), t0);
        l.success(&format!("user{i}"), nth_v4(i), t0);
    }
    let inner = l.lock();
    assert!(inner.failure_entries() <= 1, "max_entries 0 behaves as 1");
    assert!(inner.trusted.len() <= 1);
}

#[test]
fn instants_out_of_order_are_handled() {
    // Callers read the clock before taking the lock, so a later caller may
    // hold an earlier instant.
    let l = limiter(3, 100, 60);
    let t0 = Instant::now();
    let a = ip("192.0.2.1");
    l.failure("alice", a, t0 + secs(10));
    l.failure("alice", a, t0 + secs(5));
    l.failure("alice", a, t0 + secs(7));
    assert_eq!(
        l.check("alice", a, t0 + secs(10)),
        Err(secs(55)),
        "counted from the earliest one"
    );
    assert_eq!(
        l.check("alice", a, t0),
        Err(secs(65)),
        "an instant before all of them"
    );
    let times: Vec<Instant> = l.lock().pairs[&(AccountKey::new("alice"), Client::of(a))]
        .times
        .iter()
        .copied()
        .collect();
    assert_eq!(times, vec![t0 + secs(5), t0 + secs(7), t0 + secs(10)]);
    // A late arrival older than the whole log is dropped by the cap, not
    // kept in place of a newer one.
    l.failure("alice", a, t0 + secs(1));
    assert_eq!(
        l.check("alice", a, t0 + secs(10)),
        Err(secs(55)),
        "still the three newest"
    );
}

#[test]
fn long_account_names_are_stored_hashed() {
    let l = limiter(2, 100, 60);
    let t0 = Instant::now();
    let a = ip("192.0.2.1");
    let long = "a".repeat(1 << 20);
    let long_too = format!("{long}b");
    l.failure(&long, a, t0);
    l.failure(&long, a, t0);
    assert!(l.check(&long, a, t0).is_err());
    assert_eq!(
        l.check(&long_too, a, t0),
        Ok(()),
        "hashed, not truncated: a shared prefix is not the same account"
    );
    assert!(matches!(AccountKey::new(&long), AccountKey::Hashed(_)));
    let edge = "é".repeat(MAX_ACCOUNT_BYTES / 2);
    assert!(matches!(AccountKey::new(&edge), AccountKey::Name(n) if *n == *edge));
    assert!(matches!(
        AccountKey::new(&format!("{edge}x")),
        AccountKey::Hashed(_)
    ));
    // Nothing stored is longer than the bound.
    let inner = l.lock();
    for (key, _) in inner.pairs.keys() {
        if let AccountKey::Name(n) = key {
            assert!(n.len() <= MAX_ACCOUNT_BYTES);
        }
    }
}

#[test]
fn expired_entries_are_swept() {
    let l = limiter(5, 20, 60);
    let t0 = Instant::now();
    for i in 0..500 {
        l.failure(&format!("user{i}"), nth_v4(i), t0);
        l.success(&format!("user{i}x"), nth_v4(i), t0);
    }
    {
        let inner = l.lock();
        assert_eq!(inner.failure_entries(), 1500);
        assert_eq!(inner.trusted.len(), 500);
    }
    // After the window, ordinary traffic on one pair is enough to sweep the
    // rest out; the sweep waits for as many updates as there are entries.
    let late = t0 + secs(61);
    for _ in 0..(2000 + 500) {
        l.failure("late", ip("192.0.2.250"), late);
    }
    let inner = l.lock();
    assert_eq!(
        inner.failure_entries(),
        3,
        "only the late pair, its client and its account"
    );
    assert_eq!(
        inner.trusted.len(),
        500,
        "trust outlives the failure window"
    );
    assert_eq!(
        inner.pairs[&(AccountKey::new("late"), Client::of(ip("192.0.2.250")))]
            .times
            .len(),
        5
    );
}

#[test]
fn memory_is_bounded_and_the_oldest_entries_go_first() {
    let max = 1000;
    let l = tuned(
        5,
        20,
        300,
        Tuning {
            max_entries: max,
            ..Tuning::default()
        },
    );
    let t0 = Instant::now();
    let n = 20_000u32;
    for i in 0..n {
        // Every failure is a new account from a new client: three new entries.
        l.failure(&format!("user{i}"), nth_v4(i), t0 + ms(u64::from(i)));
        assert!(l.lock().failure_entries() <= max, "after failure {i}");
        l.success(&format!("user{i}"), nth_v4(i + n), t0 + ms(u64::from(i)));
        assert!(l.lock().trusted.len() <= max, "after success {i}");
    }
    {
        let inner = l.lock();
        for i in (n - 100)..n {
            let key = (AccountKey::new(&format!("user{i}")), Client::of(nth_v4(i)));
            assert!(inner.pairs.contains_key(&key), "recent user{i} kept");
            assert!(
                inner
                    .trusted
                    .contains_key(&AccountKey::new(&format!("user{i}")))
            );
        }
        assert!(
            !inner.accounts.contains_key(&AccountKey::new("user0")),
            "oldest evicted"
        );
        assert!(!inner.trusted.contains_key(&AccountKey::new("user0")));
    }
    // A lockout recorded under memory pressure still works.
    let now = t0 + ms(u64::from(n));
    for _ in 0..5 {
        l.failure("victim", ip("192.0.2.1"), now);
    }
    assert_eq!(l.check("victim", ip("192.0.2.1"), now), Err(secs(300)));
}

#[test]
fn eviction_removes_exactly_the_oldest_even_with_equal_times() {
    let t0 = Instant::now();
    let mut map: HashMap<u32, Instant> =
        (0..10).map(|i| (i, t0 + secs(u64::from(i / 4)))).collect();
    // Ages: 0,0,0,0,1,1,1,1,2,2. Removing 6 takes the four at 0 and two at 1.
    evict_oldest(&mut map, 6, |t| Some(*t));
    assert_eq!(map.len(), 4);
    let mut ages: Vec<Instant> = map.values().copied().collect();
    ages.sort();
    assert_eq!(
        ages,
        vec![t0 + secs(1), t0 + secs(1), t0 + secs(2), t0 + secs(2)]
    );
    // All at one instant: still exactly the count asked for.
    let mut same: HashMap<u32, Instant> = (0..10).map(|i| (i, t0)).collect();
    evict_oldest(&mut same, 3, |t| Some(*t));
    assert_eq!(same.len(), 7);
    evict_oldest(&mut same, 100, |t| Some(*t));
    assert!(same.is_empty());
}

#[test]
fn limiter_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<LoginLimiter>();

    let l = Arc::new(limiter(3, 24, 60));
    let t0 = Instant::now();
    let shared = ip("192.0.2.1");
    std::thread::scope(|scope| {
        for t in 0..8 {
            let l = Arc::clone(&l);
            scope.spawn(move || {
                for k in 0..3 {
                    l.failure(&format!("user{t}"), shared, t0 + ms(k));
                }
            });
        }
    });
    for t in 0..8 {
        assert!(l.check(&format!("user{t}"), ip("192.0.2.2"), t0).is_ok());
        assert_eq!(
            l.check(&format!("user{t}"), shared, t0 + ms(2)),
            Err(secs(60) - ms(2))
        );
    }
    assert_eq!(
        l.check("fresh", shared, t0 + ms(2)),
        Err(secs(60) - ms(2)),
        "24 failures from the client"
    );
}

#[test]
fn retry_after_seconds_round_up() {
    assert_eq!(retry_after_secs(Duration::ZERO), 1);
    assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
    assert_eq!(retry_after_secs(secs(1)), 1);
    assert_eq!(retry_after_secs(secs(1) + Duration::from_nanos(1)), 2);
    assert_eq!(retry_after_secs(secs(60)), 60);
}

#[test]
fn limits_come_from_the_auth_configuration() {
    let auth = crate::config::AuthConfig::default();
    let config = LimitConfig::from(&auth);
    assert_eq!(
        config,
        LimitConfig {
            per_account: auth.max_failures_per_account,
            per_address: auth.max_failures_per_address,
            window: secs(auth.failure_window_secs),
        }
    );
}

/// A plain model of the three rules that keeps every failure forever and
/// recomputes each decision from scratch.
struct Model {
    window: Duration,
    pair_limit: usize,
    client_limit: usize,
    account_limit: usize,
    cap: Duration,
    trusted_per_account: usize,
    trust_lifetime: Duration,
    pairs: HashMap<(String, Client), Vec<Instant>>,
    clients: HashMap<Client, Vec<Instant>>,
    accounts: HashMap<String, Vec<Instant>>,
    trusted: HashMap<String, Vec<(Client, Instant)>>,
}

impl Model {
    fn blocked(&self, times: Option<&Vec<Instant>>, limit: usize, now: Instant) -> Option<Instant> {
        let mut live: Vec<Instant> = times?
            .iter()
            .copied()
            .filter(|t| *t + self.window > now)
            .collect();
        live.sort();
        (limit > 0 && live.len() >= limit).then(|| live[live.len() - limit] + self.window)
    }

    fn check(&self, account: &str, client: Client, now: Instant) -> Result<(), Duration> {
        let mut until = [
            self.blocked(
                self.pairs.get(&(account.to_owned(), client)),
                self.pair_limit,
                now,
            ),
            self.blocked(self.clients.get(&client), self.client_limit, now),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
        let trusted = self.trusted.get(account).is_some_and(|recent| {
            recent
                .iter()
                .take(self.trusted_per_account)
                .any(|(c, at)| *c == client && now < *at + self.trust_lifetime)
        });
        if !trusted {
            let times = self.accounts.get(account);
            if let Some(u) = self.blocked(times, self.account_limit, now) {
                let newest = times
                    .into_iter()
                    .flatten()
                    .max()
                    .copied()
                    .expect("blocked has failures");
                until.push(u.min(newest + self.cap));
            }
        }
        match until.into_iter().max() {
            Some(u) if u > now => Err(u - now),
            _ => Ok(()),
        }
    }

    fn failure(&mut self, account: &str, client: Client, now: Instant) {
        self.pairs
            .entry((account.to_owned(), client))
            .or_default()
            .push(now);
        self.clients.entry(client).or_default().push(now);
        self.accounts
            .entry(account.to_owned())
            .or_default()
            .push(now);
    }

    fn success(&mut self, account: &str, client: Client, now: Instant) {
        self.pairs.remove(&(account.to_owned(), client));
        let recent = self.trusted.entry(account.to_owned()).or_default();
        recent.retain(|(c, _)| *c != client);
        recent.insert(0, (client, now));
    }
}

#[test]
fn matches_a_plain_model_on_random_traffic() {
    let accounts = ["alice", "bob", "carol"];
    let addrs = [
        ip("192.0.2.1"),
        ip("::ffff:192.0.2.1"),
        ip("192.0.2.2"),
        ip("2001:db8::1"),
        ip("2001:db8::2"),
        ip("2001:db8:0:1::1"),
    ];
    for seed in 0..20u64 {
        let tuning = Tuning {
            account_wide_factor: 2,
            account_wide_max_refusal: secs(5),
            trusted_per_account: 2,
            trust_lifetime: secs(30),
            max_entries: 100_000,
        };
        let l = tuned(3, 5, 20, tuning.clone());
        let mut model = Model {
            window: secs(20),
            pair_limit: 3,
            client_limit: 5,
            account_limit: 6,
            cap: tuning.account_wide_max_refusal,
            trusted_per_account: tuning.trusted_per_account,
            trust_lifetime: tuning.trust_lifetime,
            pairs: HashMap::new(),
            clients: HashMap::new(),
            accounts: HashMap::new(),
            trusted: HashMap::new(),
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let mut now = Instant::now();
        let mut refusals = 0;
        for step in 0..3000 {
            // Zero steps too, so that equal instants are exercised.
            now += ms(rng.random_range(0..=1500u64));
            let account = accounts[rng.random_range(0..accounts.len())];
            let addr = addrs[rng.random_range(0..addrs.len())];
            let client = Client::of(addr);
            let expected = model.check(account, client, now);
            assert_eq!(
                l.check(account, addr, now),
                expected,
                "seed {seed} step {step}: {account} from {addr}"
            );
            if expected.is_err() {
                refusals += 1;
                continue;
            }
            if rng.random_bool(0.8) {
                l.failure(account, addr, now);
                model.failure(account, client, now);
            } else {
                l.success(account, addr, now);
                model.success(account, client, now);
            }
        }
        assert!(
            refusals > 100,
            "seed {seed}: the traffic should hit the limits ({refusals})"
        );
    }
}

#[test]
fn reservations_count_in_flight_and_resolve() {
    let l = Arc::new(limiter(3, 100, 60));
    let t0 = Instant::now();
    let a = ip("192.0.2.1");
    let held: Vec<_> = (0..3).map(|_| l.reserve("alice", a, t0).unwrap()).collect();
    assert_eq!(l.reserve("alice", a, t0).err(), Some(Refusal::InFlight));
    // Dropped unresolved: released, counts for nothing.
    drop(held);
    let held: Vec<_> = (0..3).map(|_| l.reserve("alice", a, t0).unwrap()).collect();
    for r in held {
        r.failure(t0 + secs(1));
    }
    assert_eq!(
        l.reserve("alice", a, t0 + secs(1)).err(),
        Some(Refusal::Failures(secs(60)))
    );
    assert!(l.reserve("bob", a, t0 + secs(1)).is_ok_and(|r| {
        r.success(t0 + secs(1));
        true
    }));
}

#[test]
fn an_unlock_forgets_the_accounts_earlier_failures_only() {
    let l = limiter(3, 100, 60);
    let t0 = Instant::now();
    let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
    for i in 0..3 {
        l.failure("alice", a, t0 + secs(i));
        l.failure("bob", a, t0 + secs(i));
    }
    // Account-wide: 30 failures from 30 other clients.
    for i in 0..30 {
        l.failure("alice", nth_v4(i), t0 + secs(3));
    }
    assert!(l.check("alice", a, t0 + secs(4)).is_err());
    assert!(l.check("alice", b, t0 + secs(4)).is_err());
    assert_eq!(
        l.forget_before(&[("alice", t0 + secs(3)), ("carol", t0)], t0 + secs(4)),
        ["alice"],
        "carol had nothing to forget"
    );
    assert_eq!(l.check("alice", a, t0 + secs(4)), Ok(()));
    assert_eq!(l.check("alice", b, t0 + secs(4)), Ok(()));
    assert!(
        l.check("bob", a, t0 + secs(4)).is_err(),
        "another account stays locked"
    );
    // Failures after the unlock count again.
    for i in 0..3 {
        l.failure("alice", a, t0 + secs(5 + i));
    }
    assert!(l.check("alice", a, t0 + secs(8)).is_err());
    // An unlock older than the window is a no-op.
    assert!(
        l.forget_before(&[("alice", t0 + secs(3))], t0 + secs(70))
            .is_empty()
    );
    assert!(l.check("alice", a, t0 + secs(8)).is_err());
}

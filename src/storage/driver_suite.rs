//! The conformance suite every storage driver must pass.
//!
//! Each `pub async fn` checks one property of the [`Driver`] contract (the
//! doc comments in [`super::driver`]) and panics with a message naming the
//! violated property; [`run_all`] runs every one of them. A driver's test file
//! calls them one per test, so a failure is named after its property:
//!
//! ```ignore
//! #[tokio::test]
//! async fn rename_replaces_target() {
//!     driver_suite::rename_replaces_target(&my_driver().await).await;
//! }
//! ```
//!
//! The suite is ordinary library code (no dev-dependencies), so an
//! out-of-tree driver or an S3 integration job can run it too. Every property
//! works under its own fresh `suite-<uuid>/` prefix, so properties may share
//! one driver (one bucket, one root) and run concurrently; the suite never
//! touches anything outside the prefixes it made, and removes them when a
//! property passes.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::future::join_all;
use sha2::Digest as _;

use super::driver::{Assembly, Driver, DriverError, Precondition, Result};

/// Runs every property in turn.
pub async fn run_all(driver: &dyn Driver) {
    get_put_round_trip(driver).await;
    put_replaces_atomically(driver).await;
    missing_key_is_not_found(driver).await;
    prefix_is_not_an_object(driver).await;
    read_range(driver).await;
    read_to_end(driver).await;
    large_reads_are_whole_and_in_order(driver).await;
    file_ranges_match_read(driver).await;
    assembly_round_trip(driver).await;
    assembly_continues_from_recorded_state(driver).await;
    assembly_discards_unrecorded_bytes(driver).await;
    abort_keeps_recorded_state(driver).await;
    finish_is_idempotent(driver).await;
    moved_assembly_is_not_found(driver).await;
    discard_leaves_nothing(driver).await;
    list_direct_children_sorted(driver).await;
    list_missing_or_empty_is_not_found(driver).await;
    hidden_names_never_listed(driver).await;
    sweep_keeps_every_object(driver).await;
    rename_replaces_target(driver).await;
    rename_missing_is_not_found(driver).await;
    rename_prunes_emptied_prefix(driver).await;
    delete_object(driver).await;
    delete_prefix_recursively(driver).await;
    delete_missing_is_not_found(driver).await;
    delete_prunes_emptied_prefix(driver).await;
    invalid_keys_are_refused(driver).await;
    concurrent_puts_leave_one_whole_value(driver).await;
    put_if_absent_creates_once(driver).await;
    put_if_matches_swaps_only_the_version_read(driver).await;
    racing_compare_and_swaps_lose_no_update(driver).await;
    large_streamed_assembly(driver).await;
    large_assembly_in_odd_rounds(driver).await;
}

/// Keys the contract says no driver may accept.
pub const INVALID_KEYS: &[&str] = &[
    "",
    "/abs",
    "../x",
    "a/../../x",
    "a//b",
    "a/./b",
    "./a",
    "a/",
    "a/..",
    ".",
    "..",
];

// ---------------------------------------------------------------------------
// Objects: get, put, stat, read
// ---------------------------------------------------------------------------

/// `put` then `get` returns the same bytes (empty and binary content too),
/// `stat` gives their length, and parents are created as needed.
pub async fn get_put_round_trip(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let cases: [(&str, Bytes); 3] = [
        ("obj", Bytes::from_static(b"hello, driver")),
        ("deep/er/still/obj", pattern(70_000, 1)),
        ("empty", Bytes::new()),
    ];
    for (name, content) in &cases {
        let key = s.key(name);
        ok(driver.put(&key, content.clone()).await, "put", &key);
        let got = ok(driver.get(&key).await, "get", &key);
        assert!(
            got == *content,
            "get({key}) after put returned {} bytes that differ from the {} put",
            got.len(),
            content.len()
        );
        let before = std::time::SystemTime::now();
        let meta = ok(driver.stat(&key).await, "stat", &key);
        assert_eq!(
            meta.size,
            content.len() as u64,
            "stat({key}) after put of {} bytes",
            content.len()
        );
        // The write time is the store's clock: close to ours, not a
        // placeholder (garbage collection's grace period depends on it).
        let skew = std::time::Duration::from_secs(300);
        assert!(
            meta.modified <= before + skew && meta.modified + skew >= before,
            "stat({key}).modified is {:?}, now is {before:?}",
            meta.modified
        );
    }
    s.remove().await;
}

/// A second `put` replaces the whole object, also with shorter content, and
/// a reader racing the writer sees the old value or the new, never a mix or a
/// prefix.
pub async fn put_replaces_atomically(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let key = s.key("obj");
    let old = pattern(300_000, 2);
    let new = pattern(1_000, 3);
    ok(driver.put(&key, old.clone()).await, "put", &key);
    ok(driver.put(&key, new.clone()).await, "put (replace)", &key);
    let got = ok(driver.get(&key).await, "get", &key);
    assert!(
        got == new,
        "get({key}) after a replacing put of {} bytes returned {} bytes that are not the new value",
        new.len(),
        got.len()
    );
    assert_eq!(
        ok(driver.stat(&key).await, "stat", &key).size,
        new.len() as u64,
        "stat({key}) after a put that shrank the object"
    );

    // Readers racing writers: every read must be one of the two values whole.
    let values = [old, new];
    for round in 0..4 {
        let writes = (0..4).map(|i| driver.put(&key, values[(round + i) % 2].clone()));
        let reads = (0..8).map(|_| driver.get(&key));
        let (writes, reads) = futures_util::future::join(join_all(writes), join_all(reads)).await;
        for w in writes {
            ok(w, "put (racing readers)", &key);
        }
        for r in reads {
            let got = ok(r, "get (racing writers)", &key);
            assert!(
                values.contains(&got),
                "get({key}) racing puts returned {} bytes that are neither value whole: \
                 put is not atomic",
                got.len()
            );
        }
    }
    s.remove().await;
}

/// `get`, `stat` and `read` of a key that was never written are `NotFound`,
/// also under a missing prefix and below an object.
pub async fn missing_key_is_not_found(driver: &dyn Driver) {
    let s = Scope::new(driver);
    ok(
        driver
            .put(&s.key("present"), Bytes::from_static(b"x"))
            .await,
        "put",
        "present",
    );
    for name in ["absent", "no/such/prefix/obj", "present/below"] {
        let key = s.key(name);
        expect_not_found(driver.get(&key).await, "get", &key);
        expect_not_found(driver.stat(&key).await, "stat", &key);
        expect_not_found(driver.read(&key, 0, None).await, "read", &key);
    }
    s.remove().await;
}

/// A prefix that holds objects is not itself an object: `get`, `stat` and
/// `read` of it are `NotFound`.
pub async fn prefix_is_not_an_object(driver: &dyn Driver) {
    let s = Scope::new(driver);
    ok(
        driver
            .put(&s.key("dir/sub/obj"), Bytes::from_static(b"x"))
            .await,
        "put",
        "dir/sub/obj",
    );
    for name in ["dir", "dir/sub"] {
        let key = s.key(name);
        expect_not_found(driver.get(&key).await, "get of a prefix", &key);
        expect_not_found(driver.stat(&key).await, "stat of a prefix", &key);
        expect_not_found(driver.read(&key, 0, None).await, "read of a prefix", &key);
    }
    s.remove().await;
}

/// `read(offset, Some(len))` streams exactly that slice.
pub async fn read_range(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let key = s.key("obj");
    let content = pattern(600_000, 4);
    ok(driver.put(&key, content.clone()).await, "put", &key);
    let n = content.len() as u64;
    for (offset, len) in [
        (0, n),
        (0, 1),
        (1, 10),
        (123_457, 300_001),
        (n - 1, 1),
        (n, 0),
        (5, 0),
    ] {
        let got = read_all(driver, &key, offset, Some(len)).await;
        let want = content.slice(offset as usize..(offset + len) as usize);
        assert!(
            got == want,
            "read({key}, offset {offset}, len {len}) returned {} bytes that are not that slice",
            got.len()
        );
    }
    s.remove().await;
}

/// `read(offset, None)` streams from `offset` to the end.
pub async fn read_to_end(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let key = s.key("obj");
    let content = pattern(600_000, 5);
    ok(driver.put(&key, content.clone()).await, "put", &key);
    let n = content.len() as u64;
    for offset in [0, 1, 262_144, 400_003, n - 1, n] {
        let got = read_all(driver, &key, offset, None).await;
        let want = content.slice(offset as usize..);
        assert!(
            got == want,
            "read({key}, offset {offset}, to end) returned {} bytes, want the last {}",
            got.len(),
            want.len()
        );
    }
    let empty = s.key("empty");
    ok(driver.put(&empty, Bytes::new()).await, "put", &empty);
    assert!(
        read_all(driver, &empty, 0, None).await.is_empty(),
        "read of an empty object returned bytes"
    );
    s.remove().await;
}

/// Reads of objects many parts long (which a driver may split into
/// ranges read at once) return exactly the bytes asked for, in order:
/// whole, to the end from an offset, and bounded ranges starting and ending
/// inside parts.
pub async fn large_reads_are_whole_and_in_order(driver: &dyn Driver) {
    const MIB: u64 = 1 << 20;
    let s = Scope::new(driver);
    let key = s.key("large");
    let content = pattern(12 * MIB as usize + 4_099, 6);
    ok(driver.put(&key, content.clone()).await, "put", &key);
    let n = content.len() as u64;
    for (offset, len) in [
        (0, None),
        (1, None),
        (5 * MIB - 1, Some(5 * MIB + 2)),
        (7 * MIB + 3, Some(4 * MIB)),
        (n - 10, None),
        (3, Some(n - 3)),
    ] {
        let end = len.map_or(n, |len| offset + len);
        let want = sha256(&content[offset as usize..end as usize]);
        let got = read_digest(driver, &key, offset, len).await;
        assert!(
            got == (end - offset, want),
            "read({key}, offset {offset}, len {len:?}) returned {} bytes that are not that slice",
            got.0
        );
    }
    s.remove().await;
}

/// A driver with [`super::FileRanges`] hands out the same bytes as `read`
/// as a file range bounded exactly as asked, and `NotFound` for a missing
/// key. (A driver without the capability has nothing to check here.)
pub async fn file_ranges_match_read(driver: &dyn Driver) {
    let Some(files) = driver.file_ranges() else {
        return;
    };
    let s = Scope::new(driver);
    let key = s.key("obj");
    let content = pattern(600_000, 6);
    ok(driver.put(&key, content.clone()).await, "put", &key);
    let n = content.len() as u64;
    for (offset, len) in [(0, Some(n)), (123_457, Some(300_001)), (400_003, None)] {
        let range = ok(
            files.file_range(&key, offset, len).await,
            "file_range",
            &key,
        );
        let want_len = len.unwrap_or(n - offset);
        assert!(
            range.offset == offset && range.len() == want_len,
            "file_range({key}, {offset}, {len:?}) gave {}..{}",
            range.offset,
            range.end
        );
        let got = collect(range.into_stream(), &key).await;
        let want = content.slice(offset as usize..(offset + want_len) as usize);
        assert!(
            got == want,
            "file_range({key}, offset {offset}, len {len:?}) is not that slice"
        );
    }
    expect_not_found(
        files.file_range(&s.key("missing"), 0, None).await,
        "file_range",
        &s.key("missing"),
    );
    s.remove().await;
}

// ---------------------------------------------------------------------------
// Conditional writes
// ---------------------------------------------------------------------------

/// Create-if-absent writes a missing object and refuses an existing one,
/// leaving it as it was; with atomic conditional writes, of 16 racing
/// creators exactly one wins and its content is the object's.
pub async fn put_if_absent_creates_once(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let key = s.key("once");
    ok(
        driver
            .put_if(&key, pattern(100, 1), Precondition::Absent)
            .await,
        "put_if(absent) of a missing object",
        &key,
    );
    expect_precondition_failed(
        driver
            .put_if(&key, pattern(100, 2), Precondition::Absent)
            .await,
        "put_if(absent) of an existing object",
        &key,
    );
    assert_eq!(
        ok(driver.get(&key).await, "get", &key),
        pattern(100, 1),
        "a refused create-if-absent must leave the object as it was"
    );
    if driver.conditional_writes() {
        let raced = s.key("raced");
        let writes =
            (0..16u8).map(|i| driver.put_if(&raced, pattern(1000, i), Precondition::Absent));
        let results = join_all(writes).await;
        let winners: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_ok())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "racing create-if-absent writers that won: {winners:?}"
        );
        for (i, result) in results.iter().enumerate() {
            if !winners.contains(&i) {
                assert!(
                    matches!(result, Err(DriverError::PreconditionFailed(_))),
                    "a losing create-if-absent: want PreconditionFailed, got {}",
                    describe(result)
                );
            }
        }
        assert_eq!(
            ok(driver.get(&raced).await, "get", &raced),
            pattern(1000, winners[0] as u8),
            "the object must be the winner's"
        );
    }
    s.remove().await;
}

/// A compare-and-swap writes only over the version it read: a second swap
/// from the same version, or one on a missing object, is refused.
pub async fn put_if_matches_swaps_only_the_version_read(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let key = s.key("swap");
    ok(driver.put(&key, pattern(10, 1)).await, "put", &key);
    let (content, first) = ok(driver.get_versioned(&key).await, "get_versioned", &key);
    assert_eq!(content, pattern(10, 1), "get_versioned's content");
    ok(
        driver
            .put_if(&key, pattern(10, 2), Precondition::Matches(first.clone()))
            .await,
        "put_if(matches) of the version read",
        &key,
    );
    expect_precondition_failed(
        driver
            .put_if(&key, pattern(10, 3), Precondition::Matches(first.clone()))
            .await,
        "put_if(matches) of a version since replaced",
        &key,
    );
    let (content, second) = ok(driver.get_versioned(&key).await, "get_versioned", &key);
    assert_eq!(content, pattern(10, 2), "the swapped content");
    assert_ne!(first, second, "a write must change the version");
    let missing = s.key("missing");
    expect_precondition_failed(
        driver
            .put_if(&missing, pattern(10, 4), Precondition::Matches(second))
            .await,
        "put_if(matches) of a missing object",
        &missing,
    );
    expect_not_found(
        driver.get(&missing).await,
        "get after a refused swap",
        &missing,
    );
    s.remove().await;
}

/// With atomic conditional writes, 8 writers each adding one to a counter
/// by read-then-swap (retrying when refused) lose no update.
pub async fn racing_compare_and_swaps_lose_no_update(driver: &dyn Driver) {
    if !driver.conditional_writes() {
        return;
    }
    let s = Scope::new(driver);
    let key = s.key("counter");
    ok(
        driver.put(&key, Bytes::from_static(b"0")).await,
        "put",
        &key,
    );
    let increment = || async {
        loop {
            let (content, version) = ok(driver.get_versioned(&key).await, "get_versioned", &key);
            let n: u64 = std::str::from_utf8(&content).unwrap().parse().unwrap();
            let next = Bytes::from((n + 1).to_string());
            match driver
                .put_if(&key, next, Precondition::Matches(version))
                .await
            {
                Ok(()) => return,
                Err(DriverError::PreconditionFailed(_)) => continue,
                Err(e) => panic!("put_if({key}): {e}"),
            }
        }
    };
    join_all((0..8).map(|_| increment())).await;
    assert_eq!(
        ok(driver.get(&key).await, "get", &key),
        Bytes::from_static(b"8"),
        "racing compare-and-swap increments lost updates"
    );
    s.remove().await;
}

// ---------------------------------------------------------------------------
// Assemblies
// ---------------------------------------------------------------------------

/// An assembly is written, committed and finished into an object holding
/// exactly its bytes; `size()` counts written bytes and `commit` returns the
/// state with the size. One that never received a byte finishes empty.
pub async fn assembly_round_trip(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let key = s.key("new/obj");
    let start = ok(driver.start_assembly(&key).await, "start_assembly", &key);
    assert_eq!(start.size, 0, "a new assembly's size");
    let mut assembler = ok(driver.assemble(&key, &start).await, "assemble", &key);
    assert_eq!(assembler.size(), 0, "size() of a fresh assembler");
    let parts = [pattern(1000, 6), pattern(1, 7), pattern(70_000, 8)];
    let mut expected = BytesMut::new();
    for part in &parts {
        ok(assembler.write(part.clone()).await, "write", &key);
        expected.extend_from_slice(part);
        assert_eq!(
            assembler.size(),
            expected.len() as u64,
            "size() must count the bytes written so far"
        );
    }
    let state = ok(assembler.commit().await, "commit", &key);
    assert_eq!(
        state.size,
        expected.len() as u64,
        "commit must return the assembly's size"
    );
    ok(driver.finish_assembly(&key, &state).await, "finish", &key);
    assert_eq!(
        ok(driver.stat(&key).await, "stat", &key).size,
        state.size,
        "stat after finish"
    );
    assert!(
        ok(driver.get(&key).await, "get", &key) == expected,
        "object after finish differs from the bytes written"
    );

    let empty = s.key("empty");
    let start = ok(
        driver.start_assembly(&empty).await,
        "start_assembly",
        &empty,
    );
    ok(
        driver.finish_assembly(&empty, &start).await,
        "finish of nothing",
        &empty,
    );
    assert_eq!(
        ok(driver.stat(&empty).await, "stat", &empty).size,
        0,
        "an assembly finished without a byte must leave an empty object"
    );
    s.remove().await;
}

/// An assembler opened from the recorded state continues the assembly,
/// round after round, and the state survives serialization (another
/// process continues it from the record alone).
pub async fn assembly_continues_from_recorded_state(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let key = s.key("obj");
    let mut expected = BytesMut::new();
    let mut recorded = ok(driver.start_assembly(&key).await, "start_assembly", &key);
    for round in 0..4u8 {
        recorded = reloaded(&recorded);
        let mut assembler = ok(driver.assemble(&key, &recorded).await, "assemble", &key);
        assert_eq!(
            assembler.size(),
            recorded.size,
            "size() of an assembler opened at {}",
            recorded.size
        );
        for i in 0..3u8 {
            let part = pattern(40_000 + usize::from(i) * 333, 10 + round * 3 + i);
            ok(assembler.write(part.clone()).await, "write", &key);
            expected.extend_from_slice(&part);
        }
        recorded = ok(assembler.commit().await, "commit", &key);
        assert_eq!(
            recorded.size,
            expected.len() as u64,
            "commit after round {round}"
        );
    }
    ok(
        driver.finish_assembly(&key, &reloaded(&recorded)).await,
        "finish",
        &key,
    );
    assert!(
        ok(driver.get(&key).await, "get", &key) == expected,
        "object assembled in rounds differs from the concatenation of the rounds"
    );
    s.remove().await;
}

/// A state continued after a newer commit was made from it (a crash before
/// the newer one was recorded) discards the newer bytes: the object holds
/// what was recorded and what came after it, whether or not the
/// continuation wrote anything.
pub async fn assembly_discards_unrecorded_bytes(driver: &dyn Driver) {
    let s = Scope::new(driver);
    for (name, after) in [("more", pattern(500, 22)), ("nothing", Bytes::new())] {
        let key = s.key(name);
        let first = pattern(10_000, 20);
        let start = ok(driver.start_assembly(&key).await, "start_assembly", &key);
        let recorded = commit_round(driver, &key, &start, &first).await;
        // Committed, never recorded.
        commit_round(driver, &key, &recorded, &pattern(300_000, 21)).await;
        let state = commit_round(driver, &key, &recorded, &after).await;
        assert_eq!(
            state.size,
            (first.len() + after.len()) as u64,
            "size after continuing the recorded state with {name}"
        );
        ok(driver.finish_assembly(&key, &state).await, "finish", &key);
        let mut want = BytesMut::from(&first[..]);
        want.extend_from_slice(&after);
        assert!(
            ok(driver.get(&key).await, "get", &key) == want,
            "bytes committed after the recorded state must be replaced by what came after it ({name})"
        );
    }
    s.remove().await;
}

/// `abort` forgets the written bytes: the state the assembler was opened
/// with stays valid and can be continued, also for the first assembler.
pub async fn abort_keeps_recorded_state(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let key = s.key("obj");
    let first = pattern(5_000, 30);
    let start = ok(driver.start_assembly(&key).await, "start_assembly", &key);
    let recorded = commit_round(driver, &key, &start, &first).await;

    // Aborted after more than one large write.
    let mut assembler = ok(driver.assemble(&key, &recorded).await, "assemble", &key);
    for i in 0..3 {
        ok(
            assembler.write(pattern(700_000, 31 + i)).await,
            "write",
            &key,
        );
    }
    ok(assembler.abort().await, "abort", &key);

    let more = pattern(100, 35);
    let state = commit_round(driver, &key, &recorded, &more).await;
    ok(driver.finish_assembly(&key, &state).await, "finish", &key);
    let mut want = BytesMut::from(&first[..]);
    want.extend_from_slice(&more);
    assert!(
        ok(driver.get(&key).await, "get", &key) == want,
        "an assembly continued after an abort must hold the recorded bytes and the new ones"
    );

    // The very first assembler aborted: nothing is readable, and the
    // assembly goes on from its start.
    let fresh = s.key("fresh");
    let start = ok(
        driver.start_assembly(&fresh).await,
        "start_assembly",
        &fresh,
    );
    let mut assembler = ok(driver.assemble(&fresh, &start).await, "assemble", &fresh);
    ok(assembler.write(pattern(3_000, 36)).await, "write", &fresh);
    ok(assembler.abort().await, "abort", &fresh);
    match driver.stat(&fresh).await.map(|m| m.size) {
        Ok(0) | Err(DriverError::NotFound(_)) => {}
        other => panic!(
            "stat({fresh}) after aborting its first assembler: want NotFound or 0, got {}",
            describe(&other)
        ),
    }
    let state = commit_round(driver, &fresh, &start, b"again").await;
    ok(
        driver.finish_assembly(&fresh, &state).await,
        "finish",
        &fresh,
    );
    assert_eq!(
        ok(driver.get(&fresh).await, "get", &fresh),
        Bytes::from_static(b"again"),
        "assembly after an aborted first assembler"
    );
    s.remove().await;
}

/// Finishing twice is finishing once, and discarding a finished assembly
/// leaves its object alone.
pub async fn finish_is_idempotent(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let key = s.key("obj");
    let content = pattern(90_000, 37);
    let state = assemble_whole(driver, &key, &content).await;
    ok(
        driver.finish_assembly(&key, &reloaded(&state)).await,
        "a second finish",
        &key,
    );
    ok(
        driver.discard_assembly(&key, &state).await,
        "discard after finish",
        &key,
    );
    assert!(
        ok(driver.get(&key).await, "get", &key) == content,
        "a second finish, or a discard after finish, must leave the object as it was"
    );
    s.remove().await;
}

/// An assembly whose object was finished and moved away is gone: finishing
/// it again is `NotFound`, and so is continuing it, at the latest when the
/// continuation is finished.
pub async fn moved_assembly_is_not_found(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let key = s.key("upload/data");
    let state = assemble_whole(driver, &key, &pattern(20_000, 38)).await;
    let moved = s.key("blob");
    ok(driver.rename(&key, &moved).await, "rename", &key);
    expect_not_found(
        driver.finish_assembly(&key, &state).await,
        "finish after the object moved",
        &key,
    );
    let continued = async {
        let mut assembler = driver.assemble(&key, &state).await?;
        assembler.write(pattern(1_000, 39)).await?;
        let state = assembler.commit().await?;
        driver.finish_assembly(&key, &state).await
    };
    expect_not_found(continued.await, "continuing a moved assembly", &key);
    s.remove().await;
}

/// A discarded assembly, once its key is deleted, leaves nothing under its
/// prefix and cannot be finished; discarding it again is no error.
pub async fn discard_leaves_nothing(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let key = s.key("upload/data");
    let start = ok(driver.start_assembly(&key).await, "start_assembly", &key);
    let state = commit_round(driver, &key, &start, &pattern(30_000, 40)).await;
    ok(driver.discard_assembly(&key, &state).await, "discard", &key);
    ok(
        driver.discard_assembly(&key, &state).await,
        "a second discard",
        &key,
    );
    match driver.delete(&key).await {
        Ok(()) | Err(DriverError::NotFound(_)) => {}
        Err(e) => panic!("delete({key}) after discard: {e}"),
    }
    expect_not_found(
        driver.finish_assembly(&key, &state).await,
        "finish after discard",
        &key,
    );
    expect_not_found(
        driver.list(&s.root).await,
        "list of the prefix of a discarded assembly",
        &s.root,
    );
    s.remove().await;
}

// ---------------------------------------------------------------------------
// Listing
// ---------------------------------------------------------------------------

/// `list` gives the names (not keys) of the direct children, objects and
/// sub-prefixes alike, each once, sorted by bytes.
pub async fn list_direct_children_sorted(driver: &dyn Driver) {
    let s = Scope::new(driver);
    for name in [
        "p/obj",
        "p/sub/deeper/leaf",
        "p/sub/x",
        "p/Zeta",
        "p/10",
        "p/9",
        "p/v1.0",
        "p/a-b_c",
        "p/empty-object",
        "p/sub2/y",
    ] {
        let key = s.key(name);
        let content = if name.ends_with("empty-object") {
            Bytes::new()
        } else {
            Bytes::from(name.to_owned())
        };
        ok(driver.put(&key, content).await, "put", &key);
    }
    let p = s.key("p");
    assert_eq!(
        ok(driver.list(&p).await, "list", &p),
        [
            "10",
            "9",
            "Zeta",
            "a-b_c",
            "empty-object",
            "obj",
            "sub",
            "sub2",
            "v1.0"
        ],
        "list({p}) must give each direct child's name once, sorted"
    );
    let sub = s.key("p/sub");
    assert_eq!(
        ok(driver.list(&sub).await, "list", &sub),
        ["deeper", "x"],
        "list of a nested prefix"
    );
    assert_eq!(
        ok(driver.list(&s.root).await, "list", &s.root),
        ["p"],
        "list of the scope"
    );
    s.remove().await;
}

/// `list` of a prefix that holds nothing, of an object, or of a prefix
/// emptied by deletes is `NotFound`.
pub async fn list_missing_or_empty_is_not_found(driver: &dyn Driver) {
    let s = Scope::new(driver);
    expect_not_found(
        driver.list(&s.root).await,
        "list of a fresh prefix",
        &s.root,
    );
    let missing = s.key("no/such/prefix");
    expect_not_found(driver.list(&missing).await, "list", &missing);
    let obj = s.key("obj");
    ok(
        driver.put(&obj, Bytes::from_static(b"x")).await,
        "put",
        &obj,
    );
    expect_not_found(driver.list(&obj).await, "list of an object", &obj);
    let inner = s.key("d/inner");
    ok(
        driver.put(&inner, Bytes::from_static(b"x")).await,
        "put",
        &inner,
    );
    ok(driver.delete(&inner).await, "delete", &inner);
    let d = s.key("d");
    expect_not_found(
        driver.list(&d).await,
        "list of a prefix emptied by delete",
        &d,
    );
    s.remove().await;
}

/// Names starting with `.` are the driver's own (temporaries) and never
/// listed: a `.name` key is either refused as `InvalidKey` or stored but
/// hidden, and listings racing puts never show a temporary.
pub async fn hidden_names_never_listed(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let visible = s.key("p/visible");
    ok(
        driver.put(&visible, Bytes::from_static(b"v")).await,
        "put",
        &visible,
    );
    let hidden = s.key("p/.hidden");
    match driver.put(&hidden, Bytes::from_static(b"h")).await {
        Ok(()) | Err(DriverError::InvalidKey(_)) => {}
        Err(e) => panic!("put({hidden}): want Ok or InvalidKey, got {e}"),
    }
    let p = s.key("p");
    assert_eq!(
        ok(driver.list(&p).await, "list", &p),
        ["visible"],
        "a `.` name must never be listed"
    );

    // Listings racing puts (each of which may use a temporary) show only
    // real names.
    let names: Vec<String> = (0..16).map(|i| format!("n{i:02}")).collect();
    let keys: Vec<String> = names.iter().map(|n| s.key(&format!("r/{n}"))).collect();
    let r = s.key("r");
    for round in 0..3 {
        let puts = keys.iter().map(|k| driver.put(k, pattern(50_000, round)));
        let lists = (0..8).map(|_| driver.list(&r));
        let (puts, lists) = futures_util::future::join(join_all(puts), join_all(lists)).await;
        for (p, k) in puts.into_iter().zip(&keys) {
            ok(p, "put (racing lists)", k);
        }
        for l in lists {
            match l {
                Ok(listed) => assert!(
                    listed.iter().all(|n| names.contains(n)),
                    "list({r}) racing puts showed a name that was never put: {listed:?}"
                ),
                // Before the first put lands the prefix holds nothing.
                Err(DriverError::NotFound(_)) if round == 0 => {}
                Err(e) => panic!("list({r}) racing puts: {e}"),
            }
        }
    }
    assert_eq!(
        ok(driver.list(&r).await, "list", &r),
        names,
        "list after the puts"
    );
    s.remove().await;
}

/// `sweep_temporaries` removes only the driver's own leftovers: even with
/// no age at all, every stored object (put, or assembled) is still there
/// whole afterwards, and an open assembler still commits and finishes.
pub async fn sweep_keeps_every_object(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let put = s.key("sweep/a/put");
    ok(driver.put(&put, pattern(1000, 1)).await, "put", &put);
    let empty = s.key("sweep/empty");
    ok(driver.put(&empty, Bytes::new()).await, "put", &empty);
    let appended = s.key("sweep/b/appended");
    assemble_whole(driver, &appended, &pattern(70_000, 2)).await;
    let open = s.key("sweep/c/open");
    let start = ok(driver.start_assembly(&open).await, "start_assembly", &open);
    let mut assembler = ok(driver.assemble(&open, &start).await, "assemble", &open);
    ok(assembler.write(pattern(5000, 3)).await, "write", &open);

    ok(
        driver.sweep_temporaries(std::time::Duration::ZERO).await,
        "sweep_temporaries",
        "(root)",
    );

    let state = ok(assembler.commit().await, "commit after a sweep", &open);
    ok(
        driver.finish_assembly(&open, &state).await,
        "finish after a sweep",
        &open,
    );
    for (key, content) in [
        (&put, pattern(1000, 1)),
        (&empty, Bytes::new()),
        (&appended, pattern(70_000, 2)),
        (&open, pattern(5000, 3)),
    ] {
        assert_eq!(
            ok(driver.get(key).await, "get after a sweep", key),
            content,
            "{key} changed in a sweep"
        );
    }
    s.remove().await;
}

// ---------------------------------------------------------------------------
// Rename and delete
// ---------------------------------------------------------------------------

/// `rename` moves the object, replacing the target whole; the source
/// disappears. Works for assembled objects and into new prefixes.
pub async fn rename_replaces_target(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let from = s.key("src/obj");
    let to = s.key("dst/obj");
    let content = pattern(200_000, 40);
    ok(driver.put(&from, content.clone()).await, "put", &from);
    ok(driver.put(&to, pattern(300_000, 41)).await, "put", &to);
    ok(driver.rename(&from, &to).await, "rename", &from);
    assert!(
        ok(driver.get(&to).await, "get", &to) == content,
        "rename must replace the target with the source's bytes"
    );
    assert_eq!(
        ok(driver.stat(&to).await, "stat", &to).size,
        content.len() as u64,
        "stat of target"
    );
    expect_not_found(driver.get(&from).await, "get of a renamed source", &from);
    expect_not_found(driver.stat(&from).await, "stat of a renamed source", &from);

    // An assembled object (an upload's data) into a prefix that does not exist yet.
    let data = s.key("uploads/u1/data");
    let appended = pattern(150_000, 42);
    assemble_whole(driver, &data, &appended).await;
    let blob = s.key("blobs/sha256/ab/abcdef");
    ok(driver.rename(&data, &blob).await, "rename", &data);
    assert!(
        ok(driver.get(&blob).await, "get", &blob) == appended,
        "rename of an assembled object into a new prefix"
    );
    expect_not_found(driver.stat(&data).await, "stat of a renamed source", &data);
    s.remove().await;
}

/// `rename` of a missing key (or a prefix) is `NotFound` and leaves the
/// target alone.
pub async fn rename_missing_is_not_found(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let to = s.key("target");
    ok(
        driver.put(&to, Bytes::from_static(b"keep")).await,
        "put",
        &to,
    );
    let missing = s.key("missing");
    expect_not_found(
        driver.rename(&missing, &to).await,
        "rename of a missing key",
        &missing,
    );
    let fresh = s.key("fresh/target");
    expect_not_found(
        driver.rename(&missing, &fresh).await,
        "rename of a missing key",
        &missing,
    );
    expect_not_found(
        driver.stat(&fresh).await,
        "target of a failed rename",
        &fresh,
    );
    ok(
        driver
            .put(&s.key("dir/obj"), Bytes::from_static(b"x"))
            .await,
        "put",
        "dir/obj",
    );
    let dir = s.key("dir");
    expect_not_found(driver.rename(&dir, &to).await, "rename of a prefix", &dir);
    assert_eq!(
        ok(driver.get(&to).await, "get", &to),
        Bytes::from_static(b"keep"),
        "a failed rename must leave the target alone"
    );
    s.remove().await;
}

/// Moving the last object out of a prefix empties it: the parent's listing
/// no longer shows it (a prefix exists only while it holds objects).
pub async fn rename_prunes_emptied_prefix(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let from = s.key("a/b/obj");
    ok(
        driver.put(&from, Bytes::from_static(b"x")).await,
        "put",
        &from,
    );
    let to = s.key("c/obj");
    ok(driver.rename(&from, &to).await, "rename", &from);
    assert_eq!(
        ok(driver.list(&s.root).await, "list", &s.root),
        ["c"],
        "after moving the last object out of `a/b`, `a` must not be listed"
    );
    let a = s.key("a");
    expect_not_found(driver.list(&a).await, "list of an emptied prefix", &a);
    s.remove().await;
}

/// `delete` of an object removes it and nothing else.
pub async fn delete_object(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let key = s.key("p/obj");
    let sibling = s.key("p/obj2");
    let lookalike = s.key("p/obj-longer");
    for k in [&key, &sibling, &lookalike] {
        ok(driver.put(k, Bytes::from(k.clone())).await, "put", k);
    }
    ok(driver.delete(&key).await, "delete", &key);
    expect_not_found(driver.get(&key).await, "get of a deleted object", &key);
    expect_not_found(driver.stat(&key).await, "stat of a deleted object", &key);
    for k in [&sibling, &lookalike] {
        assert_eq!(
            ok(driver.get(k).await, "get", k),
            Bytes::from(k.clone()),
            "deleting {key} must not touch {k}"
        );
    }
    let p = s.key("p");
    assert_eq!(
        ok(driver.list(&p).await, "list", &p),
        ["obj-longer", "obj2"],
        "list after deleting one object"
    );
    s.remove().await;
}

/// `delete` of a prefix removes everything under it, at any depth, and
/// nothing beside it (not even keys that share its spelling as a prefix).
pub async fn delete_prefix_recursively(driver: &dyn Driver) {
    let s = Scope::new(driver);
    for name in [
        "p/keep",
        "p/gone/a",
        "p/gone/b/c",
        "p/gone/b/d/e",
        "p/gone-not",
    ] {
        let key = s.key(name);
        ok(
            driver.put(&key, Bytes::from_static(b"x")).await,
            "put",
            &key,
        );
    }
    let gone = s.key("p/gone");
    ok(driver.delete(&gone).await, "delete of a prefix", &gone);
    for name in ["p/gone/a", "p/gone/b/c", "p/gone/b/d/e"] {
        let key = s.key(name);
        expect_not_found(driver.stat(&key).await, "stat under a deleted prefix", &key);
    }
    expect_not_found(driver.list(&gone).await, "list of a deleted prefix", &gone);
    let p = s.key("p");
    assert_eq!(
        ok(driver.list(&p).await, "list", &p),
        ["gone-not", "keep"],
        "deleting a prefix must leave its siblings"
    );
    ok(driver.delete(&p).await, "delete of a prefix", &p);
    expect_not_found(
        driver.list(&s.root).await,
        "list after deleting everything",
        &s.root,
    );
}

/// `delete` of nothing is `NotFound`, also a second time.
pub async fn delete_missing_is_not_found(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let missing = s.key("missing");
    expect_not_found(
        driver.delete(&missing).await,
        "delete of a missing key",
        &missing,
    );
    let nested = s.key("no/such/prefix");
    expect_not_found(
        driver.delete(&nested).await,
        "delete of a missing prefix",
        &nested,
    );
    let key = s.key("once");
    ok(
        driver.put(&key, Bytes::from_static(b"x")).await,
        "put",
        &key,
    );
    ok(driver.delete(&key).await, "delete", &key);
    expect_not_found(driver.delete(&key).await, "second delete", &key);
}

/// After the last object under a prefix is deleted, listing the parent no
/// longer shows the prefix (tag lists and the catalog rely on this).
pub async fn delete_prunes_emptied_prefix(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let deep = s.key("a/b/c/obj");
    let keep = s.key("keep");
    ok(
        driver.put(&deep, Bytes::from_static(b"x")).await,
        "put",
        &deep,
    );
    ok(
        driver.put(&keep, Bytes::from_static(b"x")).await,
        "put",
        &keep,
    );
    ok(driver.delete(&deep).await, "delete", &deep);
    assert_eq!(
        ok(driver.list(&s.root).await, "list", &s.root),
        ["keep"],
        "after deleting the only object under `a/b/c`, `a` must not be listed"
    );
    for name in ["a", "a/b", "a/b/c"] {
        let key = s.key(name);
        expect_not_found(driver.list(&key).await, "list of an emptied prefix", &key);
    }
    // The scope prefix itself stays while `keep` is there, and a sibling
    // under a partly emptied prefix survives.
    let x = s.key("m/x");
    let y = s.key("m/n/y");
    ok(driver.put(&x, Bytes::from_static(b"x")).await, "put", &x);
    ok(driver.put(&y, Bytes::from_static(b"y")).await, "put", &y);
    ok(driver.delete(&y).await, "delete", &y);
    let m = s.key("m");
    assert_eq!(
        ok(driver.list(&m).await, "list", &m),
        ["x"],
        "list of a partly emptied prefix"
    );
    s.remove().await;
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

/// Every operation refuses keys that could escape the root or alias another
/// key with `InvalidKey`, and touches nothing.
pub async fn invalid_keys_are_refused(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let good = s.key("good");
    ok(
        driver.put(&good, Bytes::from_static(b"good")).await,
        "put",
        &good,
    );
    for bad in INVALID_KEYS {
        // Both bare and under the scope: `<scope>//x` and `<scope>/../x` too.
        let scoped = if bad.is_empty() {
            format!("{}/", s.root)
        } else {
            format!("{}/{bad}", s.root)
        };
        for key in [bad.to_string(), scoped] {
            let key = key.as_str();
            expect_invalid(driver.get(key).await, "get", key);
            expect_invalid(driver.put(key, Bytes::from_static(b"x")).await, "put", key);
            expect_invalid(driver.read(key, 0, None).await, "read", key);
            expect_invalid(driver.stat(key).await, "stat", key);
            expect_invalid(driver.start_assembly(key).await, "start_assembly", key);
            expect_invalid(driver.list(key).await, "list", key);
            expect_invalid(driver.rename(key, &good).await, "rename from", key);
            expect_invalid(driver.rename(&good, key).await, "rename to", key);
            expect_invalid(driver.delete(key).await, "delete", key);
        }
    }
    assert_eq!(
        ok(driver.get(&good).await, "get", &good),
        Bytes::from_static(b"good"),
        "refused operations must not touch other objects"
    );
    assert_eq!(
        ok(driver.list(&s.root).await, "list", &s.root),
        ["good"],
        "refused operations must not create anything"
    );
    s.remove().await;
}

// ---------------------------------------------------------------------------
// Concurrency and size
// ---------------------------------------------------------------------------

/// Concurrent puts of different values to one key leave exactly one of them,
/// whole.
pub async fn concurrent_puts_leave_one_whole_value(driver: &dyn Driver) {
    let s = Scope::new(driver);
    let key = s.key("contended");
    let values: Vec<Bytes> = (0..8).map(|i| pattern(256 << 10, 50 + i)).collect();
    let results = join_all(values.iter().map(|v| driver.put(&key, v.clone()))).await;
    for r in results {
        ok(r, "concurrent put", &key);
    }
    let got = ok(driver.get(&key).await, "get", &key);
    assert!(
        values.contains(&got),
        "after concurrent puts, get({key}) returned {} bytes that are no single put's value",
        got.len()
    );
    assert_eq!(
        ok(driver.stat(&key).await, "stat", &key).size,
        got.len() as u64,
        "stat after concurrent puts"
    );
    assert_eq!(
        ok(driver.list(&s.root).await, "list", &s.root),
        ["contended"],
        "concurrent puts must leave no temporaries in listings"
    );
    s.remove().await;
}

/// 8 MiB assembled in 64 KiB writes reads back identical, whole and in an
/// unaligned slice, after a second assembler continued it.
pub async fn large_streamed_assembly(driver: &dyn Driver) {
    const TOTAL: usize = 8 << 20;
    const WRITE: usize = 64 << 10;
    let s = Scope::new(driver);
    let key = s.key("big");
    let content = pattern(TOTAL, 60);
    let start = ok(driver.start_assembly(&key).await, "start_assembly", &key);
    let mut assembler = ok(driver.assemble(&key, &start).await, "assemble", &key);
    for part in content.chunks(WRITE) {
        ok(
            assembler.write(content.slice_ref(part)).await,
            "write",
            &key,
        );
    }
    assert_eq!(
        assembler.size(),
        TOTAL as u64,
        "size() after 8 MiB of writes"
    );
    let state = ok(assembler.commit().await, "commit", &key);
    assert_eq!(state.size, TOTAL as u64, "commit after 8 MiB");

    let more = pattern(3 * WRITE + 17, 61);
    let state = commit_round(driver, &key, &reloaded(&state), &more).await;
    assert_eq!(
        state.size,
        (TOTAL + more.len()) as u64,
        "commit of the continuation"
    );
    ok(driver.finish_assembly(&key, &state).await, "finish", &key);
    assert_eq!(
        ok(driver.stat(&key).await, "stat", &key).size,
        state.size,
        "stat after finish"
    );
    let mut whole = BytesMut::from(&content[..]);
    whole.extend_from_slice(&more);
    let (len, digest) = read_digest(driver, &key, 0, None).await;
    assert_eq!(
        len, state.size,
        "read of the 8 MiB object returned {len} bytes"
    );
    assert_eq!(
        digest,
        sha256(&whole),
        "the 8 MiB object read back differs from what was assembled"
    );
    let (offset, n) = (1_000_003usize, 3_000_017usize);
    let slice = read_all(driver, &key, offset as u64, Some(n as u64)).await;
    assert!(
        slice == content.slice(offset..offset + n),
        "unaligned slice of the 8 MiB object differs"
    );
    let tail = read_all(driver, &key, TOTAL as u64 - 5, None).await;
    assert!(
        tail[..] == whole[TOTAL - 5..],
        "the continuation of the 8 MiB object differs"
    );
    s.remove().await;
}

/// Multi-megabyte rounds in odd-sized writes, starting on and off 4 KiB
/// boundaries and ending mid-block, one continuing an older state (whose
/// successor it replaces) and one aborted halfway through: the object is
/// always exactly the rounds on the recorded path. (Drivers may write
/// block-aligned runs differently from the rest, as the filesystem driver
/// does with `O_DIRECT`, or cut them into parts, as object stores do.)
pub async fn large_assembly_in_odd_rounds(driver: &dyn Driver) {
    const MIB: usize = 1 << 20;
    let s = Scope::new(driver);
    let key = s.key("rounds");
    let start = ok(driver.start_assembly(&key).await, "start_assembly", &key);
    // (continued state, length, write size): round 0 ends on a block
    // boundary; round 2 continues round 0's state again, replacing round 1.
    let rounds = [
        (0, 9 * MIB + 4_096, 65_537),
        (1, 4 * MIB + 123, 1_000_001),
        (1, 4 * MIB + 4_219, 3 * MIB),
        (3, 2 * MIB + 1, 4_096),
    ];
    let mut states = vec![start];
    let mut contents: Vec<Bytes> = Vec::new();
    let mut path: Vec<usize> = Vec::new();
    for (round, &(from, len, write)) in rounds.iter().enumerate() {
        let content = pattern(len, 70 + round as u8);
        let mut assembler = ok(
            driver.assemble(&key, &reloaded(&states[from])).await,
            "assemble",
            &key,
        );
        for part in content.chunks(write) {
            ok(
                assembler.write(content.slice_ref(part)).await,
                "write",
                &key,
            );
        }
        let state = ok(assembler.commit().await, "commit", &key);
        path.truncate(from);
        path.push(round);
        contents.push(content);
        let expected: usize = path.iter().map(|&r| contents[r].len()).sum();
        assert_eq!(
            state.size, expected as u64,
            "commit of round {round} (continuing state {from}, {len} bytes)"
        );
        states.push(state);
    }
    let last = states.last().expect("rounds ran").clone();
    // An aborted multi-part round leaves no trace.
    let mut assembler = ok(driver.assemble(&key, &last).await, "assemble", &key);
    let discarded = pattern(13 * MIB, 79);
    for part in discarded.chunks(MIB + 7) {
        ok(
            assembler.write(discarded.slice_ref(part)).await,
            "write",
            &key,
        );
    }
    ok(assembler.abort().await, "abort", &key);
    ok(driver.finish_assembly(&key, &last).await, "finish", &key);
    let expected: Vec<u8> = path.iter().flat_map(|&r| contents[r].to_vec()).collect();
    let (len, digest) = read_digest(driver, &key, 0, None).await;
    assert_eq!(len, expected.len() as u64, "length after the rounds");
    assert_eq!(
        digest,
        sha256(&expected),
        "object after rounds at aligned and unaligned offsets differs from the recorded rounds"
    );
    s.remove().await;
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A fresh prefix of the driver's key space for one property.
struct Scope<'a> {
    driver: &'a dyn Driver,
    root: String,
}

impl<'a> Scope<'a> {
    fn new(driver: &'a dyn Driver) -> Self {
        Self {
            driver,
            root: format!("suite-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.root)
    }

    /// Removes what the property left (only reached when it passed).
    async fn remove(self) {
        match self.driver.delete(&self.root).await {
            Ok(()) | Err(DriverError::NotFound(_)) => {}
            Err(e) => panic!("cleaning up {}: {e}", self.root),
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), different per `seed`, so
/// misplaced or reordered bytes never compare equal by accident.
fn pattern(len: usize, seed: u8) -> Bytes {
    let mut state =
        0x9E37_79B9_7F4A_7C15u64 ^ (u64::from(seed) + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Continues `from` with `content` through one assembler and commits;
/// returns the new state.
async fn commit_round(driver: &dyn Driver, key: &str, from: &Assembly, content: &[u8]) -> Assembly {
    let mut assembler = ok(driver.assemble(key, from).await, "assemble", key);
    if !content.is_empty() {
        ok(
            assembler.write(Bytes::copy_from_slice(content)).await,
            "write",
            key,
        );
    }
    ok(assembler.commit().await, "commit", key)
}

/// Assembles `content` in one round and finishes it; returns the state.
async fn assemble_whole(driver: &dyn Driver, key: &str, content: &[u8]) -> Assembly {
    let start = ok(driver.start_assembly(key).await, "start_assembly", key);
    let state = commit_round(driver, key, &start, content).await;
    ok(driver.finish_assembly(key, &state).await, "finish", key);
    state
}

/// The state as another process reads it from the record.
fn reloaded(state: &Assembly) -> Assembly {
    let record = serde_json::to_vec(state).expect("an assembly serializes");
    serde_json::from_slice(&record).expect("an assembly's record reads back")
}

async fn read_all(driver: &dyn Driver, key: &str, offset: u64, len: Option<u64>) -> Bytes {
    collect(ok(driver.read(key, offset, len).await, "read", key), key).await
}

/// Every byte of a read's stream; a stream error fails the property.
async fn collect(mut stream: super::driver::ByteStream, key: &str) -> Bytes {
    let mut out = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("read({key}) stream failed: {e}"));
        out.extend_from_slice(&chunk);
    }
    out.freeze()
}

/// Streams a range and returns its length and SHA-256, holding no more than
/// one chunk.
async fn read_digest(
    driver: &dyn Driver,
    key: &str,
    offset: u64,
    len: Option<u64>,
) -> (u64, String) {
    let mut stream = ok(driver.read(key, offset, len).await, "read", key);
    let mut hasher = sha2::Sha256::new();
    let mut n = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("read({key}) stream failed: {e}"));
        n += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (n, hex::encode(hasher.finalize()))
}

fn describe<T>(result: &Result<T>) -> String {
    match result {
        Ok(_) => "Ok".to_owned(),
        Err(DriverError::NotFound(k)) => format!("NotFound({k})"),
        Err(DriverError::InvalidKey(k)) => format!("InvalidKey({k})"),
        Err(DriverError::PreconditionFailed(k)) => format!("PreconditionFailed({k})"),
        Err(DriverError::Unavailable(e)) => format!("Unavailable({e})"),
        Err(DriverError::Io(e)) => format!("Io({e})"),
    }
}

#[track_caller]
fn expect_precondition_failed<T>(result: Result<T>, op: &str, key: &str) {
    if !matches!(result, Err(DriverError::PreconditionFailed(_))) {
        panic!(
            "{op}({key}): want PreconditionFailed, got {}",
            describe(&result)
        );
    }
}

#[track_caller]
fn ok<T>(result: Result<T>, op: &str, key: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{op}({key}) failed: {e}"),
    }
}

#[track_caller]
fn expect_not_found<T>(result: Result<T>, op: &str, key: &str) {
    if !matches!(result, Err(DriverError::NotFound(_))) {
        panic!("{op}({key}): want NotFound, got {}", describe(&result));
    }
}

#[track_caller]
fn expect_invalid<T>(result: Result<T>, op: &str, key: &str) {
    if !matches!(result, Err(DriverError::InvalidKey(_))) {
        panic!("{op}({key:?}): want InvalidKey, got {}", describe(&result));
    }
}

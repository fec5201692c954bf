//! The shared driver suite (`portcullis::storage::driver_suite`) against the
//! filesystem driver, one test per property so a failure names the property,
//! plus the few checks only a filesystem can have (files on disk).

use portcullis::storage::driver_suite;
use portcullis::storage::fs::FsDriver;
use portcullis::storage::{Driver, DriverError};
use tempfile::TempDir;

/// A driver over its own temporary root (a not yet existing subdirectory, so
/// `FsDriver::new` creating it is exercised too). Keep the `TempDir` alive.
async fn driver() -> (TempDir, FsDriver) {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = FsDriver::new(&dir.path().join("root"))
        .await
        .expect("open driver");
    (dir, driver)
}

/// One test per property of the suite, each on a fresh driver from `$make`
/// (an async fn returning what must be kept alive and the driver).
macro_rules! properties {
    ($make:path) => {
        properties!($make;
    get_put_round_trip,
    put_replaces_atomically,
    missing_key_is_not_found,
    prefix_is_not_an_object,
    read_range,
    read_to_end,
    large_reads_are_whole_and_in_order,
    file_ranges_match_read,
    assembly_round_trip,
    assembly_continues_from_recorded_state,
    assembly_discards_unrecorded_bytes,
    abort_keeps_recorded_state,
    finish_is_idempotent,
    moved_assembly_is_not_found,
    discard_leaves_nothing,
    sweep_keeps_every_object,
    list_direct_children_sorted,
    list_missing_or_empty_is_not_found,
    hidden_names_never_listed,
    rename_replaces_target,
    rename_missing_is_not_found,
    rename_prunes_emptied_prefix,
    delete_object,
    delete_prefix_recursively,
    delete_missing_is_not_found,
    delete_prunes_emptied_prefix,
    invalid_keys_are_refused,
    concurrent_puts_leave_one_whole_value,
    put_if_absent_creates_once,
    put_if_matches_swaps_only_the_version_read,
    racing_compare_and_swaps_lose_no_update,
    large_streamed_assembly,
    large_assembly_in_odd_rounds,
        );
    };
    ($make:path; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_keep, driver) = $make().await;
            portcullis::storage::driver_suite::$name(&driver).await;
        }
    )*};
}

properties!(driver);

/// The S3 driver's logic on `object_store`'s in-memory store (with S3's
/// multipart semantics, see `common::memory_store`): fast, in every run.
mod on_memory {
    use std::sync::Arc;

    use crate::common::memory_store::S3Multipart;
    use portcullis::storage::s3::{PartLimits, S3Driver};

    /// Small parts, so that the suite's megabytes cross many of them.
    pub(super) async fn driver() -> (Arc<S3Multipart>, S3Driver) {
        let store = Arc::new(S3Multipart::default());
        let driver = S3Driver::with_store(
            store.objects.clone(),
            store.clone(),
            "prefix/of/the/bucket",
            PartLimits {
                size: 256 << 10,
                in_flight: 3,
            },
        )
        // Reads of more than a part in ranges, two ahead, with room for
        // four ranges in all.
        .with_read_ahead(2, 1 << 20);
        // The in-memory store honours conditional writes: the probe finds it.
        driver.check().await.expect("the in-memory store answers");
        (store, driver)
    }

    properties!(driver);

    /// Every assembly the suite made was completed or aborted: no
    /// multipart upload is left open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_suite_leaves_no_multipart_upload_open() {
        let (store, driver) = driver().await;
        portcullis::storage::driver_suite::run_all(&driver).await;
        assert_eq!(store.open_uploads(), 0, "multipart uploads left open");
    }
}

/// The S3 driver on a real single-node Garage, with S3's smallest parts.
mod on_garage {
    use crate::common::garage::{ACCESS_KEY, BUCKET, Garage, REGION, SECRET_KEY};
    use portcullis::storage::Driver as _;
    use portcullis::storage::s3::{ConditionalWrites, PartLimits, S3Driver, S3Options};

    pub(crate) fn options(garage: &Garage) -> S3Options {
        S3Options {
            endpoint: Some(garage.endpoint()),
            region: REGION.to_owned(),
            bucket: BUCKET.to_owned(),
            prefix: "registry".to_owned(),
            access_key_id: Some(ACCESS_KEY.to_owned()),
            secret_access_key: Some(SECRET_KEY.to_owned()),
            path_style: true,
            io_timeout: std::time::Duration::from_secs(30),
            conditional_writes: ConditionalWrites::Probe,
            redirect_pulls: None,
            reads_ahead: 2,
            read_memory: 32 << 20,
            relay_pulls: true,
            parts: PartLimits {
                size: 5 << 20,
                in_flight: 3,
            },
        }
    }

    pub(super) async fn driver() -> (Garage, S3Driver) {
        let garage = tokio::task::spawn_blocking(Garage::start).await.unwrap();
        let driver = S3Driver::new(&options(&garage)).expect("S3 driver");
        driver.check().await.expect("the bucket answers");
        (garage, driver)
    }

    properties!(driver);

    /// A GET the driver signs for the server to send itself serves any
    /// range of the object on a plain connection (the `Range` header is not
    /// signed), is refused by the store once tampered with, and is offered
    /// only where the configuration relays pulls.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn signed_plain_gets_serve_ranges_of_the_object() {
        let (garage, driver) = driver().await;
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        driver
            .put("plain/object", data.clone().into())
            .await
            .unwrap();
        let gets = driver
            .plain_gets()
            .expect("a plain-HTTP endpoint signs GETs");
        assert_eq!(gets.plan().range, 5 << 20);
        assert_eq!(gets.plan().ahead, 2);
        let signed = gets.signed_get("plain/object").await.unwrap();
        let url = format!("http://{}{}", signed.authority, signed.target);
        assert!(url.starts_with(&garage.endpoint()), "{url}");
        let http = reqwest::Client::new();
        let ranged = http
            .get(&url)
            .header("range", "bytes=1000000-2999999")
            .send()
            .await
            .unwrap();
        assert_eq!(ranged.status(), 206);
        assert!(ranged.bytes().await.unwrap()[..] == data[1_000_000..3_000_000]);
        let tampered = url.replacen("X-Amz-Signature=", "X-Amz-Signature=0", 1);
        assert_eq!(http.get(&tampered).send().await.unwrap().status(), 403);

        let copying = S3Driver::new(&S3Options {
            relay_pulls: false,
            ..options(&garage)
        })
        .unwrap();
        assert!(copying.plain_gets().is_none());
    }

    /// Garage 2.5.0 ignores `If-None-Match` and `If-Match` on PUT: the
    /// probe at start finds it, and `put_if` falls back to check-then-write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_probe_finds_that_garage_ignores_conditional_writes() {
        let (_garage, driver) = driver().await;
        assert!(!driver.conditional_writes());
    }
}

/// Every property on one shared driver at the same time: each works under its
/// own prefix, so they must not disturb one another (as they would share one
/// bucket on S3), and they leave the root empty when they pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_properties_share_one_driver() {
    let (dir, driver) = driver().await;
    futures_util::future::join(
        driver_suite::run_all(&driver),
        driver_suite::run_all(&driver),
    )
    .await;
    let left: Vec<_> = std::fs::read_dir(dir.path().join("root"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "the suite left {left:?} behind");
}

/// Files the driver keeps for itself (`.`-names such as interrupted
/// temporaries left by a crash) are never listed, and a directory holding
/// only such files lists as empty.
#[tokio::test]
async fn dot_files_on_disk_are_not_listed() {
    let (dir, driver) = driver().await;
    let root = dir.path().join("root");
    driver.put("p/x", "x".into()).await.unwrap();
    std::fs::write(root.join("p/.tmp-left-by-a-crash"), b"partial").unwrap();
    std::fs::create_dir_all(root.join("q")).unwrap();
    std::fs::write(root.join("q/.tmp-other"), b"partial").unwrap();
    assert_eq!(driver.list("p").await.unwrap(), ["x"]);
    assert!(matches!(
        driver.list("q").await,
        Err(DriverError::NotFound(_))
    ));
}

/// Refused keys create nothing anywhere, inside the root or beside it.
#[tokio::test]
async fn refused_keys_touch_nothing_on_disk() {
    let (dir, driver) = driver().await;
    for key in driver_suite::INVALID_KEYS {
        let _ = driver.put(key, "x".into()).await;
        let _ = driver.start_assembly(key).await;
        let _ = driver.put(&format!("a/{key}"), "x".into()).await;
    }
    let beside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["root"], "something was written beside the root");
    let inside: Vec<_> = std::fs::read_dir(dir.path().join("root"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(inside.is_empty(), "refused keys created {inside:?}");
}

/// A moved object is as old as the move, as an object store's copy is:
/// an upload idle for a day and then finished makes a blob of now, which
/// garbage collection's grace period protects.
#[tokio::test]
async fn a_moved_file_is_as_old_as_the_move() {
    let (dir, driver) = driver().await;
    driver.put("uploads/u/data", "bytes".into()).await.unwrap();
    let file = std::fs::File::open(dir.path().join("root/uploads/u/data")).unwrap();
    let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    file.set_modified(day_ago).unwrap();
    let before = std::time::SystemTime::now();
    driver.rename("uploads/u/data", "blobs/b").await.unwrap();
    let moved = driver.stat("blobs/b").await.unwrap();
    assert!(
        moved.modified >= before,
        "{:?} < {before:?}",
        moved.modified
    );
}

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

macro_rules! properties {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_dir, driver) = driver().await;
            driver_suite::$name(&driver).await;
        }
    )*};
}

properties!(
    get_put_round_trip,
    put_replaces_atomically,
    missing_key_is_not_found,
    prefix_is_not_an_object,
    read_range,
    read_to_end,
    file_ranges_match_read,
    append_creates_at_zero,
    append_continues_at_recorded_offset,
    append_discards_residue,
    sweep_keeps_every_object,
    abort_restores_size,
    append_past_end_is_invalid,
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
    large_streamed_append,
    large_appends_at_any_offset,
);

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
        let _ = driver.append(key, 0).await;
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

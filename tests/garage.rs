//! The S3 store the S3 tests use, checked on its own: a single-node Garage
//! from `common::garage` takes a signed object write and read with curl
//! (`--aws-sigv4`, path-style), and refuses a request signed with another
//! secret. The storage driver on S3 (to come) runs the shared driver suite
//! against the same harness.

use std::process::Command;

use crate::common;

use common::clients;
use common::garage::{ACCESS_KEY, BUCKET, Garage, REGION, SECRET_KEY};

/// curl, signing as `key:secret`; its status line code and body.
fn s3(garage: &Garage, secret: &str, args: &[&str], key: &str) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--output",
            "-",
            "--write-out",
            "\n%{http_code}",
        ])
        .arg("--aws-sigv4")
        .arg(format!("aws:amz:{REGION}:s3"))
        .arg("--user")
        .arg(format!("{ACCESS_KEY}:{secret}"))
        // S3 wants the payload's hash (or that it is not signed); curl
        // signs the header but does not add it.
        .args(["--header", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .args(args)
        .arg(format!("{}/{BUCKET}/{key}", garage.endpoint()))
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl: {}", clients::stderr_of(&out));
    let mut body = out.stdout;
    let split = body.iter().rposition(|&b| b == b'\n').expect("status line");
    let code = std::str::from_utf8(&body[split + 1..])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    body.truncate(split);
    (code, body)
}

#[test]
fn a_single_node_garage_stores_signed_objects_and_refuses_a_wrong_signature() {
    clients::require("curl");
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let object = dir.path().join("object");
    let mut content = vec![0u8; 1 << 20];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut content);
    std::fs::write(&object, &content).unwrap();

    let (put, body) = s3(
        &garage,
        SECRET_KEY,
        &["--upload-file", object.to_str().unwrap()],
        "a/b",
    );
    assert_eq!(
        put,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&body),
        garage.log()
    );
    let (got, body) = s3(&garage, SECRET_KEY, &[], "a/b");
    assert_eq!(got, 200);
    assert!(body == content, "the object read back differs");

    let wrong = "f".repeat(64);
    let (refused, body) = s3(&garage, &wrong, &[], "a/b");
    assert_eq!(refused, 403, "{}", String::from_utf8_lossy(&body));
    let (missing, _) = s3(&garage, SECRET_KEY, &[], "no/such/key");
    assert_eq!(missing, 404);
}

//! `portcullis user …` run as the real binary: the users file it writes is
//! read back with the same loader the server uses, and passwords are checked
//! against it.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use portcullis::auth::users::Users;

/// Runs `portcullis ARGS` in `dir` with `stdin` as its standard input (not a
/// terminal, so a password is read as one line).
fn portcullis(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portcullis");
    let mut input = child.stdin.take().expect("stdin");
    // A command refused before it reads the password closes its stdin
    // early: a broken pipe here is expected then.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child.wait_with_output().expect("wait for portcullis")
}

/// `portcullis user ARGS --file users.toml` in `dir`.
fn user(dir: &Path, args: &[&str], stdin: &str) -> Output {
    portcullis(
        dir,
        &[&["user"], args, &["--file", "users.toml"]].concat(),
        stdin,
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

#[track_caller]
fn assert_refused(out: &Output, message: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
    assert!(
        stderr(out).contains(message),
        "expected {message:?} in stderr: {}",
        stderr(out)
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn load(path: &Path) -> Users {
    Users::load(path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn add_list_passwd_del_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");

    let out = user(
        dir.path(),
        &["add", "alice", "--group", "admins", "-g", "dev"],
        "s3cret-pw\n",
    );
    assert_ok(&out);
    assert!(
        stdout(&out).contains("added user alice"),
        "{}",
        stdout(&out)
    );
    // A new file holds password hashes: its owner alone may read it.
    assert_eq!(mode(&file), 0o600);
    assert_ok(&user(dir.path(), &["add", "bob.example"], "hunter22\n"));

    let users = load(&file);
    assert_eq!(users.len(), 2);
    let alice = users
        .verify("alice", "s3cret-pw")
        .expect("alice's password");
    assert_eq!(alice.account.groups, ["admins", "dev"]);
    assert!(users.verify("alice", "hunter22").is_none());
    assert!(users.verify("bob.example", "hunter22").is_some());
    // Only argon2id hashes are written, never the password itself.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains("s3cret-pw") && !text.contains("hunter22"),
        "{text}"
    );
    assert_eq!(text.matches("$argon2id$").count(), 2, "{text}");

    let out = user(dir.path(), &["list"], "");
    assert_ok(&out);
    let listed: Vec<Vec<String>> = stdout(&out)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(
        listed,
        [vec!["alice", "admins,dev"], vec!["bob.example"]],
        "{}",
        stdout(&out)
    );

    assert_ok(&user(dir.path(), &["passwd", "alice"], "n3w pass\n"));
    let users = load(&file);
    assert!(users.verify("alice", "s3cret-pw").is_none());
    let alice = users.verify("alice", "n3w pass").expect("new password");
    assert_eq!(
        alice.account.groups,
        ["admins", "dev"],
        "groups survive passwd"
    );
    assert!(users.verify("bob.example", "hunter22").is_some());
    assert_eq!(mode(&file), 0o600);

    let out = user(dir.path(), &["del", "bob.example"], "");
    assert_ok(&out);
    let users = load(&file);
    assert_eq!(users.len(), 1);
    assert!(users.account("bob.example").is_none());
    assert!(users.verify("alice", "n3w pass").is_some());
    let out = user(dir.path(), &["list"], "");
    assert_eq!(stdout(&out).trim(), "alice  admins,dev");
}

#[test]
fn the_users_file_comes_from_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let users_file = dir.path().join("accounts.toml");
    let config = dir.path().join("custom.toml");
    std::fs::write(
        &config,
        format!("[users]\nfile = {:?}\n", users_file.to_str().unwrap()),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    assert_ok(&portcullis(
        dir.path(),
        &["user", "add", "carol", "--config", config],
        "password\n",
    ));
    assert!(load(&users_file).verify("carol", "password").is_some());
    // --file wins over the configuration.
    assert_ok(&portcullis(
        dir.path(),
        &["user", "add", "dave", "-c", config, "--file", "other.toml"],
        "password\n",
    ));
    assert!(
        load(&dir.path().join("other.toml"))
            .account("dave")
            .is_some()
    );
    assert!(load(&users_file).account("dave").is_none());
    // Without --config or --file: the embedded default, ./users.toml.
    assert_ok(&portcullis(
        dir.path(),
        &["user", "add", "erin"],
        "password\n",
    ));
    assert!(
        load(&dir.path().join("users.toml"))
            .account("erin")
            .is_some()
    );
    // A broken configuration is a setup error, as for `serve`.
    std::fs::write(dir.path().join("bad.toml"), "[users]\nfiel = 1\n").unwrap();
    let out = portcullis(dir.path(), &["user", "list", "-c", "bad.toml"], "");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown key `users.fiel`"));
}

#[test]
fn edits_keep_comments_other_users_and_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    let bcrypt_hash = bcrypt::hash("old-pw", 4).unwrap();
    let original = format!(
        "# Registry accounts. Managed with `portcullis user`.\n\
         \n\
         # Zoe runs the registry.\n\
         [users.zoe]\n\
         password = \"{bcrypt_hash}\" # rotated every spring\n\
         groups = [\"admins\"]   # keep her an admin\n\
         \n\
         # CI robot, see ticket 42.\n\
         [users.robot]\n\
         password = \"{bcrypt_hash}\"\n\
         \n\
         # End of the file.\n"
    );
    std::fs::write(&file, &original).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();

    assert_ok(&user(dir.path(), &["add", "alice"], "pw-alice\n"));
    assert_ok(&user(dir.path(), &["passwd", "zoe"], "new-zoe-pw\n"));
    assert_ok(&user(dir.path(), &["del", "robot"], ""));

    let text = std::fs::read_to_string(&file).unwrap();
    for kept in [
        "# Registry accounts. Managed with `portcullis user`.\n\n# Zoe runs the registry.\n[users.zoe]\n",
        "\" # rotated every spring\n",
        "groups = [\"admins\"]   # keep her an admin\n",
        "# End of the file.\n",
    ] {
        assert!(text.contains(kept), "lost {kept:?} in:\n{text}");
    }
    // The removed user goes with the comment written above it.
    assert!(
        !text.contains("robot") && !text.contains("ticket 42"),
        "{text}"
    );
    assert!(
        text.find("[users.zoe]") < text.find("[users.alice]"),
        "new users come after existing ones:\n{text}"
    );
    // An edited file keeps its permissions (here: readable by a group).
    assert_eq!(mode(&file), 0o640);
    let users = load(&file);
    assert_eq!(users.len(), 2);
    assert!(users.verify("zoe", "new-zoe-pw").is_some());
    assert!(users.verify("zoe", "old-pw").is_none());
    assert_eq!(users.account("zoe").unwrap().groups, ["admins"]);
    assert!(users.verify("alice", "pw-alice").is_some());
    // No temporary files are left beside it.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["users.toml"]);
}

#[test]
fn a_symlinked_users_file_stays_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    let target = dir.path().join("real/users.toml");
    std::fs::write(&target, "").unwrap();
    let link = dir.path().join("users.toml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert_ok(&portcullis(
        dir.path(),
        &["user", "add", "alice", "--file", "users.toml"],
        "password\n",
    ));
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(load(&target).verify("alice", "password").is_some());
}

#[test]
fn duplicates_and_unknown_users_are_refused_without_change() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    assert_ok(&user(dir.path(), &["add", "alice"], "first-pw\n"));
    let before = std::fs::read(&file).unwrap();

    let out = user(dir.path(), &["add", "alice"], "second-pw\n");
    assert_refused(&out, "user `alice` already exists");
    let out = user(dir.path(), &["passwd", "nobody"], "x\n");
    assert_refused(&out, "no user `nobody`");
    let out = user(dir.path(), &["del", "nobody"], "");
    assert_refused(&out, "no user `nobody`");

    assert_eq!(std::fs::read(&file).unwrap(), before, "file unchanged");
    assert!(load(&file).verify("alice", "first-pw").is_some());
}

#[test]
fn bad_names_and_groups_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a b", "a:b", "a/b", "*", "", "tab\there"] {
        let out = user(dir.path(), &["add", name], "password\n");
        assert_refused(&out, "invalid user name");
    }
    let long = "x".repeat(129);
    let out = user(dir.path(), &["add", &long], "password\n");
    assert_refused(&out, "invalid user name");
    for group in ["ops/admin", "*", "has space"] {
        let out = user(
            dir.path(),
            &["add", "alice", "--group", group],
            "password\n",
        );
        assert_refused(&out, "invalid group name");
    }
    // Nothing was refused after the file had been written.
    assert!(!dir.path().join("users.toml").exists());
}

#[test]
fn passwords_come_from_one_line_of_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    for (stdin, why) in [("", "no password"), ("\n", "empty password")] {
        let out = user(dir.path(), &["add", "alice"], stdin);
        assert_refused(&out, why);
        assert!(!file.exists());
    }
    // Only the line ending is removed: spaces are part of the password.
    assert_ok(&user(dir.path(), &["add", "alice"], " two words \r\n"));
    let users = load(&file);
    assert!(users.verify("alice", " two words ").is_some());
    assert!(users.verify("alice", "two words").is_none());
    // A last line without a newline is a password too.
    assert_ok(&user(dir.path(), &["passwd", "alice"], "no-newline"));
    assert!(load(&file).verify("alice", "no-newline").is_some());
    // And the password is never accepted as an argument.
    let out = user(dir.path(), &["add", "bob", "--password", "x"], "");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn htpasswd_and_broken_files_are_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let text = format!("bob:{}\n", bcrypt::hash("pw", 4).unwrap());
    std::fs::write(&htpasswd, &text).unwrap();
    for args in [
        &["user", "add", "alice"][..],
        &["user", "passwd", "bob"],
        &["user", "del", "bob"],
    ] {
        let out = portcullis(
            dir.path(),
            &[args, &["--file", "htpasswd"]].concat(),
            "password\n",
        );
        assert_refused(&out, "not a TOML users file");
        assert_refused(&out, "import-htpasswd");
    }
    assert_eq!(std::fs::read_to_string(&htpasswd).unwrap(), text);
    // Listing reads any file the server reads.
    let out = portcullis(dir.path(), &["user", "list", "--file", "htpasswd"], "");
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), "bob");

    // A TOML file that does not parse is reported with its line, not
    // overwritten.
    let broken = "[users.alice]\npassword = \"$2y$x\"\n[users.bob\n";
    std::fs::write(dir.path().join("users.toml"), broken).unwrap();
    let out = portcullis(
        dir.path(),
        &["user", "add", "carol", "--file", "users.toml"],
        "password\n",
    );
    assert_refused(&out, "users.toml:3:");
    // A file the server would refuse (a plain-text password) is not made
    // worse either: the edit is refused with the server's reason.
    let plain = "[users.alice]\npassword = \"hunter2\"\n";
    std::fs::write(dir.path().join("users.toml"), plain).unwrap();
    let out = portcullis(
        dir.path(),
        &["user", "add", "carol", "--file", "users.toml"],
        "password\n",
    );
    assert_refused(&out, "argon2id or bcrypt hash");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("users.toml")).unwrap(),
        plain
    );
    // Listing a missing file: no users, and no error.
    let out = portcullis(dir.path(), &["user", "list", "--file", "none.toml"], "");
    assert_ok(&out);
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("no such file"), "{}", stderr(&out));
}

#[test]
fn import_htpasswd_keeps_bcrypt_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    assert_ok(&user(
        dir.path(),
        &["add", "alice", "-g", "admins"],
        "toml-pw-1\n",
    ));
    // `htpasswd -B` writes the `$2y$` variant; other tools write `$2b$`.
    let carol = bcrypt::hash_with_result("carol-pw", 5)
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    let dave = bcrypt::hash("dave-pw", 4).unwrap();
    let alice = bcrypt::hash("htpasswd-pw", 4).unwrap();
    assert!(carol.starts_with("$2y$05$") && dave.starts_with("$2b$"));
    std::fs::write(
        dir.path().join("htpasswd"),
        format!("# exported\ncarol:{carol}\n\ndave:{dave}\nalice:{alice}\n"),
    )
    .unwrap();

    let out = user(
        dir.path(),
        &["import-htpasswd", "htpasswd", "--group", "imported"],
        "",
    );
    assert_ok(&out);
    let said = stdout(&out);
    assert!(said.contains("added 2: carol, dave"), "{said}");
    assert!(
        said.contains("skipped 1") && said.contains("alice"),
        "{said}"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(&carol) && text.contains(&dave), "{text}");
    let users = load(&file);
    assert_eq!(users.len(), 3);
    assert_eq!(
        users
            .verify("carol", "carol-pw")
            .expect("carol")
            .account
            .groups,
        ["imported"]
    );
    assert!(users.verify("dave", "dave-pw").is_some());
    // alice already existed: her password and groups are untouched.
    assert_eq!(
        users
            .verify("alice", "toml-pw-1")
            .expect("alice")
            .account
            .groups,
        ["admins"]
    );

    let out = user(
        dir.path(),
        &["import-htpasswd", "htpasswd", "--replace"],
        "",
    );
    assert_ok(&out);
    assert!(
        stdout(&out).contains("replaced the password of 3"),
        "{}",
        stdout(&out)
    );
    let users = load(&file);
    assert!(users.verify("alice", "toml-pw-1").is_none());
    let account = users.verify("alice", "htpasswd-pw").expect("replaced");
    assert_eq!(account.account.groups, ["admins"], "--replace keeps groups");
    assert_eq!(users.account("carol").unwrap().groups, ["imported"]);
}

#[test]
fn import_refuses_weak_or_malformed_htpasswd_files_whole() {
    let dir = tempfile::tempdir().unwrap();
    let good = bcrypt::hash("pw", 4).unwrap();
    for (content, reason) in [
        // Apache MD5: too weak to keep.
        (
            format!("carol:{good}\neve:$apr1$abc$defghijklmnop\n"),
            "htpasswd:2:",
        ),
        (format!("carol:{good}\nno colon here\n"), "htpasswd:2:"),
        (format!("bad name:{good}\n"), "invalid user name"),
        ("# only a comment\n".to_owned(), "no users to import"),
    ] {
        std::fs::write(dir.path().join("htpasswd"), content).unwrap();
        let out = user(dir.path(), &["import-htpasswd", "htpasswd"], "");
        assert_refused(&out, reason);
        assert!(!dir.path().join("users.toml").exists(), "nothing written");
    }
    let out = user(dir.path(), &["import-htpasswd", "missing"], "");
    assert_refused(&out, "missing: cannot read");
}

#[test]
fn names_that_cannot_be_a_repository_path_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    let out = user(dir.path(), &["add", "Frank"], "frank-password\n");
    assert_refused(&out, "`Frank` cannot be a repository path component");
    assert_refused(&out, "`${user}/**` rules could never match it; use `frank`");
    let out = user(dir.path(), &["add", "bob@example.com"], "bob-password\n");
    assert_refused(&out, "could never match it");
    assert!(!stderr(&out).contains("; use"), "{}", stderr(&out));
    assert!(!file.exists(), "nothing written");

    // An older file with such a name still works: passwd and list warn,
    // del removes it.
    let hash = bcrypt::hash("old-password", 4).unwrap();
    std::fs::write(&file, format!("[users.Frank]\npassword = {hash:?}\n")).unwrap();
    let out = user(dir.path(), &["passwd", "Frank"], "new-password\n");
    assert_ok(&out);
    assert!(
        stderr(&out).contains("warning: user name `Frank`"),
        "{}",
        stderr(&out)
    );
    assert!(load(&file).verify("Frank", "new-password").is_some());
    let out = user(dir.path(), &["list"], "");
    assert_ok(&out);
    assert!(stderr(&out).contains("use `frank`"), "{}", stderr(&out));
    assert_ok(&user(dir.path(), &["del", "Frank"], ""));
    assert!(load(&file).is_empty());
}

#[test]
fn passwords_shorter_than_the_minimum_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    // The default minimum: 8 characters.
    let out = user(dir.path(), &["add", "alice"], "1234567\n");
    assert_refused(
        &out,
        "password too short: 7 characters, at least 8 required",
    );
    assert!(!file.exists(), "nothing written");
    assert_ok(&user(dir.path(), &["add", "alice"], "12345678\n"));
    // `passwd` shares the rule, and the configuration sets the minimum
    // (also when --file names the users file).
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, "[users]\nmin_password_length = 12\n").unwrap();
    let before = std::fs::read(&file).unwrap();
    let out = user(
        dir.path(),
        &["passwd", "alice", "-c", "portcullis.toml"],
        "eleven-char\n",
    );
    assert_refused(&out, "at least 12 required (users.min_password_length)");
    assert_eq!(std::fs::read(&file).unwrap(), before, "file unchanged");
    assert_ok(&user(
        dir.path(),
        &["passwd", "alice", "-c", "portcullis.toml"],
        "twelve-chars\n",
    ));
    assert!(load(&file).verify("alice", "twelve-chars").is_some());
    // A minimum of 0 is a configuration error.
    std::fs::write(&config, "[users]\nmin_password_length = 0\n").unwrap();
    let out = portcullis(
        dir.path(),
        &["user", "add", "bob", "-c", "portcullis.toml"],
        "bob-password\n",
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("users.min_password_length must be at least 1"));
}

#[test]
fn more_than_one_line_on_stdin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    for stdin in [
        "first-line\nsecond-line\n",
        "first-line\n\n",
        "first-line\nx",
    ] {
        let out = user(dir.path(), &["add", "alice"], stdin);
        assert_refused(&out, "expected one line");
        assert!(!file.exists(), "nothing written for {stdin:?}");
    }
    assert_ok(&user(dir.path(), &["add", "alice"], "first-line\n"));
    let before = std::fs::read(&file).unwrap();
    let out = user(
        dir.path(),
        &["passwd", "alice"],
        "new-password\nnew-password\n",
    );
    assert_refused(&out, "expected one line");
    assert_eq!(std::fs::read(&file).unwrap(), before, "file unchanged");
}

#[test]
fn import_with_a_bad_name_imports_nothing_and_lists_every_bad_name() {
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("pw", 4).unwrap();
    std::fs::write(
        dir.path().join("htpasswd"),
        format!("carol:{hash}\nFrank:{hash}\nbob@example.com:{hash}\n"),
    )
    .unwrap();
    let out = portcullis(
        dir.path(),
        &[
            "user",
            "import-htpasswd",
            "htpasswd",
            "--file",
            "users.toml",
        ],
        "",
    );
    assert_refused(
        &out,
        "nothing imported: 2 user name(s) cannot be a repository path component",
    );
    assert_refused(&out, "Frank (use `frank`)");
    assert_refused(&out, "bob@example.com");
    assert!(!stderr(&out).contains("carol"), "{}", stderr(&out));
    assert!(!dir.path().join("users.toml").exists(), "nothing written");
}

#[test]
fn unlock_records_the_time_and_refuses_unknown_users() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    assert_ok(&user(dir.path(), &["add", "alice"], "alice-password\n"));
    let stamp = load(&file).account("alice").unwrap().stamp;
    let out = user(dir.path(), &["unlock", "alice"], "");
    assert_ok(&out);
    assert!(stdout(&out).contains("unlocked alice"), "{}", stdout(&out));
    assert!(stdout(&out).contains("within a second"), "{}", stdout(&out));
    // The documented field, in alice's entry.
    let text = std::fs::read_to_string(&file).unwrap();
    let at: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("unlocked_at = "))
        .unwrap_or_else(|| panic!("no unlocked_at in {text}"))
        .parse()
        .unwrap();
    assert!(
        text.find("[users.alice]") < text.find("unlocked_at"),
        "{text}"
    );
    let users = load(&file);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(at.abs_diff(now) <= 2, "{at} vs {now}");
    // Neither the password nor the identity changed.
    assert!(users.verify("alice", "alice-password").is_some());
    assert_eq!(users.account("alice").unwrap().stamp, stamp);

    let before = std::fs::read(&file).unwrap();
    let out = user(dir.path(), &["unlock", "nobody"], "");
    assert_refused(&out, "no user `nobody`");
    assert_eq!(std::fs::read(&file).unwrap(), before);
}

/// A pseudo-terminal standing in for a person at a keyboard: the child's
/// stdin and stderr are its slave side, and the test types and reads on the
/// master side.
struct Terminal {
    master: std::fs::File,
    slave: std::os::fd::OwnedFd,
    /// Everything the child showed on the terminal, as the reader thread
    /// receives it.
    shown: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Terminal {
    fn open() -> Self {
        use std::os::fd::FromRawFd;
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two new descriptors into the pointers; the
        // name, termios and window size pointers may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened and are owned by nobody else.
        let (master, slave) = unsafe {
            (
                std::fs::File::from_raw_fd(master),
                std::os::fd::OwnedFd::from_raw_fd(slave),
            )
        };
        let mut reader = master.try_clone().unwrap();
        let (tx, shown) = std::sync::mpsc::channel();
        // Reads block until the child writes; on a thread, so that the test
        // can give up after a deadline instead of hanging.
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 1024];
            // Ends with EIO once every slave descriptor is closed.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Self {
            master,
            slave,
            shown,
            seen: Vec::new(),
        }
    }

    /// Waits until the terminal has shown `text`.
    #[track_caller]
    fn expect(&mut self, text: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !String::from_utf8_lossy(&self.seen).contains(text) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.shown.recv_timeout(left) {
                Ok(chunk) => self.seen.extend(chunk),
                Err(_) => panic!(
                    "{text:?} never shown; terminal so far: {:?}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }

    fn type_line(&mut self, line: &str) {
        self.master.write_all(line.as_bytes()).unwrap();
        self.master.write_all(b"\n").unwrap();
    }

    /// Whether the terminal echoes what is typed.
    fn echoes(&self) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: termios is plain data, filled in by tcgetattr on a valid
        // descriptor.
        let mut settings: libc::termios = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::tcgetattr(self.slave.as_raw_fd(), &mut settings) };
        assert_eq!(rc, 0, "tcgetattr: {}", std::io::Error::last_os_error());
        settings.c_lflag & libc::ECHO != 0
    }

    /// Runs `portcullis ARGS` in `dir` on this terminal (stdout stays a pipe).
    fn spawn(&self, dir: &Path, args: &[&str]) -> std::process::Child {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .current_dir(dir)
            .stdin(self.slave.try_clone().unwrap())
            .stderr(self.slave.try_clone().unwrap())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn portcullis")
    }

    /// Everything shown so far, after the child has exited.
    fn shown(&mut self) -> String {
        while let Ok(chunk) = self.shown.try_recv() {
            self.seen.extend(chunk);
        }
        String::from_utf8_lossy(&self.seen).into_owned()
    }
}

#[test]
fn at_a_terminal_the_password_is_asked_twice_without_echo() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    let mut tty = Terminal::open();
    assert!(tty.echoes(), "a new terminal echoes");

    let child = tty.spawn(
        dir.path(),
        &["user", "add", "alice", "--file", "users.toml"],
    );
    // The prompt appears once echo is off: what is typed now stays hidden.
    tty.expect("New password for alice: ");
    assert!(!tty.echoes(), "echo is off while the password is typed");
    tty.type_line("Typed secret");
    tty.expect("Retype the password: ");
    tty.type_line("Typed secret");
    let out = child.wait_with_output().unwrap();
    assert_ok(&out);
    assert!(tty.echoes(), "echo is back on after the prompt");
    let shown = tty.shown();
    assert!(!shown.contains("Typed secret"), "password shown: {shown:?}");
    assert!(load(&file).verify("alice", "Typed secret").is_some());

    // Two different answers change nothing.
    let before = std::fs::read(&file).unwrap();
    let child = tty.spawn(
        dir.path(),
        &["user", "passwd", "alice", "--file", "users.toml"],
    );
    tty.expect("New password for alice: ");
    tty.type_line("one-password");
    tty.expect("Retype the password: ");
    tty.type_line("two-password");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    // stderr is the terminal here.
    tty.expect("the passwords do not match; nothing changed");
    assert!(tty.echoes());
    assert_eq!(std::fs::read(&file).unwrap(), before);
}

#[test]
fn interrupting_the_prompt_restores_echo() {
    let dir = tempfile::tempdir().unwrap();
    let mut tty = Terminal::open();
    let mut child = tty.spawn(
        dir.path(),
        &["user", "add", "alice", "--file", "users.toml"],
    );
    tty.expect("New password for alice: ");
    assert!(!tty.echoes());
    // Ctrl-C, as the shell would deliver it.
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(tty.echoes(), "echo restored after Ctrl-C");
    assert!(!dir.path().join("users.toml").exists());
}

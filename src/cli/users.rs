//! `portcullis user add|passwd|del|unlock|list|import-htpasswd`: the TOML
//! users file.
//!
//! New names (`add`, `import-htpasswd`) must be repository path components
//! (`check_path_name`): `${user}/**` in a policy can only ever match those.
//! The other commands take any name a users file may already hold, so that
//! such an account can still be given a password, unlocked or removed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use portcullis::auth::users::{
    PATH_COMPONENT, Users, UsersError, check_name, check_path_name, hash_password,
};
use portcullis::auth::users_file::{EditError, UsersFile, check_group};

use super::{Failure, load_config, password};

#[derive(Subcommand)]
pub enum UserCommand {
    /// Adds a user. The password is asked for twice without echo, or read as
    /// one line from stdin when stdin is not a terminal (more input is
    /// refused); it needs at least `users.min_password_length` characters
    /// (default 8).
    Add {
        /// The user name: lower-case letters and digits, separated by `.`,
        /// `_`, `__` or `-` (a repository path component, as `${user}` in
        /// policies needs).
        name: String,
        /// A group of the user (repeat for several).
        #[arg(long = "group", short = 'g', value_name = "GROUP")]
        groups: Vec<String>,
        /// A robot account: no password is asked for, and it logs in only
        /// with its personal access tokens (`portcullis token create`).
        #[arg(long)]
        robot: bool,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Sets a user's password (asked for, or one line of stdin), of at least
    /// `users.min_password_length` characters.
    Passwd {
        /// The user whose password to set.
        name: String,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Removes a user.
    Del {
        /// The user to remove.
        name: String,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Clears a user's failed-login lockout in the running servers: records
    /// `unlocked_at` in the users file, and every server forgets the user's
    /// failed logins until now when it reloads the file (within a second).
    /// The limit per client address stays.
    Unlock {
        /// The user whose lockout to clear (it must be in the users file).
        name: String,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Lists the users and their groups.
    List {
        #[command(flatten)]
        file: FileArgs,
    },
    /// Copies the users of an `htpasswd -B` file into the TOML users file,
    /// keeping their bcrypt hashes (so their passwords stay the same).
    /// Users already in the TOML file are left alone unless --replace. A
    /// name that cannot be a repository path component (`Frank`,
    /// `bob@example.com`) refuses the whole import, listing every such name:
    /// rename them in the htpasswd file first.
    ImportHtpasswd {
        /// The htpasswd file (`name:$2y$…` lines).
        htpasswd: PathBuf,
        /// A group for every imported user (repeat for several).
        #[arg(long = "group", short = 'g', value_name = "GROUP")]
        groups: Vec<String>,
        /// Replace the password hash of users that already exist.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        file: FileArgs,
    },
}

#[derive(Args)]
pub struct FileArgs {
    /// Configuration file; its `users.file` names the users file, and its
    /// `users.min_password_length` the shortest password.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The users file, overriding the configuration.
    #[arg(long, value_name = "USERS")]
    file: Option<PathBuf>,
}

impl FileArgs {
    fn path(&self) -> Result<PathBuf, Failure> {
        match &self.file {
            Some(file) => Ok(file.clone()),
            None => Ok(load_config(self.config.as_deref())?.users.file),
        }
    }

    /// The configuration's shortest password, also when `--file` is given.
    fn min_password_length(&self) -> Result<usize, Failure> {
        Ok(load_config(self.config.as_deref())?
            .users
            .min_password_length)
    }
}

pub fn run(command: UserCommand) -> Result<ExitCode, Failure> {
    match command {
        UserCommand::Add {
            name,
            groups,
            robot,
            file,
        } => add(&name, &groups, robot, &file),
        UserCommand::Passwd { name, file } => passwd(&name, &file),
        UserCommand::Del { name, file } => del(&name, &file),
        UserCommand::Unlock { name, file } => unlock(&name, &file),
        UserCommand::List { file } => list(&file),
        UserCommand::ImportHtpasswd {
            htpasswd,
            groups,
            replace,
            file,
        } => import(&htpasswd, &groups, replace, &file),
    }
}

fn add(name: &str, groups: &[String], robot: bool, args: &FileArgs) -> Result<ExitCode, Failure> {
    // Everything that can refuse the command is checked before the
    // password is asked for.
    check_path_name(name).map_err(Failure::refused)?;
    for group in groups {
        check_group(group).map_err(Failure::refused)?;
    }
    let mut file = UsersFile::open(&args.path()?).map_err(Failure::refused)?;
    if file.contains(name) {
        return Err(Failure::refused(EditError::Exists {
            path: file.path().to_owned(),
            name: name.to_owned(),
        }));
    }
    if robot {
        file.add_robot(name, groups).map_err(Failure::refused)?;
    } else {
        let hash = new_hash(name, args)?;
        file.add(name, &hash, groups).map_err(Failure::refused)?;
    }
    file.save().map_err(Failure::refused)?;
    let groups = if groups.is_empty() {
        String::new()
    } else {
        format!(" (groups: {})", groups.join(", "))
    };
    let kind = if robot { "robot account" } else { "user" };
    println!("added {kind} {name}{groups} to {}", file.path().display());
    if robot {
        println!(
            "it has no password: give it a token with `portcullis token create --user {name}`"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn passwd(name: &str, args: &FileArgs) -> Result<ExitCode, Failure> {
    check_name(name).map_err(Failure::refused)?;
    let mut file = UsersFile::open(&args.path()?).map_err(Failure::refused)?;
    if !file.contains(name) {
        return Err(unknown(&file, name));
    }
    if file.is_robot(name) {
        return Err(Failure::refused(format!(
            "{name} is a robot account: it has no password and logs in with its tokens (`portcullis token create --user {name}`)"
        )));
    }
    if let Err(e) = check_path_name(name) {
        eprintln!("portcullis: warning: {e}");
    }
    let hash = new_hash(name, args)?;
    file.set_password(name, &hash).map_err(Failure::refused)?;
    file.save().map_err(Failure::refused)?;
    println!(
        "changed the password of {name} in {}",
        file.path().display()
    );
    Ok(ExitCode::SUCCESS)
}

fn del(name: &str, args: &FileArgs) -> Result<ExitCode, Failure> {
    check_name(name).map_err(Failure::refused)?;
    let mut file = UsersFile::open(&args.path()?).map_err(Failure::refused)?;
    if !file.contains(name) {
        return Err(unknown(&file, name));
    }
    file.remove(name).map_err(Failure::refused)?;
    file.save().map_err(Failure::refused)?;
    println!("removed user {name} from {}", file.path().display());
    Ok(ExitCode::SUCCESS)
}

fn unlock(name: &str, args: &FileArgs) -> Result<ExitCode, Failure> {
    check_name(name).map_err(Failure::refused)?;
    let mut file = UsersFile::open(&args.path()?).map_err(Failure::refused)?;
    if !file.contains(name) {
        return Err(unknown(&file, name));
    }
    // Rounded up: the failures of the current second are forgotten too,
    // since the server compares whole seconds with its clock.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let at = now.as_secs() + u64::from(now.subsec_nanos() > 0);
    file.unlock(name, at).map_err(Failure::refused)?;
    file.save().map_err(Failure::refused)?;
    println!(
        "unlocked {name} in {}: running servers pick this up within a second and forget its failed logins until now (the limit per client address stays)",
        file.path().display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Lists any users file the server reads, htpasswd files included.
fn list(args: &FileArgs) -> Result<ExitCode, Failure> {
    let path = args.path()?;
    let users = match Users::load(&path) {
        Ok(users) => users,
        Err(UsersError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("{}: no such file, so no users", path.display());
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(Failure::refused(e)),
    };
    for name in users.not_path_names() {
        eprintln!(
            "portcullis: warning: {}",
            check_path_name(name)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        );
    }
    let width = users.names().map(|(n, _)| n.chars().count()).max();
    for (name, groups) in users.names() {
        if groups.is_empty() {
            println!("{name}");
        } else {
            let pad = width.unwrap_or(0);
            println!("{name:pad$}  {}", groups.join(","));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn import(
    htpasswd: &std::path::Path,
    groups: &[String],
    replace: bool,
    args: &FileArgs,
) -> Result<ExitCode, Failure> {
    for group in groups {
        check_group(group).map_err(Failure::refused)?;
    }
    let text = std::fs::read_to_string(htpasswd)
        .map_err(|e| Failure::refused(format!("{}: cannot read: {e}", htpasswd.display())))?;
    // The whole file is checked first: one weak (MD5, SHA-1, crypt) or
    // malformed line refuses the import, and nothing is written.
    let source =
        Users::from_htpasswd(&htpasswd.display().to_string(), &text).map_err(Failure::refused)?;
    if source.is_empty() {
        return Err(Failure::refused(format!(
            "{}: no users to import",
            htpasswd.display()
        )));
    }
    // All or nothing, as for weak hashes: a partial import would leave the
    // operator to find out later which accounts are missing.
    let bad: Vec<String> = source
        .not_path_names()
        .filter_map(|name| match check_path_name(name) {
            Err(UsersError::NotPath {
                suggestion: Some(s),
                ..
            }) => Some(format!("{name} (use `{s}`)")),
            Err(_) => Some(name.to_owned()),
            Ok(()) => None,
        })
        .collect();
    if !bad.is_empty() {
        return Err(Failure::refused(format!(
            "{}: nothing imported: {} user name(s) cannot be a repository path component ({PATH_COMPONENT}), so `${{user}}/**` rules could never match them; rename them in the htpasswd file: {}",
            htpasswd.display(),
            bad.len(),
            bad.join(", ")
        )));
    }
    let mut file = UsersFile::open(&args.path()?).map_err(Failure::refused)?;
    let (mut added, mut replaced, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    for (name, _) in source.names() {
        let Some(hash) = source.password_hash(name) else {
            continue;
        };
        if !file.contains(name) {
            file.add(name, hash, groups).map_err(Failure::refused)?;
            added.push(name);
        } else if replace {
            file.set_password(name, hash).map_err(Failure::refused)?;
            replaced.push(name);
        } else {
            skipped.push(name);
        }
    }
    if !added.is_empty() || !replaced.is_empty() {
        file.save().map_err(Failure::refused)?;
    }
    let path = file.path().display();
    for (what, names) in [("added", &added), ("replaced the password of", &replaced)] {
        if !names.is_empty() {
            println!("{what} {}: {}", names.len(), names.join(", "));
        }
    }
    if !skipped.is_empty() {
        println!(
            "skipped {} already in {path} (--replace to overwrite their passwords): {}",
            skipped.len(),
            skipped.join(", ")
        );
    }
    println!(
        "imported {} of {} users from {} into {path}",
        added.len() + replaced.len(),
        source.len(),
        htpasswd.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn new_hash(name: &str, args: &FileArgs) -> Result<String, Failure> {
    let password = password::read_new(name, args.min_password_length()?)?;
    hash_password(&password).map_err(Failure::refused)
}

fn unknown(file: &UsersFile, name: &str) -> Failure {
    Failure::refused(EditError::Unknown {
        path: file.path().to_owned(),
        name: name.to_owned(),
    })
}

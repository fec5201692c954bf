//! `portcullis user add|passwd|del|list|import-htpasswd`: the TOML users file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use portcullis::auth::users::{Users, UsersError, check_name, hash_password};
use portcullis::auth::users_file::{EditError, UsersFile, check_group};

use super::{Failure, load_config, password};

#[derive(Subcommand)]
pub enum UserCommand {
    /// Adds a user. The password is asked for twice without echo, or read as
    /// one line from stdin when stdin is not a terminal.
    Add {
        /// The new user's name.
        name: String,
        /// A group of the user (repeat for several).
        #[arg(long = "group", short = 'g', value_name = "GROUP")]
        groups: Vec<String>,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Sets a user's password (asked for, or one line of stdin).
    Passwd {
        /// The user whose password changes.
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
    /// Lists the users and their groups.
    List {
        #[command(flatten)]
        file: FileArgs,
    },
    /// Copies the users of an `htpasswd -B` file into the TOML users file,
    /// keeping their bcrypt hashes (so their passwords stay the same).
    /// Users already in the TOML file are left alone unless --replace.
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
    /// Configuration file; its `users.file` names the users file.
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
}

pub fn run(command: UserCommand) -> Result<ExitCode, Failure> {
    match command {
        UserCommand::Add { name, groups, file } => add(&name, &groups, &file),
        UserCommand::Passwd { name, file } => passwd(&name, &file),
        UserCommand::Del { name, file } => del(&name, &file),
        UserCommand::List { file } => list(&file),
        UserCommand::ImportHtpasswd {
            htpasswd,
            groups,
            replace,
            file,
        } => import(&htpasswd, &groups, replace, &file),
    }
}

fn add(name: &str, groups: &[String], args: &FileArgs) -> Result<ExitCode, Failure> {
    // Everything that can refuse the command is checked before the
    // password is asked for.
    check_name(name).map_err(Failure::refused)?;
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
    let hash = new_hash(name)?;
    file.add(name, &hash, groups).map_err(Failure::refused)?;
    file.save().map_err(Failure::refused)?;
    let groups = if groups.is_empty() {
        String::new()
    } else {
        format!(" (groups: {})", groups.join(", "))
    };
    println!("added user {name}{groups} to {}", file.path().display());
    Ok(ExitCode::SUCCESS)
}

fn passwd(name: &str, args: &FileArgs) -> Result<ExitCode, Failure> {
    check_name(name).map_err(Failure::refused)?;
    let mut file = UsersFile::open(&args.path()?).map_err(Failure::refused)?;
    if !file.contains(name) {
        return Err(unknown(&file, name));
    }
    let hash = new_hash(name)?;
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

fn new_hash(name: &str) -> Result<String, Failure> {
    let password = password::read_new(name)?;
    hash_password(&password).map_err(Failure::refused)
}

fn unknown(file: &UsersFile, name: &str) -> Failure {
    Failure::refused(EditError::Unknown {
        path: file.path().to_owned(),
        name: name.to_owned(),
    })
}

//! Reading a new password: from a prompt without echo when stdin is a
//! terminal (asked twice), otherwise as exactly one line of stdin: anything
//! after it is refused, since a script that pipes two lines (or a file) in
//! has a mistake that must not silently become a password of its first line.
//! Never from the command line, where other local users could read it in
//! the process list and the shell would keep it in its history.
//!
//! A password shorter than `users.min_password_length` characters is refused.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::process::{Command, Stdio};

use super::Failure;

/// Most bytes read from stdin: far more than any password, little enough
/// that piping a large file in by mistake is refused quickly.
const MAX_STDIN: u64 = 64 * 1024;

/// Asks for the new password of `name`, of at least `min_length` characters.
pub fn read_new(name: &str, min_length: usize) -> Result<String, Failure> {
    let check = |password: &str| check(password, min_length);
    let password = if std::io::stdin().is_terminal() {
        let first = prompt(&format!("New password for {name}: "))?;
        check(&first)?;
        let second = prompt("Retype the password: ")?;
        if first != second {
            return Err(Failure::refused(
                "the passwords do not match; nothing changed",
            ));
        }
        first
    } else {
        read_stdin()?
    };
    check(&password)?;
    Ok(password)
}

/// Asks for the existing password of `name` (once; a diagnostic, so no
/// length rule): a prompt at a terminal, else one line of stdin.
pub fn read_existing(name: &str) -> Result<String, Failure> {
    if std::io::stdin().is_terminal() {
        prompt(&format!("Password for {name}: "))
    } else {
        read_stdin()
    }
}

fn check(password: &str, min_length: usize) -> Result<(), Failure> {
    if password.is_empty() {
        return Err(Failure::refused("empty password; nothing changed"));
    }
    let length = password.chars().count();
    if length < min_length {
        return Err(Failure::refused(format!(
            "password too short: {length} characters, at least {min_length} required (users.min_password_length); nothing changed"
        )));
    }
    Ok(())
}

/// All of stdin, which must be exactly one line (its line ending optional).
fn read_stdin() -> Result<String, Failure> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_STDIN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::refused(format!("cannot read the password: {e}")))?;
    one_line(bytes)
}

fn one_line(bytes: Vec<u8>) -> Result<String, Failure> {
    if bytes.is_empty() {
        return Err(Failure::refused(
            "no password on stdin (expected one line); nothing changed",
        ));
    }
    if bytes.len() as u64 > MAX_STDIN {
        return Err(Failure::refused(
            "more than 64 KiB on stdin (expected one line); nothing changed",
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| Failure::refused("the password on stdin is not UTF-8; nothing changed"))?;
    let end = text.find('\n').map_or(text.len(), |i| i + 1);
    if end < text.len() {
        return Err(Failure::refused(
            "more than one line on stdin (expected one line: the password); nothing changed",
        ));
    }
    Ok(without_line_ending(&text).to_owned())
}

/// One line of stdin without its line ending; `None` at end of input.
fn read_line() -> Result<Option<String>, Failure> {
    let mut line = String::new();
    let read = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::refused(format!("cannot read the password: {e}")))?;
    if read == 0 {
        return Ok(None);
    }
    Ok(Some(without_line_ending(&line).to_owned()))
}

fn without_line_ending(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.strip_suffix('\r').unwrap_or(line)
}

/// Prints `text` on stderr and reads a line from the terminal with echo
/// off. Echo is turned off before the prompt appears, so that nothing typed
/// after the prompt is shown.
fn prompt(text: &str) -> Result<String, Failure> {
    let echo_off = EchoOff::new().map_err(|e| {
        Failure::refused(format!(
            "cannot turn off terminal echo ({e}); give the password as one line on stdin instead"
        ))
    })?;
    eprint!("{text}");
    let _ = std::io::stderr().flush();
    let line = read_line();
    drop(echo_off);
    // The newline the user typed was not echoed either.
    eprintln!();
    line?.ok_or_else(|| Failure::refused("no password given; nothing changed"))
}

/// Terminal echo turned off with `stty` (on stdin, the terminal) for as long
/// as this lives, including when the user interrupts the prompt: the
/// terminal's settings are restored before the process ends.
struct EchoOff {
    saved: String,
}

impl EchoOff {
    fn new() -> std::io::Result<Self> {
        let saved = stty(&["-g"])?;
        let saved = saved.trim().to_owned();
        restore_on_signal(saved.clone())?;
        stty(&["-echo"])?;
        Ok(Self { saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = stty(&[&self.saved]);
    }
}

/// Runs `stty` on our stdin and returns what it printed.
fn stty(args: &[&str]) -> std::io::Result<String> {
    let out = Command::new("stty")
        .args(args)
        .stdin(Stdio::inherit())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "stty exited with {}",
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Without this, Ctrl-C at the prompt would leave the terminal without
/// echo. The handlers are registered before echo goes off; a thread waits
/// for a signal, restores the settings and exits with the shell's status
/// for a signal.
#[cfg(unix)]
fn restore_on_signal(saved: String) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::signal::unix::{SignalKind, signal};
    // The terminal's saved settings are the same for both prompts: one
    // watcher is enough.
    static WATCHING: AtomicBool = AtomicBool::new(false);
    if WATCHING.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let (mut interrupt, mut terminate, mut hangup) = {
        let _context = runtime.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        )
    };
    std::thread::spawn(move || {
        let status = runtime.block_on(async {
            tokio::select! {
                _ = interrupt.recv() => 130,
                _ = terminate.recv() => 143,
                _ = hangup.recv() => 129,
            }
        });
        let _ = stty(&[&saved]);
        eprintln!();
        std::process::exit(status);
    });
    Ok(())
}

#[cfg(not(unix))]
fn restore_on_signal(_saved: String) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_is_exactly_one_line() {
        let read = |s: &str| one_line(s.as_bytes().to_vec()).map_err(|f| f.message);
        assert_eq!(read("pw\n").unwrap(), "pw");
        assert_eq!(read("pw\r\n").unwrap(), "pw");
        assert_eq!(read("pw").unwrap(), "pw");
        for more in ["pw\nsecond\n", "pw\n\n", "pw\nx"] {
            assert!(
                read(more).unwrap_err().contains("expected one line"),
                "{more:?}"
            );
        }
        assert!(read("").unwrap_err().contains("no password"));
    }

    #[test]
    fn length_is_counted_in_characters() {
        assert!(check("ééééééé", 8).is_err(), "7 characters, 14 bytes");
        assert!(check("éééééééé", 8).is_ok());
        assert!(check("", 0).is_err());
    }
}

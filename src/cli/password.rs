//! Reading a new password: from a prompt without echo when stdin is a
//! terminal (asked twice), otherwise as one line of stdin. Never from the
//! command line, where other local users could read it in the process list
//! and the shell would keep it in its history.

use std::io::{BufRead, IsTerminal, Write};
use std::process::{Command, Stdio};

use super::Failure;

/// Asks for the new password of `name`.
pub fn read_new(name: &str) -> Result<String, Failure> {
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
        read_line()?.ok_or_else(|| {
            Failure::refused("no password on stdin (expected one line); nothing changed")
        })?
    };
    check(&password)?;
    Ok(password)
}

fn check(password: &str) -> Result<(), Failure> {
    if password.is_empty() {
        return Err(Failure::refused("empty password; nothing changed"));
    }
    Ok(())
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
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(Some(trimmed.to_owned()))
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

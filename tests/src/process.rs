//! Child processes that cannot outlive the test, and the polling helper.

use std::io;
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Shell wrapper for [`ChildGuard::spawn_tied`]: runs `"$@"` in the
/// background and a watchdog that reads the wrapper's stdin (a pipe whose only
/// writer is the test process).  When that pipe closes (the guard is dropped,
/// or the test process dies, even by SIGKILL) the watchdog sends SIGTERM to
/// the child, then SIGKILL 3 s later.  The wrapper exits with the child's
/// status.  Background jobs of a non-interactive shell get /dev/null as stdin,
/// hence the copy of stdin on fd 3.
const TIE_SCRIPT: &str = r#"exec 3<&0
"$@" </dev/null 3<&- &
child=$!
( cat <&3 >/dev/null; kill -TERM "$child" 2>/dev/null; sleep 3; kill -KILL "$child" 2>/dev/null ) &
watchdog=$!
exec 3<&-
wait "$child"
status=$?
kill "$watchdog" 2>/dev/null
exit "$status"
"#;

/// A child process that is killed (and reaped) when the guard is dropped.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Spawn `cmd` and guard it.
    pub fn spawn(cmd: &mut Command) -> io::Result<ChildGuard> {
        cmd.spawn().map(ChildGuard)
    }

    /// Spawn `cmd` so that it cannot outlive this process: it runs under a
    /// small `sh` wrapper that terminates it as soon as this process closes
    /// the wrapper's stdin, which the kernel does even when the test is
    /// killed and no destructor runs.  `cmd`'s program, arguments,
    /// environment changes and working directory are kept (not `env_clear`
    /// or stdio settings: pass stdout/stderr here; its stdin is /dev/null).
    ///
    /// Dropping the guard (or calling [`ChildGuard::shutdown`]) stops it.
    pub fn spawn_tied(cmd: &Command, stdout: Stdio, stderr: Stdio) -> io::Result<ChildGuard> {
        let mut wrapper = Command::new("sh");
        wrapper
            .arg("-c")
            .arg(TIE_SCRIPT)
            .arg("icu-test-tied")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => wrapper.env(key, v),
                None => wrapper.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapper.current_dir(dir);
        }
        wrapper
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map(ChildGuard)
    }

    /// Stop the child and wait for it: close its stdin (a tied child is then
    /// sent SIGTERM, and SIGKILL 3 s later, by its wrapper), give it `grace`
    /// to exit, then SIGKILL.  Returns its exit status.
    pub fn shutdown(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        drop(self.0.stdin.take());
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // Already exited between the checks is fine.
        let _ = self.0.kill();
        self.0.wait()
    }

    /// `Some(status)` when the child has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().ok().flatten()
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Poll `f` until it returns `Some`, for at most `deadline`.
///
/// Sleeps briefly between polls (5 ms growing to 100 ms).  The error names
/// `what` and the time waited.
pub fn wait_for<T>(
    deadline: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        let waited = start.elapsed();
        if waited >= deadline {
            anyhow::bail!("timed out after {waited:.1?} waiting for {what}");
        }
        thread::sleep(pause.min(deadline - waited));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The last `lines` lines of a log file (reading at most its last 16 KiB), for error messages.
pub fn log_tail(path: &std::path::Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::from("(no log)");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

//! Child processes that die with the test process, and tool checks.

use std::process::Child;
use std::sync::{Mutex, Once};

static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static DIRS: Mutex<Vec<std::path::PathBuf>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

extern "C" fn at_exit() {
    if let Ok(pids) = CHILDREN.lock() {
        for &pid in pids.iter() {
            // SAFETY: kill(2) and waitpid(2) on pids we spawned; no memory is shared.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
                libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
            }
        }
    }
    if let Ok(dirs) = DIRS.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn register_hook() {
    HOOK.call_once(|| {
        // SAFETY: registering a plain extern "C" function with no captures.
        unsafe {
            libc::atexit(at_exit);
        }
    });
}

/// Removes `dir` when the process exits (for folders owned by statics).
pub fn remove_at_exit(dir: &std::path::Path) {
    register_hook();
    DIRS.lock().expect("poisoned").push(dir.to_path_buf());
}

/// Kills `child` when the process exits (the test harness calls `exit`,
/// which runs `atexit` handlers; statics are never dropped).
pub fn kill_at_exit(child: &Child) {
    register_hook();
    CHILDREN.lock().expect("poisoned").push(child.id());
}

/// Forgets a child that was stopped explicitly.
pub fn forget(child: &Child) {
    CHILDREN
        .lock()
        .expect("poisoned")
        .retain(|&p| p != child.id());
}

/// Fails with a clear message when a required tool is missing.
/// Sends SIGTERM to `child` (a graceful stop, as the kubelet sends), so the
/// product's tests need no `unsafe` of their own.
pub fn terminate(child: &Child) {
    // SAFETY: kill(2) on our own child, not yet waited for (we hold it), so
    // the pid is still ours.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
}

pub fn require_tools(tools: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing tools: {} — run scripts/test.sh, which installs them (apt-get install docker-registry skopeo containerd apache2-utils)",
            missing.join(", ")
        ))
    }
}

/// Runs `cmd` with `input` on its stdin and collects its output; a child
/// still running after `limit` is killed (its output so far is returned).
///
/// The input is written from its own thread while the output is read, so a
/// child that writes a lot before reading cannot deadlock us, and a child that
/// exits before reading its input (a usage error, say) is not a failure: the
/// write then ends in `BrokenPipe`, which is ignored. Any other write error
/// is a real fault and panics.
pub fn run_with_stdin(
    cmd: &mut std::process::Command,
    input: &[u8],
    limit: std::time::Duration,
) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let pid = child.id();
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || match pipe.write_all(&input) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out,
        Err(_) => {
            // SAFETY: kill(2) on our own child, which the waiting thread has
            // not reaped yet (it would have answered), so the pid is still ours.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            rx.recv().expect("waiting thread answers")
        }
    }
    .expect("wait for child");
    writer
        .join()
        .expect("stdin writer panicked")
        .expect("write child's stdin");
    out
}

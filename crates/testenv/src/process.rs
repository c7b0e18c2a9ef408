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

//! Child processes and scratch directories that cannot outlive the test binary.
//!
//! * Every child is spawned from one dedicated, never-ending "supervisor" thread with
//!   `prctl(PR_SET_PDEATHSIG, SIGKILL)`: Linux delivers the signal when the *thread* that forked
//!   the child exits, so spawning from a short-lived test thread would kill the child as soon as
//!   that test ends. The supervisor thread lives until the process dies, however it dies
//!   (including SIGKILL of the test binary).
//! * A `libc::atexit` handler kills and reaps the children that are still registered and removes
//!   the scratch directories: the libtest harness leaves through `std::process::exit`, which runs
//!   `atexit` handlers, also when tests failed or panicked.
//! * A process killed outright cannot run `atexit`, so its scratch directory stays behind; each
//!   start sweeps the directories of this harness whose owning process is gone.

use std::io;
use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Mutex, MutexGuard, Once, OnceLock, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send>;

const SUPERVISOR_NAME: &str = "patchloop-testenv-supervisor";
/// Name of the file, inside a scratch directory, that records its owner ("<pid> <start time>").
const OWNER_FILE: &str = "owner";
/// Set to a non-empty value other than `0` to keep the scratch directory for debugging.
pub const KEEP_ENV: &str = "PATCHLOOP_TESTENV_KEEP";

static SUPERVISOR: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
static LIVE_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static SCRATCH_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Run at exit before the children are killed (e.g. the node's teardown,
/// which needs its containerd alive to stop the containers).
static TEARDOWNS: Mutex<Vec<Job>> = Mutex::new(Vec::new());
static ATEXIT: Once = Once::new();

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn register_atexit() {
    ATEXIT.call_once(|| {
        // SAFETY: registering a plain `extern "C" fn()` without captured state.
        let rc = unsafe { libc::atexit(cleanup_at_exit) };
        assert_eq!(
            rc, 0,
            "libc::atexit failed to register the test-env cleanup"
        );
    });
}

/// Kills and reaps every registered child, then removes the scratch directories.
extern "C" fn cleanup_at_exit() {
    // Never block forever on a lock here: another thread may hold it while the process exits.
    fn take<T>(m: &Mutex<Vec<T>>) -> Vec<T> {
        for _ in 0..200 {
            match m.try_lock() {
                Ok(mut g) => return std::mem::take(&mut *g),
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    return std::mem::take(&mut *p.into_inner());
                }
                Err(std::sync::TryLockError::WouldBlock) => thread::sleep(Duration::from_millis(5)),
            }
        }
        Vec::new()
    }
    for teardown in take(&TEARDOWNS) {
        // A panicking teardown must not keep the children below alive.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(teardown));
    }
    let pids = take(&LIVE_PIDS);
    for &pid in &pids {
        // SAFETY: plain syscalls on pids of our own, not yet reaped, children.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    for &pid in &pids {
        let mut status = 0;
        // SAFETY: as above; reaping so that nothing writes into the directories removed below.
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    }
    let dirs = take(&SCRATCH_DIRS);
    if keep_scratch() {
        for dir in &dirs {
            eprintln!("testenv: keeping {} ({KEEP_ENV} is set)", dir.display());
        }
    } else {
        for dir in &dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Registers `teardown` to run at exit, before the registered children are
/// killed; teardowns run in registration order.
pub fn at_exit(teardown: impl FnOnce() + Send + 'static) {
    register_atexit();
    lock(&TEARDOWNS).push(Box::new(teardown));
}

pub fn keep_scratch() -> bool {
    std::env::var(KEEP_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn supervisor() -> &'static mpsc::Sender<Job> {
    SUPERVISOR.get_or_init(|| {
        register_atexit();
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name(SUPERVISOR_NAME.into())
            .spawn(move || {
                // The sender lives in a static and is never dropped: this loop (and with it the
                // thread that is the "parent" of every child) lasts as long as the process.
                for job in rx {
                    job();
                }
            })
            .expect("failed to spawn the test-env supervisor thread");
        tx
    })
}

fn on_supervisor_thread() -> bool {
    thread::current().name() == Some(SUPERVISOR_NAME)
}

/// Runs `f` on the supervisor thread and returns its result (a panic in `f` is resumed in the
/// caller; the supervisor thread itself survives it).
pub fn on_supervisor<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    if on_supervisor_thread() {
        return f();
    }
    let (tx, rx) = mpsc::sync_channel(1);
    supervisor()
        .send(Box::new(move || {
            let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
        }))
        .expect("the test-env supervisor thread is gone");
    match rx
        .recv()
        .expect("the test-env supervisor thread dropped a job")
    {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A child process that dies with the test binary: killed (SIGKILL) and reaped when dropped, at
/// exit (`atexit`), or by the kernel (`PR_SET_PDEATHSIG`) if the test binary is killed.
#[derive(Debug)]
pub struct ManagedChild {
    name: String,
    child: Child,
    reaped: Option<ExitStatus>,
}

/// Spawns `cmd` from the supervisor thread; `name` is used in messages.
pub fn spawn(name: &str, mut cmd: Command) -> io::Result<ManagedChild> {
    let name = name.to_string();
    on_supervisor(move || {
        debug_assert!(on_supervisor_thread());
        // SAFETY: getpid is async-signal-safe and called before fork.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the hook runs between fork and exec and only calls async-signal-safe syscalls.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl: then nobody would kill us.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        // Register under the lock before anyone can observe the child, so that atexit sees it.
        let mut pids = lock(&LIVE_PIDS);
        let child = cmd.spawn()?;
        pids.push(child.id());
        Ok(ManagedChild {
            name,
            child,
            reaped: None,
        })
    })
}

impl ManagedChild {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The underlying child, e.g. to take its piped stdout. Do not `wait` on it directly; use
    /// [`ManagedChild::try_wait`] / [`ManagedChild::wait_timeout`] so that the pid is unregistered.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// `Some(status)` once the process has exited (and is reaped).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.reaped {
            return Ok(Some(status));
        }
        let status = self.child.try_wait()?;
        if let Some(status) = status {
            self.mark_reaped(status);
        }
        Ok(status)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) if the process has not been reaped yet.
    pub fn signal(&mut self, signal: libc::c_int) -> io::Result<()> {
        if self.reaped.is_some() {
            return Ok(());
        }
        // SAFETY: the pid is our own child and not reaped, so it cannot have been reused.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`; returns the exit status.
    pub fn terminate(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok(status);
        }
        self.kill()
    }

    /// SIGKILL and reap; returns the exit status.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.reaped {
            return Ok(status);
        }
        let _ = self.child.kill();
        let status = self.child.wait()?;
        self.mark_reaped(status);
        Ok(status)
    }

    fn mark_reaped(&mut self, status: ExitStatus) {
        self.reaped = Some(status);
        let pid = self.child.id();
        lock(&LIVE_PIDS).retain(|&p| p != pid);
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Start time of a process (field 22 of `/proc/<pid>/stat`, in clock ticks since boot): with
/// the pid it identifies a process even if the pid is reused later.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Runs `cmd` to completion (stdin closed); an error names it, its status and its stderr.
pub fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// [`spawn`] with stdout and stderr to `log` (a new file) and stdin closed.
pub fn spawn_logged(name: &str, mut cmd: Command, log: &Path) -> Result<ManagedChild, String> {
    let file =
        || std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()));
    cmd.stdin(std::process::Stdio::null())
        .stdout(file()?)
        .stderr(file()?);
    spawn(name, cmd).map_err(|e| format!("cannot start {name}: {e}"))
}

/// "<pid> <start time>" of this process: what an owner file records.
pub fn owner_record() -> String {
    let pid = std::process::id();
    format!("{pid} {}", process_start_time(pid).unwrap_or(0))
}

/// Whether the process an [`owner_record`] names still runs (the same pid
/// with the same start time: not a later process that reused the pid).
pub fn owner_alive(record: &str) -> bool {
    let mut fields = record.split_whitespace();
    let pid = fields.next().and_then(|p| p.parse::<u32>().ok());
    let start = fields.next().and_then(|s| s.parse::<u64>().ok());
    match (pid, start) {
        (Some(pid), Some(start)) => process_start_time(pid).is_some_and(|now| now == start),
        _ => false,
    }
}

/// Random lowercase hex string from the kernel's CSPRNG.
pub fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("failed to read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates `<base>/<prefix><pid>-<random>`, records its owner in it and registers it for removal
/// at exit.
pub fn create_scratch_dir(base: &Path, prefix: &str) -> io::Result<PathBuf> {
    register_atexit();
    let pid = std::process::id();
    loop {
        let dir = base.join(format!("{prefix}{pid}-{}", random_hex(4)));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                lock(&SCRATCH_DIRS).push(dir.clone());
                let start = process_start_time(pid).unwrap_or(0);
                std::fs::write(dir.join(OWNER_FILE), format!("{pid} {start}\n"))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Removes the scratch directories `<base>/<prefix><pid>-*` whose owning process is gone
/// (once per process).
pub fn sweep_stale_scratch_dirs(base: &Path, prefix: &str) {
    static SWEPT: Once = Once::new();
    SWEPT.call_once(|| sweep(base, prefix));
}

fn sweep(base: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let path = entry.path();
        let alive = match process_start_time(pid) {
            None => false,
            Some(now) => match std::fs::read_to_string(path.join(OWNER_FILE)) {
                // The owner file is written right after the directory: a missing one means the
                // directory is brand new (or its owner died in between; the next sweep gets it).
                Err(_) => true,
                Ok(owner) => owner
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_none_or(|recorded| recorded == now || recorded == 0),
            },
        };
        if !alive {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => eprintln!("testenv: removed stale {}", path.display()),
                // Another test binary swept it at the same time.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => eprintln!("testenv: cannot remove stale {}: {e}", path.display()),
            }
        }
    }
}

/// The last `lines` lines of a (log) file, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

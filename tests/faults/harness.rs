//! A `nixdisk build` child process under test: started with `-v` in a
//! private scope directory (its `$TMPDIR`, its `--out` parent, and shims
//! that hold a host tool), watched line by line so a test acts when a phase
//! begins, and checked afterwards for what a failed build must not leave:
//! an output or temporary directory, a process, a mount or a loop device.
//! Dropping a [`Build`] kills, by pid, the child and every process that
//! names the scope, so a failing test leaves nothing either.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::support::{process_alive, processes_mentioning};

/// How long a build may take to end after the fault; past it the test
/// fails (the figure printed is what RELIABILITY.md reports).
pub const END_LIMIT: Duration = Duration::from_secs(30);

static ONE_BUILD_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The example system's toplevel (built once per test binary).
pub fn example_system() -> String {
    static TOPLEVEL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOPLEVEL
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-example-system");
            let out = Command::new(script)
                .output()
                .expect("build-example-system runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .expect("the toplevel")
                .to_owned()
        })
        .clone()
}

/// Fails with a clear message unless the static agent is built.
pub fn require_agent() {
    if let Err(e) = nixdisk::builder_vm::find_agent(None) {
        panic!("these tests need the static guest agent: run scripts/build-agent\n{e}");
    }
}

/// A running `nixdisk build -v ARGS --out SCOPE/outs/result`.
pub struct Build {
    child: Child,
    log: Arc<Mutex<String>>,
    scope: tempfile::TempDir,
    started: Instant,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Build {
    /// A scope to prepare (shims, inputs) before [`Build::start_in`].
    pub fn new_scope() -> tempfile::TempDir {
        let scope = tempfile::Builder::new()
            .prefix("nixdisk-fault-")
            .tempdir()
            .expect("a scope directory");
        for dir in ["tmp", "outs", "bin"] {
            std::fs::create_dir(scope.path().join(dir)).expect("scope subdirectories");
        }
        scope
    }

    /// Starts the build in a fresh scope.
    pub fn start(args: &[&str]) -> Build {
        Build::start_in(Build::new_scope(), args)
    }

    /// Starts the build in `scope` (TCG, since this kind of machine's KVM
    /// hangs; the scope's `bin` first on PATH).
    pub fn start_in(scope: tempfile::TempDir, args: &[&str]) -> Build {
        let guard = ONE_BUILD_AT_A_TIME
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let path = format!(
            "{}:{}",
            scope.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_nixdisk"))
            .arg("build")
            .arg("-v")
            .args(args)
            .arg("--out")
            .arg(scope.path().join("outs/result"))
            .env("TMPDIR", scope.path().join("tmp"))
            .env("NIXDISK_ACCEL", "tcg")
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nixdisk starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        Build {
            child,
            log,
            scope,
            started: Instant::now(),
            _one_at_a_time: guard,
        }
    }

    /// nixdisk's stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `needle` has appeared `count` times in the log; panics
    /// (with the log) if the build ends first or `timeout` passes.
    pub fn wait_for_count(&mut self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= count {
                eprintln!(
                    "saw {needle:?} after {:.1} s",
                    self.started.elapsed().as_secs_f64()
                );
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nixdisk ended ({status}) before {needle:?}:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {timeout:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Build::wait_for_count`] once.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        self.wait_for_count(needle, 1, timeout);
    }

    /// The number logged as `name=N` (e.g. `qemu_pid`), first occurrence.
    pub fn logged_pid(&self, name: &str) -> u32 {
        let log = self.log();
        let key = format!("{name}=");
        let at = log
            .find(&key)
            .unwrap_or_else(|| panic!("no {key} in:\n{log}"));
        log[at + key.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .expect("a pid")
    }

    /// nixdisk's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The scope directory.
    pub fn scope(&self) -> &Path {
        self.scope.path()
    }

    /// Sends `signal` to nixdisk.
    pub fn signal(&self, signal: rustix::process::Signal) {
        kill(self.pid(), signal);
    }

    /// Waits for nixdisk to end, at most [`END_LIMIT`] from now.
    pub fn end(self) -> Ended {
        self.end_within(END_LIMIT)
    }

    /// Waits for nixdisk to end, at most `limit` from now (a fault the
    /// build runs into itself, after the VM start).
    pub fn end_within(mut self, limit: Duration) -> Ended {
        let since = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                since.elapsed() < limit,
                "nixdisk did not end within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let seconds = since.elapsed().as_secs_f64();
        // The reader thread sees end-of-file once nixdisk is gone.
        std::thread::sleep(Duration::from_millis(100));
        eprintln!("nixdisk ended ({status}) {seconds:.2} s after the fault");
        Ended {
            code: status.code(),
            stderr: self.log(),
            build: self,
        }
    }
}

impl Drop for Build {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for (pid, _) in processes_mentioning(self.scope.path()) {
            kill(pid, rustix::process::Signal::KILL);
        }
    }
}

fn kill(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// A build that ended.
pub struct Ended {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// nixdisk's stderr.
    pub stderr: String,
    /// The build (its scope is checked, then removed on drop).
    pub build: Build,
}

impl Ended {
    /// The lines of the one error nixdisk printed: from `error:` to the end.
    pub fn error(&self) -> String {
        let errors = self.stderr.matches("\nerror:").count()
            + usize::from(self.stderr.starts_with("error:"));
        assert_eq!(errors, 1, "exactly one error:\n{}", self.stderr);
        // At the start of a line: a guest's output, logged with -v, may say
        // `error:` mid-line.
        let at = match self.stderr.starts_with("error:") {
            true => 0,
            false => self.stderr.find("\nerror:").expect("an error") + 1,
        };
        self.stderr[at..].to_owned()
    }

    /// Asserts the exit code, that the one error contains every needle, and
    /// that nothing is left.
    pub fn assert_failed_cleanly(&self, code: i32, needles: &[&str]) {
        let error = self.error();
        eprintln!("{error}");
        assert_eq!(self.code, Some(code), "exit code; stderr:\n{}", self.stderr);
        for needle in needles {
            assert!(error.contains(needle), "{needle:?} not in:\n{error}");
        }
        assert_nothing_left(self.build.scope());
    }
}

/// Asserts that nothing of a build in `scope` is left: no output or
/// temporary output directory, no run directory in its TMPDIR, no process
/// naming the scope, no mount or loop device over a file in it.
pub fn assert_nothing_left(scope: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut left: Vec<String> = Vec::new();
        for dir in ["outs", "tmp"] {
            for entry in std::fs::read_dir(scope.join(dir))
                .expect("scope dir")
                .flatten()
            {
                left.push(entry.path().display().to_string());
            }
        }
        left.extend(
            processes_mentioning(scope)
                .into_iter()
                .map(|(pid, cmd)| format!("process {pid}: {cmd}")),
        );
        let needle = scope.to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        left.extend(
            mounts
                .lines()
                .filter(|l| l.contains(&needle))
                .map(|l| format!("mount: {l}")),
        );
        left.extend(
            loop_devices_over(scope)
                .into_iter()
                .map(|l| format!("loop: {l}")),
        );
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left behind: {left:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Loop devices whose backing file lies in `dir`.
fn loop_devices_over(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/sys/block")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("loop/backing_file")).ok())
                .filter(|backing| backing.contains(&needle))
                .collect()
        })
        .unwrap_or_default()
}

/// Puts a shim for `tool` in the scope's `bin`: it holds the build in the
/// current phase for up to a minute (with a process that names the scope,
/// so a survivor is seen), then runs the real tool.
pub fn hold_tool(scope: &Path, tool: &str) {
    // Everything stays in the shim's process group (no `timeout`, which
    // makes its own): nixdisk must kill all of it.
    write_shim(scope, tool, |real| {
        format!("tail -f \"$0\" >/dev/null &\nsleep 60\nkill $!\nexec {real} \"$@\"\n")
    });
}

/// Writes the scope's shim for `tool`: `#!/bin/sh` and `body(real tool)`.
fn write_shim(scope: &Path, tool: &str, body: impl FnOnce(&str) -> String) {
    let real = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .expect("sh runs");
    let real = String::from_utf8_lossy(&real.stdout).trim().to_owned();
    assert!(!real.is_empty(), "{tool} is installed");
    let shim: PathBuf = scope.join("bin").join(tool);
    std::fs::write(&shim, format!("#!/bin/sh\n{}", body(&real))).expect("the shim is written");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Whether `pid` is gone (or a zombie) within 5 s.
pub fn assert_gone(pid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_alive(pid) {
        assert!(Instant::now() < deadline, "{what} (pid {pid}) still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A host tool held by its shim until the test releases it.
pub struct Held {
    started: PathBuf,
    release: PathBuf,
}

/// Puts a shim for `tool` in the scope's `bin` that says when it started
/// and waits (up to a minute, naming the scope so a survivor is seen) until
/// [`Held::release`], then runs the real tool: the test changes the world
/// at an exact point of the build instead of racing it.
pub fn hold_tool_until_released(scope: &Path, tool: &str) -> Held {
    let held = Held {
        started: scope.join(format!("{tool}.held")),
        release: scope.join(format!("{tool}.release")),
    };
    write_shim(scope, tool, |real| {
        format!(
            ": >'{}'\nn=0\nwhile [ ! -e '{}' ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done\nexec {real} \"$@\"\n",
            held.started.display(),
            held.release.display()
        )
    });
    held
}

impl Held {
    /// Waits until the build runs the tool (the shim holds it).
    pub fn wait(&self, build: &mut Build, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.started.exists() {
            if let Ok(Some(status)) = build.child.try_wait() {
                panic!(
                    "nixdisk ended ({status}) before the held tool ran:\n{}",
                    build.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the held tool did not run within {timeout:?}:\n{}",
                build.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "the held tool runs after {:.1} s",
            build.started.elapsed().as_secs_f64()
        );
    }

    /// Lets the real tool run.
    pub fn release(&self) {
        std::fs::write(&self.release, "").expect("the release file");
    }
}

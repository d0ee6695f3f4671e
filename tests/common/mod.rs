//! Helpers for whole-binary tests: run `iser-target serve` on a free port of
//! 127.0.0.1 and drive it with libiscsi's command-line initiators.
//!
//! Interface assumed of the binary:
//! - `iser-target serve --config FILE` serves until SIGINT/SIGTERM and exits 0
//!   after a clean shutdown;
//! - `iser-target check-config FILE` exits 0 if FILE is valid, non-zero with a
//!   message naming the bad field on stderr otherwise.

#![allow(dead_code)] // each test binary uses a different subset

pub mod block_io;
pub mod nvme_host;
pub mod raw_login;

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long the server may take to accept TCP connections after spawn.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the server may take to exit after SIGTERM/SIGINT.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the binary under test, built by cargo for integration tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_iser-target")
}

/// Root of the crate (where `scripts/` and `config/` live).
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// True if `tool` is an executable on PATH.
pub fn have_tool(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let p = dir.join(tool);
            p.is_file()
                && fs::metadata(&p).is_ok_and(|m| {
                    use std::os::unix::fs::PermissionsExt;
                    m.permissions().mode() & 0o111 != 0
                })
        })
    })
}

/// True when a missing tool must fail the test instead of skipping it: under CI (`CI=true`, as CI
/// services set it) or with `REQUIRE_TOOLS=1` (scripts/test.sh sets it).
pub fn tools_required() -> bool {
    let set = |name: &str, on: &[&str]| std::env::var(name).is_ok_and(|v| on.contains(&v.as_str()));
    set("CI", &["true", "1"]) || set("REQUIRE_TOOLS", &["1"])
}

/// What a missing tool means: a failure when [`tools_required`], otherwise a loud skip. Returns
/// whether the test may go on.
pub fn check_tool(module: &str, tool: &str) -> bool {
    if have_tool(tool) {
        return true;
    }
    // The test harness names each test's thread after the test.
    let current = thread::current();
    let test = current.name().unwrap_or(module);
    let advice = "scripts/test.sh installs every tool the tests use";
    assert!(
        !tools_required(),
        "{test}: `{tool}` is not installed and this run requires it (CI=true or \
         REQUIRE_TOOLS=1): {advice}"
    );
    eprintln!("SKIPPED {test}: `{tool}` is not installed ({advice})");
    false
}

/// Returns from the calling test if one of the external tools is missing, saying so loudly; under
/// CI or `REQUIRE_TOOLS=1` the test fails instead (see [`check_tool`]).
#[macro_export]
macro_rules! require_tools {
    ($($tool:expr),+ $(,)?) => {
        for tool in [$($tool),+] {
            if !$crate::common::check_tool(module_path!(), tool) {
                return;
            }
        }
    };
}

/// A scratch directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh, uniquely named directory.
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "iser-target-test-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A free TCP port on 127.0.0.1 (bound then released, so a small race remains).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Where a LUN's blocks live.
#[derive(Clone, Debug)]
pub enum Backing {
    /// `{ type: ram, size }`, size like "64M".
    Ram { size: String },
    /// `{ type: file, path, size, create: true }`; a relative path is put in
    /// the server's temp dir.
    File { path: PathBuf, size: String },
    /// A backing mapping written out as given (e.g. `{ type: rbd, ... }`), with the
    /// LUN's write cache set to `write_cache`.
    Yaml { backing: String, write_cache: bool },
}

/// One LUN of a target.
#[derive(Clone, Debug)]
pub struct LunSpec {
    pub id: u64,
    pub backing: Backing,
}

impl LunSpec {
    pub fn ram(id: u64, size: &str) -> LunSpec {
        LunSpec {
            id,
            backing: Backing::Ram { size: size.into() },
        }
    }

    pub fn file(id: u64, file_name: &str, size: &str) -> LunSpec {
        LunSpec {
            id,
            backing: Backing::File {
                path: file_name.into(),
                size: size.into(),
            },
        }
    }
}

/// One target of the generated config.
#[derive(Clone, Debug)]
pub struct TargetSpec {
    pub name: String,
    /// Empty means anyone may log in.
    pub allowed_initiators: Vec<String>,
    pub luns: Vec<LunSpec>,
    /// YAML lines added to the target's mapping as they are (e.g. an `auth:` key).
    pub extra_yaml: String,
}

impl TargetSpec {
    pub fn new(name: &str, luns: Vec<LunSpec>) -> TargetSpec {
        TargetSpec {
            name: name.into(),
            allowed_initiators: Vec::new(),
            luns,
            extra_yaml: String::new(),
        }
    }

    /// Adds `line` (a key of the target, without indentation) to the target's mapping.
    pub fn with_yaml(mut self, line: &str) -> TargetSpec {
        writeln!(self.extra_yaml, "    {line}").unwrap();
        self
    }

    pub fn allow(mut self, initiator: &str) -> TargetSpec {
        self.allowed_initiators.push(initiator.into());
        self
    }
}

/// Renders the YAML config for `targets` served on 127.0.0.1:`port`.
pub fn render_config(port: u16, targets: &[TargetSpec], dir: &Path) -> String {
    render_config_with_limits(port, targets, dir, "")
}

/// Like [`render_config`], with `limits` (YAML flow-mapping entries such as
/// `"login_timeout_secs: 2, max_connections_per_source: 4"`) added to the limits section.
pub fn render_config_with_limits(
    port: u16,
    targets: &[TargetSpec],
    dir: &Path,
    limits: &str,
) -> String {
    let mut y = String::new();
    writeln!(y, "portals:").unwrap();
    writeln!(y, "  - address: 127.0.0.1").unwrap();
    writeln!(y, "    port: {port}").unwrap();
    writeln!(y, "    transport: tcp").unwrap();
    writeln!(y, "targets:").unwrap();
    for t in targets {
        writeln!(y, "  - name: {}", t.name).unwrap();
        if t.allowed_initiators.is_empty() {
            writeln!(y, "    allowed_initiators: []").unwrap();
        } else {
            writeln!(y, "    allowed_initiators:").unwrap();
            for i in &t.allowed_initiators {
                writeln!(y, "      - {i}").unwrap();
            }
        }
        y.push_str(&t.extra_yaml);
        writeln!(y, "    luns:").unwrap();
        for l in &t.luns {
            writeln!(y, "      - id: {}", l.id).unwrap();
            match &l.backing {
                Backing::Ram { size } => {
                    writeln!(y, "        backing: {{ type: ram, size: {size} }}").unwrap()
                }
                Backing::File { path, size } => {
                    let path = dir.join(path);
                    writeln!(
                        y,
                        "        backing: {{ type: file, path: {}, size: {size}, create: true }}",
                        path.display()
                    )
                    .unwrap();
                    writeln!(y, "        write_cache: false").unwrap();
                }
                Backing::Yaml {
                    backing,
                    write_cache,
                } => {
                    writeln!(y, "        backing: {backing}").unwrap();
                    writeln!(y, "        write_cache: {write_cache}").unwrap();
                }
            }
        }
    }
    let sep = if limits.is_empty() { "" } else { ", " };
    writeln!(y, "limits: {{ queue_depth: 64{sep}{limits} }}").unwrap();
    y
}

/// How a server's start-up ended, short of a panic.
enum Startup {
    Listening,
    /// Another process bound the port between [`free_port`] and the server's bind.
    PortTaken,
}

/// Fresh ports tried before a start-up gives up.
const PORT_ATTEMPTS: u32 = 5;

/// A running `iser-target serve`. Dropping it sends SIGTERM and fails the
/// test unless the server exits 0 within [`SHUTDOWN_TIMEOUT`].
pub struct Server {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    config_path: PathBuf,
    log_path: PathBuf,
}

impl Server {
    /// Serves `targets` on a free port of 127.0.0.1 and waits until it accepts
    /// TCP connections.
    pub fn start(targets: &[TargetSpec]) -> Server {
        Server::start_configured(targets, "", "")
    }

    /// Like [`Server::start`], with `top_level_yaml` (whole lines, e.g. `discovery_auth: ...`)
    /// appended to the configuration.
    pub fn start_with(targets: &[TargetSpec], top_level_yaml: &str) -> Server {
        Server::start_configured(targets, "", top_level_yaml)
    }

    /// Like [`Server::start`], with extra `limits` entries (see [`render_config_with_limits`]).
    pub fn start_with_limits(targets: &[TargetSpec], limits: &str) -> Server {
        Server::start_configured(targets, limits, "")
    }

    /// Like [`Server::start`], with more portals: `portals` are YAML list entries (whole lines
    /// such as `"  - { address: 127.0.0.1, port: 4420, transport: nvme-tcp }\n"`) added after
    /// the iSCSI/TCP portal the server is waited on.
    pub fn start_with_portals(targets: &[TargetSpec], portals: &str) -> Server {
        Server::start_full(targets, "", "", portals)
    }

    /// Like [`Server::start_with_portals`], with `top_level_yaml` appended as well.
    pub fn start_with_portals_and(
        targets: &[TargetSpec],
        portals: &str,
        top_level_yaml: &str,
    ) -> Server {
        Server::start_full(targets, "", top_level_yaml, portals)
    }

    /// Serves `targets` with extra `limits` entries and `top_level_yaml` appended.
    fn start_configured(targets: &[TargetSpec], limits: &str, top_level_yaml: &str) -> Server {
        Server::start_full(targets, limits, top_level_yaml, "")
    }

    /// Serves `targets` with everything the other constructors set: extra `limits` entries,
    /// `top_level_yaml` and extra `portals` (see [`Server::start_with_portals`]).
    pub fn start_full(
        targets: &[TargetSpec],
        limits: &str,
        top_level_yaml: &str,
        portals: &str,
    ) -> Server {
        Server::start_in_environment(targets, limits, top_level_yaml, portals, &[])
    }

    /// Like [`Server::start`], with environment variables `env` set for the server process.
    pub fn start_with_env(targets: &[TargetSpec], env: &[(&str, &OsStr)]) -> Server {
        Server::start_in_environment(targets, "", "", "", env)
    }

    fn start_in_environment(
        targets: &[TargetSpec],
        limits: &str,
        top_level_yaml: &str,
        portals: &str,
        env: &[(&str, &OsStr)],
    ) -> Server {
        let mut attempt = 1;
        loop {
            let dir = TempDir::new("serve");
            let port = free_port();
            let config = render_config_with_limits(port, targets, dir.path(), limits).replacen(
                "targets:\n",
                &format!("{portals}targets:\n"),
                1,
            ) + top_level_yaml;
            let config_path = dir.path().join("config.yaml");
            fs::write(&config_path, &config).expect("write config");
            let log_path = dir.path().join("server.log");
            let log = fs::File::create(&log_path).expect("create server log");
            // The harness waits for the server's "listening on" line, logged at info.
            let filter = match std::env::var("RUST_LOG") {
                Ok(user) => format!("{user},iser_target::server=info"),
                Err(_) => "info".into(),
            };
            let child = Command::new(binary())
                .arg("serve")
                .arg("--config")
                .arg(&config_path)
                .env("RUST_LOG", filter)
                // Only a test's own socket: never the manager that may run the tests.
                .env_remove("NOTIFY_SOCKET")
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log)
                .spawn()
                .expect("spawn iser-target");
            let mut server = Server {
                child: Some(child),
                port,
                dir,
                config_path,
                log_path,
            };
            match server.wait_until_listening(&config) {
                Startup::Listening => return server,
                Startup::PortTaken if attempt < PORT_ATTEMPTS => attempt += 1,
                Startup::PortTaken => panic!(
                    "{PORT_ATTEMPTS} free ports were taken before the server could bind them\n\
                     --- server output ---\n{}",
                    server.log()
                ),
            }
        }
    }

    /// Waits until this server has logged that it listens on its port, which it does right
    /// after binding it, and then that it is ready: every listener, control and metrics thread
    /// started (tests count its threads). Not a connect probe: a probe that connects proves
    /// only that something listens there, and [`free_port`] leaves a window in which another
    /// process can take the port. [`Startup::PortTaken`] when the server exited because the
    /// port was in use by then.
    fn wait_until_listening(&mut self, config: &str) -> Startup {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let listening = format!("listening on {addr} (tcp)");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let log = self.log();
            if log.contains(&listening) && log.contains(iser_target::server::READY_LINE) {
                return Startup::Listening;
            }
            if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
                self.child = None;
                let log = self.log();
                if log.contains(&format!("portal {addr}: Address already in use")) {
                    return Startup::PortTaken;
                }
                panic!(
                    "iser-target exited ({status}) before listening on {addr}\n\
                     --- config ---\n{config}--- server output ---\n{log}"
                );
            }
            if Instant::now() > deadline {
                let child = self.child.take().unwrap();
                let _ = kill_hard(child);
                panic!(
                    "iser-target not listening on {addr} after {STARTUP_TIMEOUT:?}\n\
                     --- config ---\n{config}--- server output ---\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("server already stopped")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Process id of the running server (to read /proc/PID/status).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server already stopped").id()
    }

    /// `iscsi://127.0.0.1:PORT` (the discovery URL).
    pub fn portal_url(&self) -> String {
        format!("iscsi://127.0.0.1:{}", self.port)
    }

    /// `iscsi://127.0.0.1:PORT/TARGET/LUN`.
    pub fn lun_url(&self, target: &str, lun: u64) -> String {
        format!("iscsi://127.0.0.1:{}/{target}/{lun}", self.port)
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The server's temp dir (holds config, log and file LUNs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the server printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Writes `config` over the server's configuration file and sends SIGHUP, then waits until
    /// the server has logged its answer (a line with `SIGHUP:`); returns those lines.
    pub fn reload(&mut self, config: &str) -> String {
        self.assert_alive();
        let seen = self.log().matches("SIGHUP:").count();
        fs::write(&self.config_path, config).expect("rewrite config");
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGHUP).expect("SIGHUP");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let log = self.log();
            if log.matches("SIGHUP:").count() > seen {
                // The lines of one reload are written together; give the last a moment.
                thread::sleep(Duration::from_millis(50));
                let log = self.log();
                let lines: Vec<&str> = log.lines().filter(|l| l.contains("SIGHUP:")).collect();
                return lines[seen..].join("\n");
            }
            assert!(
                Instant::now() < deadline,
                "no answer to SIGHUP\n--- server output ---\n{log}"
            );
            self.assert_alive();
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics (with the server's output) if the server has exited: a crash.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
            self.child = None;
            panic!(
                "iser-target died ({status}) while serving\n--- server output ---\n{}",
                self.log()
            );
        }
    }

    /// Sends `signal` and returns the exit status; panics if the server does
    /// not exit within [`SHUTDOWN_TIMEOUT`] (a hang).
    pub fn stop_with(&mut self, signal: Signal) -> ExitStatus {
        self.assert_alive();
        let mut child = self.child.take().expect("server already stopped");
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, signal).expect("signal iser-target");
        match wait_timeout(&mut child, SHUTDOWN_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = kill_hard(child);
                panic!(
                    "iser-target still running {SHUTDOWN_TIMEOUT:?} after {signal}\n\
                     --- server output ---\n{}",
                    self.log()
                );
            }
        }
    }

    /// SIGTERM, then asserts a clean exit (status 0).
    pub fn stop(mut self) {
        self.stop_and_check(Signal::SIGTERM);
    }

    fn stop_and_check(&mut self, signal: Signal) {
        let status = self.stop_with(signal);
        assert!(
            status.success(),
            "iser-target exited with {status} after {signal}, want 0\n--- server output ---\n{}",
            self.log()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if thread::panicking() {
            // The test already failed; just don't leak the process.
            let _ = kill_hard(self.child.take().unwrap());
            return;
        }
        self.stop_and_check(Signal::SIGTERM);
    }
}

fn kill_hard(mut child: Child) -> std::io::Result<ExitStatus> {
    let _ = child.kill();
    child.wait()
}

/// Waits for `child` up to `timeout`; None if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to completion with captured output; panics if it takes longer
/// than `timeout` (the target under test hung).
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let Some(status) = wait_timeout(&mut child, timeout) else {
        let _ = kill_hard(child);
        panic!("{shown} did not finish within {timeout:?}: target hung?");
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Runs `cmd` and returns its stdout, panicking with both streams unless it
/// exits 0 within `timeout`.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd, timeout);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{shown} failed ({})\n--- stdout ---\n{stdout}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Parses `key=value` lines (as in scripts/conformance.sh's summary.txt);
/// repeated keys keep every value in order.
pub fn parse_summary(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A finished run of scripts/conformance.sh: its summary.txt and what the script printed.
pub struct ConformanceRun {
    /// The whole summary.txt (`key=value` lines).
    pub summary: String,
    /// The script's stdout, for failure messages.
    pub stdout: String,
    values: Vec<(String, String)>,
}

impl ConformanceRun {
    /// Runs scripts/conformance.sh with `args` (e.g. `--tests`, `--timeout`) against `url`,
    /// writing into `out_dir`, killed after `limit`. Panics when no summary was written.
    pub fn run(args: &[&str], url: &str, out_dir: &Path, limit: Duration) -> ConformanceRun {
        let out = run(
            Command::new(manifest_dir().join("scripts/conformance.sh"))
                .args(args)
                .arg(url)
                .arg(out_dir),
            limit,
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let summary = fs::read_to_string(out_dir.join("summary.txt"))
            .unwrap_or_else(|e| panic!("no summary ({e}):\n{stdout}"));
        let values = parse_summary(&summary);
        ConformanceRun {
            summary,
            stdout,
            values,
        }
    }

    /// The value of `key` in the summary ("" when absent).
    pub fn get(&self, key: &str) -> &str {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }

    /// A count from the summary (`passed`, `failed`, …).
    pub fn count(&self, key: &str) -> u64 {
        let value = self.get(key);
        value
            .parse()
            .unwrap_or_else(|_| panic!("{key}={value:?} is not a count:\n{}", self.summary))
    }

    /// The names of the failing tests.
    pub fn failing(&self) -> Vec<&str> {
        self.summary
            .lines()
            .filter_map(|l| l.strip_prefix("failing="))
            .collect()
    }
}

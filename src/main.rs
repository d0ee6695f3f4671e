//! `iser-target`: serve block devices, files and RAM disks over iSCSI.

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use iser_target::config::{Config, Portal, Transport, DEFAULT_NVME_TCP_PORT, DEFAULT_PORT};
use iser_target::server::Server;
use iser_target::service_manager::{ServiceManager, Watchdog};
use iser_target::status::control_socket;

#[derive(Parser)]
#[command(
    version,
    about = "An iSCSI target for block devices, files and RAM disks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured targets until SIGINT or SIGTERM. SIGHUP re-reads the configuration
    /// file and applies what can change live (docs/configuration.md). Under systemd
    /// (`Type=notify`, $NOTIFY_SOCKET) it reports when every portal listens.
    Serve {
        /// YAML configuration; without it, one 1 GiB RAM LUN is served on TCP 0.0.0.0:3260 (and
        /// iSER 0.0.0.0:3260 when an RDMA device has an active port).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// List the RDMA devices iSER portals can use: ports, state, MTU and GIDs.
    Devices,
    /// Show what a running target serves and who is connected: portals, LUNs with their I/O
    /// counts and reservations, iSCSI sessions and NVMe/TCP controllers. It asks the control
    /// socket in the target's state directory.
    Status {
        /// The running target's configuration (for its `state_dir`); without it, the built-in
        /// default's state directory (/var/lib/iser-target, else ~/.local/state/iser-target).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate a configuration file without serving it.
    CheckConfig {
        /// The YAML configuration to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                let luns: usize = config.targets.iter().map(|t| t.luns.len()).sum();
                println!(
                    "{}: valid ({} portal(s), {} target(s), {} LUN(s))",
                    file.display(),
                    config.portals.len(),
                    config.targets.len(),
                    luns
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => serve(config),
        Command::Devices => devices(),
        Command::Status { config, json } => status(config.as_deref(), json),
    }
}

/// `iser-target status`.
fn status(config: Option<&Path>, json: bool) -> ExitCode {
    let socket = match config {
        Some(file) => match Config::load(file) {
            Ok(Config {
                state_dir: Some(dir),
                ..
            }) => control_socket(&dir),
            Ok(_) => {
                eprintln!(
                    "{}: no state_dir, so the target has no control socket to ask (add \
                     `state_dir:` and restart it)",
                    file.display()
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        // The first default state directory with a socket in it, else the system one (for the
        // error message).
        None => default_state_dirs()
            .iter()
            .map(|dir| control_socket(dir))
            .find(|socket| socket.exists())
            .unwrap_or_else(|| control_socket(Path::new(SYSTEM_STATE_DIR))),
    };
    match iser_target::status::query(&socket) {
        Ok((raw, report)) => {
            if json {
                println!("{}", raw.trim_end());
            } else {
                print!("{}", report.render());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `iser-target devices`.
fn devices() -> ExitCode {
    let devices = match rdma_ffi::list_devices() {
        Ok(d) => d,
        Err(e) => {
            println!("no RDMA devices ({e})");
            return ExitCode::SUCCESS;
        }
    };
    if devices.is_empty() {
        println!("no RDMA devices");
        println!("hint: {}", iser_target::server::iser::SOFTROCE_HINT);
        return ExitCode::SUCCESS;
    }
    for d in &devices {
        println!("{d}");
    }
    ExitCode::SUCCESS
}

fn serve(path: Option<PathBuf>) -> ExitCode {
    let mut config = match &path {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => default_config(),
    };
    // Block the stop and reload signals before any thread starts so that every thread inherits
    // the mask and only the signalfd below sees them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGHUP);
    let signal_fd = match signals
        .thread_block()
        .and_then(|()| SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC))
    {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("cannot block SIGINT/SIGTERM/SIGHUP: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::start(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if path.is_none() {
        print_connect_help(&config, &server);
    }
    let manager = ServiceManager::from_environment();
    if let Some(manager) = &manager {
        manager.ready(&serving(&config));
    }
    let mut watchdog = manager
        .as_ref()
        .and_then(|m| Watchdog::start(m, Instant::now(), server.heartbeat()));
    let signal = loop {
        let timeout = watchdog.as_ref().map(|w| w.time_left(Instant::now()));
        match next_signal(&signal_fd, timeout) {
            Ok(None) => {
                if let Some(watchdog) = &mut watchdog {
                    watchdog.tick(Instant::now(), || server.heartbeat());
                }
            }
            Ok(Some(Signal::SIGHUP)) => {
                if let Some(manager) = &manager {
                    manager.reloading();
                }
                let outcome = reload(&server, path.as_deref(), &mut config);
                if let Some(manager) = &manager {
                    manager.ready(&format!("{}; last SIGHUP: {outcome}", serving(&config)));
                }
            }
            Ok(Some(signal)) => break signal,
            Err(e) => {
                eprintln!("waiting for signals: {e}");
                break Signal::SIGTERM;
            }
        }
    };
    log::info!("{signal:?} received: finishing in-flight commands");
    if let Some(manager) = &manager {
        manager.stopping();
    }
    match server.shutdown() {
        Ok(()) => {
            log::info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error during shutdown: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The next stop or reload signal, or `None` once `timeout` has passed first.
fn next_signal(fd: &SignalFd, timeout: Option<Duration>) -> nix::Result<Option<Signal>> {
    let timeout = match timeout {
        // Rounded up: a wait of 0 ms before the deadline would spin.
        Some(t) => {
            PollTimeout::try_from(t + Duration::from_micros(999)).unwrap_or(PollTimeout::MAX)
        }
        None => PollTimeout::NONE,
    };
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(0) | Err(Errno::EINTR) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(e),
    }
    match fd.read_signal()? {
        Some(info) => Signal::try_from(info.ssi_signo as i32).map(Some),
        None => Ok(None),
    }
}

/// What the service manager shows while the target serves `config`.
fn serving(config: &Config) -> String {
    let luns: usize = config.targets.iter().map(|t| t.luns.len()).sum();
    format!(
        "serving {} target(s), {luns} LUN(s) on {} portal(s)",
        config.targets.len(),
        config.portals.len()
    )
}

/// SIGHUP: re-reads the configuration file, applies a changed `alua_state` and access control
/// (who may log in or connect, and with which secrets), and grows file and block LUNs (to a
/// file LUN's new `size`, or to what a file or device now holds); any other difference is
/// logged as needing a restart and left unapplied (and reported again on the next reload,
/// since `running` keeps the values in force). A file that does not parse changes nothing.
/// Returns what happened, in a few words, for the service manager's status line.
fn reload(server: &Server, path: Option<&Path>, running: &mut Config) -> String {
    let Some(path) = path else {
        log::warn!("SIGHUP: serving the built-in configuration (no --config): nothing to re-read");
        return "no configuration file to re-read".into();
    };
    let file = path.display();
    let new = match Config::load(path) {
        Ok(new) => new,
        Err(e) => {
            log::error!("SIGHUP: {file} rejected, the running configuration stays: {e}");
            return format!("{file} rejected (see the log)");
        }
    };
    let reload = running.reload_to(&new);
    let mut applied = Vec::new();
    for key in &reload.needs_restart {
        log::warn!("SIGHUP: `{key}` changed in {file}: that takes a restart; not applied");
    }
    if reload.access_changed {
        server.set_access(&new);
        running.adopt_access(&new);
        log::info!("SIGHUP: the access control of {file} applied to logins and connects");
        applied.push("access control");
    }
    let grown = server.grow_luns(&new);
    if reload.file_sizes_changed {
        if grown {
            running.targets = new.targets;
            log::info!("SIGHUP: the file LUN sizes of {file} applied");
            applied.push("file LUN sizes");
        } else {
            log::error!("SIGHUP: a LUN of {file} could not take its size (see above)");
        }
    }
    if let Some(state) = reload.alua_state {
        let from = running.alua_state;
        server.set_alua_state(state);
        running.alua_state = state;
        log::info!("SIGHUP: ALUA state changed from {from} to {state}");
        applied.push("ALUA state");
    }
    let nothing_else = reload.needs_restart.is_empty()
        && !reload.file_sizes_changed
        && !reload.access_changed
        && reload.alua_state.is_none();
    if nothing_else {
        log::info!("SIGHUP: {file} re-read; nothing else changed");
    }
    let mut outcome = Vec::new();
    if !applied.is_empty() {
        outcome.push(format!("applied {}", applied.join(", ")));
    }
    if !reload.needs_restart.is_empty() {
        let keys: Vec<String> = reload
            .needs_restart
            .iter()
            .map(|k| format!("`{k}`"))
            .collect();
        outcome.push(format!("{} wait for a restart", keys.join(", ")));
    }
    if outcome.is_empty() {
        "nothing changed".into()
    } else {
        outcome.join("; ")
    }
}

/// The embedded default, plus an iSER portal on 0.0.0.0:3260 when RDMA is usable here.
fn default_config() -> Config {
    let mut config = Config::default_ram();
    if iser_target::server::iser::rdma_available() {
        log::info!("an RDMA device has an active port: serving iSER on 0.0.0.0:3260 too");
        config.portals.push(Portal {
            address: IpAddr::from([0, 0, 0, 0]),
            port: DEFAULT_PORT,
            transport: Transport::Iser,
        });
    } else {
        log::info!("no active RDMA port on this host: no iSER portal");
    }
    if iser_target::server::nvme_tcp_available() {
        config.portals.push(Portal {
            address: IpAddr::from([0, 0, 0, 0]),
            port: DEFAULT_NVME_TCP_PORT,
            transport: Transport::NvmeTcp,
        });
    } else {
        log::warn!("io_uring is unavailable here: no NVMe/TCP portal (it needs io_uring)");
    }
    let mut dirs = default_state_dirs().into_iter();
    // The system directory only where this process may create it (root), else the user's.
    config.state_dir = dirs
        .next()
        .filter(|system| std::fs::create_dir_all(system).is_ok())
        .or_else(|| dirs.next());
    if let Some(dir) = &config.state_dir {
        log::info!(
            "state (persistent reservations set with APTPL) kept in {}",
            dir.display()
        );
    }
    config
}

/// The built-in default's state directory when run as root.
const SYSTEM_STATE_DIR: &str = "/var/lib/iser-target";

/// Where the built-in default may keep its state, in order of preference: /var/lib/iser-target
/// (where this process may create it: root), else $XDG_STATE_HOME/iser-target or
/// ~/.local/state/iser-target.
fn default_state_dirs() -> Vec<PathBuf> {
    let user_state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")));
    std::iter::once(PathBuf::from(SYSTEM_STATE_DIR))
        .chain(user_state.map(|d| d.join("iser-target")))
        .collect()
}

/// With the embedded default, tell the user what is served and how to reach it.
fn print_connect_help(config: &Config, server: &Server) {
    let target = &config.targets[0];
    println!("Serving {} (no --config given: one RAM LUN).", target.name);
    for (addr, configured) in server.local_addrs().iter().zip(&config.portals) {
        let host = if addr.ip().is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            addr.ip()
        };
        let portal = match host {
            IpAddr::V6(v6) => format!("[{v6}]:{}", addr.port()),
            IpAddr::V4(v4) => format!("{v4}:{}", addr.port()),
        };
        let iface = match configured.transport {
            Transport::Tcp => "",
            Transport::Iser => " -I iser",
            transport @ (Transport::NvmeTcp | Transport::NvmeTcpDiscovery) => {
                let ip = match host {
                    IpAddr::V6(v6) => v6.to_string(),
                    IpAddr::V4(v4) => v4.to_string(),
                };
                let port = addr.port();
                println!("Connect with nvme-cli (use this host's address from other machines):");
                println!("  nvme discover -t tcp -a {ip} -s {port}");
                if transport == Transport::NvmeTcp {
                    println!("  nvme connect -t tcp -a {ip} -s {port} -n {}", target.nqn);
                }
                continue;
            }
        };
        println!("Connect with open-iscsi (use this host's address from other machines):");
        println!("  iscsiadm -m discovery -t sendtargets -p {portal}{iface}");
        println!(
            "  iscsiadm -m node -T {} -p {portal}{iface} --login",
            target.name
        );
    }
    if config.state_dir.is_some() {
        println!("See sessions and I/O counts with: iser-target status");
    }
    println!("Stop with Ctrl-C (SIGINT) or SIGTERM.");
}

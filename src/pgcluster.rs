//! A private, throwaway PostgreSQL cluster started from the installed server
//! binaries (`initdb`, `pg_ctl`). Used by `orgkeeper dev`, the tests and the
//! benchmarks when no `DATABASE_URL` is given.
//!
//! PostgreSQL refuses to run as root, so when we are root the binaries run
//! as the `postgres` user through `runuser`, in a directory that user owns.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How much durability the cluster trades for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fsync = off`: for tests and the dev environment, whose data is thrown away.
    Throwaway,
    /// PostgreSQL's defaults: for benchmarks whose figures should mean something.
    Default,
}

/// A running private cluster; stopped and deleted on [`PgCluster::stop`] or drop.
#[derive(Debug)]
pub struct PgCluster {
    dir: PathBuf,
    port: u16,
    bindir: PathBuf,
    run_as: Option<String>,
    durability: Durability,
    stopped: bool,
}

impl PgCluster {
    /// Initialises and starts a cluster in a fresh temporary directory on a free port.
    pub fn start(durability: Durability) -> anyhow::Result<Self> {
        let bindir = find_bindir()?;
        let run_as = if is_root() {
            Some("postgres".to_string())
        } else {
            None
        };
        let dir =
            std::env::temp_dir().join(format!("orgkeeper-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut cluster = PgCluster {
            dir,
            port: free_port()?,
            bindir,
            run_as,
            durability,
            stopped: false,
        };
        if let Some(user) = &cluster.run_as {
            chown_to(&cluster.dir, user)?;
        }
        cluster
            .init_and_start()
            .inspect_err(|_| cluster.remove_dir())?;
        Ok(cluster)
    }

    fn init_and_start(&mut self) -> anyhow::Result<()> {
        let data = self.data_dir();
        self.run(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        self.start_server()
    }

    /// Starts the server on the initialised data directory.
    fn start_server(&self) -> anyhow::Result<()> {
        let data = self.data_dir();
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=400 -c shared_buffers=256MB",
            self.port,
            path_str(&self.dir)?
        );
        if self.durability == Durability::Throwaway {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let log = self.dir.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data)?,
                "-l",
                path_str(&log)?,
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .with_context(|| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            format!("the private PostgreSQL cluster did not start; its log says:\n{tail}")
        })
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The directory holding the cluster (removed when it stops).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` as the `postgres` superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Restarts the server in place (same port and data), as an outage would.
    pub fn restart(&self) -> anyhow::Result<()> {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-D", path_str(&data)?, "-m", "immediate", "-w", "restart"],
        )
    }

    /// Stops the server now; the data stays until [`PgCluster::stop`] or drop.
    pub fn pause(&self) -> anyhow::Result<()> {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-D", path_str(&data)?, "-m", "immediate", "-w", "stop"],
        )
    }

    /// Starts a paused server again (same port and settings).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.start_server()
    }

    /// Stops the server and deletes its directory.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    /// Starts a watchdog process that stops the cluster and deletes its
    /// directory once process `pid` has exited, however it exits (used by the
    /// test harness, whose statics are never dropped).
    pub fn stop_when_process_exits(&self, pid: u32) -> anyhow::Result<()> {
        // Paths travel as positional arguments ("$1"…), never pasted into the script.
        let script = r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done
if [ -n "$5" ]; then runuser -u "$5" -- "$2" -D "$3" -m immediate stop; else "$2" -D "$3" -m immediate stop; fi >/dev/null 2>&1
rm -rf -- "$4""#;
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("orgkeeper-watchdog")
            .arg(pid.to_string())
            .arg(self.bindir.join("pg_ctl"))
            .arg(self.data_dir())
            .arg(&self.dir)
            .arg(self.run_as.as_deref().unwrap_or(""))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the cluster watchdog")?;
        Ok(())
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let data = self.data_dir();
        let result = self.run(
            "pg_ctl",
            &["-D", path_str(&data)?, "-m", "fast", "-w", "stop"],
        );
        self.remove_dir();
        result
    }

    fn remove_dir(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let binary = self.bindir.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        // Output goes to a file, not a pipe: the server that pg_ctl starts
        // inherits its descriptors and would keep a pipe open forever.
        let transcript = std::env::temp_dir().join(format!(
            "orgkeeper-{program}-{}.out",
            uuid::Uuid::new_v4().simple()
        ));
        let file = std::fs::File::create(&transcript).context("cannot create a transcript file")?;
        let status = command
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .with_context(|| format!("cannot run {}", binary.display()));
        let output = std::fs::read_to_string(&transcript).unwrap_or_default();
        let _ = std::fs::remove_file(&transcript);
        let status = status?;
        if !status.success() {
            bail!("{program} failed ({status}): {output}");
        }
        Ok(())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("path {} is not UTF-8", path.display()))
}

/// The path of one of the PostgreSQL client or server programs (`pg_dump`,
/// `psql`, …) of the installation the clusters are started from, so that
/// its version matches theirs.
pub fn program(name: &str) -> anyhow::Result<PathBuf> {
    let path = find_bindir()?.join(name);
    if !path.is_file() {
        bail!("{} is not installed next to initdb", path.display());
    }
    Ok(path)
}

/// Finds the directory holding `initdb` and `pg_ctl`: `PG_BINDIR`, then
/// `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`, then `PATH`.
fn find_bindir() -> anyhow::Result<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PG_BINDIR").map(PathBuf::from) {
        if has_tools(&dir) {
            return Ok(dir);
        }
        bail!("PG_BINDIR={} holds no initdb/pg_ctl", dir.display());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_tools(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, dir)| has_tools(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if has_tools(&dir) {
            return Ok(dir);
        }
    }
    bail!(
        "no PostgreSQL server binaries (initdb, pg_ctl) found; install them \
         (Debian: apt-get install postgresql) or set PG_BINDIR, or set DATABASE_URL to use a running server"
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn chown_to(dir: &Path, user: &str) -> anyhow::Result<()> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id").args([flag, user]).output()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| {
                format!("user {user} does not exist; PostgreSQL cannot run as root without it")
            })
    };
    std::os::unix::fs::chown(dir, Some(id("-u")?), Some(id("-g")?))
        .with_context(|| format!("cannot hand {} to user {user}", dir.display()))
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

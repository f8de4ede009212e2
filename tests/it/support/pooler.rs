//! A real PgBouncer in front of a test database, as most deployments reach
//! PostgreSQL: one process per test, on a free port, with its own
//! configuration in a temporary directory, stopped when the test ends.
//!
//! Three pools, all on the test's database:
//! * `app` — transaction pooling, 4 server connections shared by every client;
//! * `single` — transaction pooling, one server connection (so what one
//!   client leaves on it, the next one finds: the leak stories);
//! * `daemon` — session pooling, for the daemon's pool (see the README).
//!
//! The binary is `ORGKEEPER_PGBOUNCER`, else `/usr/sbin/pgbouncer`, else
//! `pgbouncer` on PATH. Without it the stories fail saying how to install it
//! (`.ci/run` does), unless `ORGKEEPER_TEST_SKIP_PGBOUNCER=1` says to skip them.

use super::TestDb;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Pooler {
    port: u16,
    dir: PathBuf,
    pid: Option<u32>,
    user: String,
}

fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ORGKEEPER_PGBOUNCER").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "ORGKEEPER_PGBOUNCER={} is not a file",
            path.display()
        );
        return Some(path);
    }
    let debian = Path::new("/usr/sbin/pgbouncer");
    if debian.is_file() {
        return Some(debian.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("pgbouncer"))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Quotes a value for pgbouncer's libpq-style connection string.
fn conn_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl Pooler {
    /// Starts PgBouncer in front of `db`'s database. `None` only when
    /// PgBouncer is missing and `ORGKEEPER_TEST_SKIP_PGBOUNCER=1`.
    pub fn start(db: &TestDb) -> Option<Pooler> {
        let Some(binary) = binary() else {
            if std::env::var("ORGKEEPER_TEST_SKIP_PGBOUNCER").as_deref() == Ok("1") {
                eprintln!(
                    "SKIPPED: pgbouncer is not installed and ORGKEEPER_TEST_SKIP_PGBOUNCER=1"
                );
                return None;
            }
            panic!(
                "pgbouncer is not installed: the PgBouncer stories need it \
                 (Debian: apt-get install -y --no-install-recommends pgbouncer; .ci/run installs it), \
                 or set ORGKEEPER_PGBOUNCER=/path/to/pgbouncer; \
                 ORGKEEPER_TEST_SKIP_PGBOUNCER=1 skips them instead"
            );
        };
        let url = reqwest::Url::parse(&db.url).expect("test database URL");
        let host = url.host_str().unwrap_or("127.0.0.1").to_string();
        let server_port = url.port().unwrap_or(5432);
        let user = if url.username().is_empty() {
            "postgres".to_string()
        } else {
            url.username().to_string()
        };
        let dbname = url.path().trim_start_matches('/').to_string();
        let mut target = format!(
            "host={} port={server_port} dbname={} user={}",
            conn_value(&host),
            conn_value(&dbname),
            conn_value(&user)
        );
        if let Some(password) = url.password() {
            target.push_str(&format!(" password={}", conn_value(password)));
        }

        let dir = std::env::temp_dir().join(format!(
            "orgkeeper-pgbouncer-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("pgbouncer directory");
        let port = orgkeeper::pgcluster::free_port().expect("a free port");
        let config = format!(
            "[databases]\n\
             app = {target}\n\
             single = {target} pool_size=1\n\
             daemon = {target} pool_mode=session pool_size=40\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/userlist.txt\n\
             pool_mode = transaction\n\
             default_pool_size = 4\n\
             max_client_conn = 500\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("pgbouncer.ini"), config).expect("pgbouncer.ini");
        std::fs::write(dir.join("userlist.txt"), format!("\"{user}\" \"\"\n"))
            .expect("userlist.txt");

        // PgBouncer refuses to run as root: run it as `postgres`, like initdb.
        let mut command = if is_root() {
            for entry in ["", "pgbouncer.ini", "userlist.txt"] {
                let status = Command::new("chown")
                    .args(["postgres:postgres", &dir.join(entry).display().to_string()])
                    .status()
                    .expect("chown");
                assert!(
                    status.success(),
                    "cannot hand {} to postgres",
                    dir.display()
                );
            }
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&binary);
            c
        } else {
            Command::new(&binary)
        };
        let output = command
            .arg("-d")
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let log_file = dir.join("pgbouncer.log");
        let log = || std::fs::read_to_string(&log_file).unwrap_or_default();
        assert!(
            output.status.success(),
            "pgbouncer did not start ({}): {}{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            log()
        );
        let mut pooler = Pooler {
            port,
            dir,
            pid: None,
            user,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let pid = std::fs::read_to_string(pooler.dir.join("pgbouncer.pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok());
            if pid.is_some() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                pooler.pid = pid;
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pgbouncer did not listen on port {port} within 10 s: {}",
                log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        pooler.stop_when_process_exits();
        Some(pooler)
    }

    /// A watchdog that stops PgBouncer once this test process is gone, however it ends.
    fn stop_when_process_exits(&self) {
        let script = r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done
kill -TERM "$2" 2>/dev/null; rm -rf -- "$3""#;
        let _ = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("orgkeeper-pgbouncer-watchdog")
            .arg(std::process::id().to_string())
            .arg(self.pid.map(|p| p.to_string()).unwrap_or_default())
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    fn url_of(&self, database: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{database}",
            self.user, self.port
        )
    }

    /// Transaction pooling, a few server connections shared by all clients.
    pub fn url(&self) -> String {
        self.url_of("app")
    }

    /// Transaction pooling with one server connection.
    pub fn single_url(&self) -> String {
        self.url_of("single")
    }

    /// Session pooling (the daemon's pool).
    pub fn session_url(&self) -> String {
        self.url_of("daemon")
    }

    /// PgBouncer's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            // Wait briefly so the port and the server connections go with it.
            for _ in 0..100 {
                let alive = Command::new("kill")
                    .args(["-0", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if !alive {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! Throwaway TLS servers for the TLS tests: a CA and a server certificate made with `openssl`, a
//! RabbitMQ node of its own whose only listener is TLS, and a Postgres cluster of its own that
//! accepts only TLS connections, each on free loopback ports in a temporary directory. The
//! machine's shared broker and database are never touched. Dropping a server stops it and removes
//! its directory, also when the test fails.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let path = std::env::temp_dir().join(format!("ingest-tls-{what}-{}", &id[..12]));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA, a server certificate it signs for `127.0.0.1` and `localhost`, and a second CA that
/// signs nothing here.
pub struct Pki {
    _dir: TempDir,
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Self {
        let dir = TempDir::new("pki");
        let at = |name: &str| dir.path().join(name);
        let (ca, ca_key, other_ca) = (at("ca.pem"), at("ca.key"), at("other-ca.pem"));
        let (cert, key, csr, ext) = (
            at("server.pem"),
            at("server.key"),
            at("server.csr"),
            at("server.ext"),
        );
        for (out, out_key, subject) in [
            (&ca, &ca_key, "/CN=customer-ingest test CA"),
            (&other_ca, &at("other-ca.key"), "/CN=an unrelated CA"),
        ] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                subject,
                "-keyout",
                path(out_key),
                "-out",
                path(out),
            ]);
        }
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            path(&key),
            "-out",
            path(&csr),
        ]);
        std::fs::write(
            &ext,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            path(&csr),
            "-CA",
            path(&ca),
            "-CAkey",
            path(&ca_key),
            "-CAcreateserial",
            "-extfile",
            path(&ext),
            "-out",
            path(&cert),
        ]);
        Pki {
            _dir: dir,
            ca,
            other_ca,
            cert,
            key,
        }
    }
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl").args(args).output().expect(
        "openssl runs: these tests make their certificates with it (apt-get install openssl)",
    );
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `ready` or `exited` says so, panicking with `log` after two minutes or on exit.
fn wait_until(what: &str, log: &Path, mut exited: impl FnMut() -> bool, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        let log = || std::fs::read_to_string(log).unwrap_or_default();
        assert!(!exited(), "{what} exited before it was ready:\n{}", log());
        assert!(
            Instant::now() < deadline,
            "{what} was not ready after 2 minutes:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A RabbitMQ node of its own, listening only on a TLS port, with the Pki's server certificate.
pub struct TlsBroker {
    dir: TempDir,
    node: String,
    port: u16,
    server: Child,
}

impl TlsBroker {
    pub fn start(pki: &Pki) -> Self {
        let dir = TempDir::new("rabbitmq");
        let port = free_port();
        let dist_port = free_port();
        let node = format!("ingest-tls-{port}@localhost");
        let at = |name: &str| dir.path().join(name);
        std::fs::write(
            at("rabbitmq.conf"),
            format!(
                "listeners.tcp = none\n\
                 listeners.ssl.default = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                pki.ca.display(),
                pki.cert.display(),
                pki.key.display(),
            ),
        )
        .unwrap();
        // No plugins: the shared node's management and Prometheus ports stay its own.
        std::fs::write(at("enabled_plugins"), "[].\n").unwrap();
        // Not the machine's /etc/rabbitmq/rabbitmq-env.conf, which names the shared node.
        std::fs::write(at("rabbitmq-env.conf"), "").unwrap();
        // A cookie of its own, in a home of its own: nothing of the shared node is read.
        std::fs::create_dir_all(at("home")).unwrap();
        let cookie = at("home/.erlang.cookie");
        std::fs::write(&cookie, uuid::Uuid::new_v4().simple().to_string()).unwrap();
        std::fs::set_permissions(&cookie, PermissionsExt::from_mode(0o400)).unwrap();
        let log = std::fs::File::create(at("server.log")).unwrap();
        let server = Command::new(rabbitmq_bin("rabbitmq-server"))
            .envs(Self::env_for(dir.path(), &node))
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", at("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", at("advanced.config"))
            .env("RABBITMQ_MNESIA_BASE", at("mnesia"))
            .env("RABBITMQ_LOG_BASE", at("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", at("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", at("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect(
                "rabbitmq-server starts: these tests run a RabbitMQ node of their own \
                 (apt-get install rabbitmq-server)",
            );
        let mut broker = TlsBroker {
            dir,
            node,
            port,
            server,
        };
        let server_log = broker.dir.path().join("server.log");
        // The TLS listener opens once the node has booted.
        let port = broker.port;
        wait_until(
            "the test's RabbitMQ node",
            &server_log,
            || matches!(broker.server.try_wait(), Ok(Some(_))),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        broker
    }

    /// `amqps://` to this node, as guest (allowed from the loopback address).
    pub fn url(&self) -> String {
        format!("amqps://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn env_for(dir: &Path, node: &str) -> Vec<(String, String)> {
        vec![
            ("HOME".into(), dir.join("home").display().to_string()),
            ("RABBITMQ_NODENAME".into(), node.into()),
            (
                "RABBITMQ_CONF_ENV_FILE".into(),
                dir.join("rabbitmq-env.conf").display().to_string(),
            ),
        ]
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = Command::new(rabbitmq_bin("rabbitmqctl"))
            .args(["-n", &self.node, "stop"])
            .envs(Self::env_for(self.dir.path(), &self.node))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.server.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        // The script waits on the Erlang VM, whose pid the node wrote down: neither outlives us.
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// The Debian package's scripts switch to the `rabbitmq` user and write to the shared node's log
/// directory; the scripts they call do neither.
fn rabbitmq_bin(name: &str) -> PathBuf {
    let packaged = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if packaged.exists() {
        packaged
    } else {
        PathBuf::from(name)
    }
}

/// A Postgres cluster of its own that accepts only TLS connections (`hostssl` in pg_hba.conf),
/// with the Pki's server certificate.
pub struct TlsPostgres {
    dir: TempDir,
    port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl TlsPostgres {
    pub fn start(pki: &Pki) -> Self {
        let dir = TempDir::new("postgres");
        let port = free_port();
        let at = |name: &str| dir.path().join(name);
        // Postgres wants its key readable by its own user only.
        std::fs::copy(&pki.cert, at("server.pem")).unwrap();
        std::fs::copy(&pki.key, at("server.key")).unwrap();
        std::fs::set_permissions(at("server.key"), PermissionsExt::from_mode(0o600)).unwrap();
        // initdb refuses to run as root: as root, the cluster belongs to the `postgres` user.
        let as_root = is_root();
        if as_root {
            let status = Command::new("chown")
                .args(["-R", "postgres:", path(dir.path())])
                .status()
                .unwrap();
            assert!(status.success(), "chown of the cluster's directory");
        }
        let run = |program: &str, args: &[&str]| {
            let program = Path::new(PG_BIN).join(program);
            let mut command = if as_root {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(program);
                command
            } else {
                Command::new(program)
            };
            let output = command.args(args).output().unwrap_or_else(|error| {
                panic!("{PG_BIN} runs: these tests run a Postgres 15 cluster of their own: {error}")
            });
            assert!(
                output.status.success(),
                "{args:?}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let data = at("data");
        run(
            "initdb",
            &[
                "-D",
                path(&data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nfsync = off\n",
            dir.path().display(),
            at("server.pem").display(),
            at("server.key").display(),
        );
        append(&data.join("postgresql.conf"), &conf);
        // TLS or nothing over TCP.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let log = at("postgres.log");
        let postgres = TlsPostgres { dir, port };
        run(
            "pg_ctl",
            &[
                "-D",
                path(&data),
                "-l",
                path(&log),
                "-w",
                "-t",
                "120",
                "start",
            ],
        );
        postgres
    }

    /// A URL of `database` on this cluster that verifies the server's certificate against `ca`
    /// and its name.
    pub fn url(&self, database: &str, ca: &Path) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=verify-full&sslrootcert={}",
            self.port,
            ca.display()
        )
    }

    /// A URL of `database` on this cluster without TLS, which pg_hba.conf refuses.
    pub fn plain_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }
}

fn append(file: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(file).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let pg_ctl = Path::new(PG_BIN).join("pg_ctl");
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(pg_ctl);
            command
        } else {
            Command::new(pg_ctl)
        };
        let _ = command
            .args(["-D", path(&data), "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout == b"0\n")
}

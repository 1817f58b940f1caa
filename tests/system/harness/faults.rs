//! Faults made for real: a link that goes silent, a disk that fills.

use super::*;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// A TCP relay on loopback that can go silent: after [`Blackhole::cut`] every
/// byte is swallowed, in both directions, with no FIN or RST (a pulled cable, a
/// dead NAT entry). After [`Blackhole::heal`], new connections work again; the
/// old ones stay dead, as they would.
pub struct Blackhole {
    pub port: u16,
    epoch: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

impl Blackhole {
    pub fn to(target: u16) -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let port = listener.local_addr().unwrap().port();
        let epoch = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (e, c, s) = (epoch.clone(), cut.clone(), streams.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let born = e.load(Ordering::SeqCst);
                let alive = {
                    let (e, c) = (e.clone(), c.clone());
                    move || !c.load(Ordering::SeqCst) && e.load(Ordering::SeqCst) == born
                };
                if !alive() {
                    // Accepted, and then nothing: a blackhole.
                    s.lock().unwrap().push(client.try_clone().unwrap());
                    std::thread::spawn(move || pump(client, None, alive));
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                s.lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let alive2 = alive.clone();
                std::thread::spawn(move || pump(client, Some(server), alive));
                std::thread::spawn(move || pump(s2, Some(c2), alive2));
            }
        });
        Blackhole {
            port,
            epoch,
            cut,
            streams,
        }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` while `alive()`, swallows bytes otherwise.
fn pump(mut from: TcpStream, mut to: Option<TcpStream>, alive: impl Fn() -> bool) {
    use std::io::Write;
    let mut buf = [0u8; 16384];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let (true, Some(out)) = (alive(), to.as_mut()) {
            if out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    }
    if let (true, Some(out)) = (alive(), to) {
        let _ = out.shutdown(std::net::Shutdown::Write);
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        for s in self.streams.lock().unwrap().iter() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A tmpfs of a fixed size, mounted in a mount namespace of its own (the
/// host's mounts are untouched), for filling a disk for real. A holder
/// process keeps the namespace alive across daemon restarts; everything that
/// should see the disk runs in it through [`SmallDisk::command`].
pub struct SmallDisk {
    /// The mount point, the same path inside the namespace (outside it is an
    /// empty folder).
    pub dir: tempfile::TempDir,
    holder: Proc,
}

impl SmallDisk {
    pub fn new(size: &str) -> SmallDisk {
        require("unshare", "util-linux");
        require("nsenter", "util-linux");
        let dir = tempfile::tempdir().expect("tempdir");
        // Mounted by the holder itself, after unshare: nothing reaches the
        // host's namespace, even if this test dies half-way.
        let holder = Proc::spawn(
            "small-disk",
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg(format!(
                    "mount -t tmpfs -o size={size},mode=0700 roomsense-test \"$1\" && echo mounted >&2 && exec sleep 3600"
                ))
                .arg("sh")
                .arg(dir.path()),
        );
        holder.log.wait_for(&["mounted"]);
        SmallDisk { dir, holder }
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.holder.pid().to_string())
            .args(["-m", "--", program]);
        cmd
    }

    /// Fills what is left of the disk with one file.
    pub fn fill(&self) {
        let filler = self.dir.path().join("filler");
        // dd stops with "No space left on device" (a failure exit): expected.
        let out = self
            .command("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", filler.display()))
            .arg("bs=64k")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("No space left"),
            "dd did not fill the disk: {said}"
        );
    }

    /// Gives the space back.
    pub fn free(&self) {
        let status = self
            .command("rm")
            .arg(self.dir.path().join("filler"))
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// aggregatord started on this disk, as [`start_daemon`] does.
    pub fn start_aggregatord(&self, config: &Path) -> Proc {
        Proc::spawn(
            "aggregatord",
            self.command(AGGREGATORD)
                .arg("--config")
                .arg(config)
                .env("RUST_LOG", "info,roomsense=debug")
                .env_remove("JOURNAL_STREAM")
                .env_remove("NOTIFY_SOCKET"),
        )
    }

    /// The `seq` of every stored reading, as [`stored_seqs`] reads them.
    pub fn stored_seqs(&self, config: &Path) -> Vec<u64> {
        seqs_of(&stdout_of(
            self.command(AGGREGATORD)
                .arg("--config")
                .arg(config)
                .args(["dump", "--format", "jsonl"]),
        ))
    }
}

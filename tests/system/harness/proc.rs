//! Child processes and their logs: [`Proc`] kills what it started when it
//! drops, and prints its log when a test fails; [`Log`] waits for lines.

use super::*;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Lines a child wrote to stderr, kept for waiting on and for failure reports.
#[derive(Clone)]
pub struct Log {
    name: String,
    lines: Shared<Vec<String>>,
}

impl Log {
    fn capture(name: &str, stream: impl Read + Send + 'static) -> Log {
        let log = Log {
            name: name.to_owned(),
            lines: Shared::new(Vec::new()),
        };
        let sink = log.lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                sink.update(|lines| lines.push(line));
            }
        });
        log
    }

    /// Waits for a line containing every one of `needles`; returns it.
    pub fn wait_for(&self, needles: &[&str]) -> String {
        self.wait_for_nth(needles, 1)
    }

    /// Waits until `n` lines contain every one of `needles`; returns the n-th.
    pub fn wait_for_nth(&self, needles: &[&str], n: usize) -> String {
        self.wait_for_nth_where(|l| needles.iter().all(|x| l.contains(x)), n, needles)
    }

    /// Waits until `n` lines satisfy `pred` (`what` describes it in a failure).
    /// Each wake-up looks only at the lines added since the last one: a daemon
    /// logging tens of thousands of lines must not make the test rescan them all
    /// per line (that once took a whole core, and the daemon, blocked writing to
    /// a full stderr pipe, missed its keep-alive).
    pub fn wait_for_nth_where(
        &self,
        pred: impl Fn(&str) -> bool,
        n: usize,
        what: impl std::fmt::Debug,
    ) -> String {
        self.wait_for_nth_within(pred, n, what, PATIENCE)
    }

    /// [`Log::wait_for_nth_where`] with its own patience, for a child that keeps
    /// its own, longer deadlines (a browser script): its verdict should end the wait.
    pub fn wait_for_nth_within(
        &self,
        pred: impl Fn(&str) -> bool,
        n: usize,
        what: impl std::fmt::Debug,
        patience: Duration,
    ) -> String {
        let scanned = std::cell::Cell::new(0usize);
        let matched = std::cell::Cell::new(0usize);
        let nth = std::cell::RefCell::new(None::<String>);
        let (lines, _) = self.lines.wait_within(
            |lines| {
                for line in &lines[scanned.get()..] {
                    scanned.set(scanned.get() + 1);
                    if pred(line) {
                        matched.set(matched.get() + 1);
                        if matched.get() == n {
                            *nth.borrow_mut() = Some(line.clone());
                            return true;
                        }
                    }
                }
                false
            },
            patience,
        );
        drop(lines); // Not held while panicking: the failure report needs it.
        nth.into_inner().unwrap_or_else(|| {
            panic!(
                "{}: no log line with {what:?} (wanted {n}, saw {}) within {patience:?}",
                self.name,
                matched.get()
            )
        })
    }

    /// How many lines so far contain every one of `needles`.
    pub fn count(&self, needles: &[&str]) -> usize {
        self.count_where(|l| needles.iter().all(|n| l.contains(n)))
    }

    /// How many lines so far satisfy `pred`.
    pub fn count_where(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.lines.lock().iter().filter(|l| pred(l)).count()
    }

    /// How many lines containing `counted` came before the first line containing
    /// `marker` (all of them if there is none).
    pub fn count_before(&self, counted: &str, marker: &str) -> usize {
        let lines = self.lines.lock();
        lines
            .iter()
            .take_while(|l| !l.contains(marker))
            .filter(|l| l.contains(counted))
            .count()
    }

    pub fn contains(&self, needles: &[&str]) -> bool {
        let lines = self.lines.lock();
        lines.iter().any(|l| needles.iter().all(|n| l.contains(n)))
    }

    pub fn text(&self) -> String {
        self.lines.lock().join("\n")
    }
}

/// A child process that is killed (and its log shown, if the test failed) on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: Log,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        Proc {
            name: name.to_owned(),
            log: Log::capture(name, stderr),
            child,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.pid(), libc::SIGTERM);
        self.wait()
    }

    /// SIGHUP: reload the configuration.
    pub fn hup(&self) {
        signal(self.pid(), libc::SIGHUP);
    }

    /// SIGKILL: the process gets no chance to say goodbye.
    pub fn kill9(&mut self) -> ExitStatus {
        signal(self.pid(), libc::SIGKILL);
        self.wait()
    }

    /// The exit status if it has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waitpid")
    }

    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("waitpid") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {PATIENCE:?}",
                self.name
            );
            // No event to await for a child's exit in std; poll briefly.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a child we own; no memory is shared.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log -----\n{}\n----- end of {} log -----",
                self.name,
                self.log.text(),
                self.name
            );
        }
    }
}

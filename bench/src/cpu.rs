//! Where the CPU went during a phase: the machine's busy share, and CPU per process group, from
//! `/proc`, sampled through the phase.
//!
//! Every process is read every [`SAMPLE_EVERY`]: one that ends during the phase (a Postgres
//! autovacuum or parallel worker, a neighbour's compiler) still counts with what it used up to its
//! last sample, and its time is never credited to the parent that reaps it. That matters because
//! Postgres is shared: the backends of other databases (other people's tests, on a shared machine)
//! are `other`, not `postgres`, which is only the measured database's sessions and the server's
//! own processes (WAL writer, checkpointer, ...). Processes that live less than one sampling
//! interval are missed, and their time shows as `unattributed`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::connect::CALL_PATIENCE;
use crate::report::round;

/// Clock ticks per second in `/proc/*/stat` (`USER_HZ`): 100 on every Linux this runs on, and not
/// readable without libc.
const TICKS_PER_SECOND: f64 = 100.0;
/// How often every process is read: short enough to see most of a short-lived process, long enough
/// that reading `/proc` costs the bench about one percent of a core.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// The `other_top` label of the backends of databases other than the measured one.
const OTHER_DATABASES: &str = "postgres (other databases)";

/// Which processes are the run's: the workers by pid, Postgres by the database it serves.
#[derive(Debug, Clone)]
pub struct Attribution {
    pub workers: Vec<u32>,
    /// The measured database: a Postgres backend (or autovacuum worker) of any other is `other`.
    pub database: String,
}

/// CPU used during a phase: the machine's busy share, and cores used per process group (`worker`,
/// `postgres`, `rabbitmq`, `bench`, `other`, and `unattributed` for busy time no process sampled
/// accounts for).
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    machine_busy_percent: f64,
    cores: BTreeMap<&'static str, f64>,
    /// The busiest commands in `other` by their time in the phase: on a shared machine, what else
    /// took CPU from the run.
    other_top: BTreeMap<String, f64>,
    /// CPU seconds per group, unrounded, for the per-customer figures.
    #[serde(skip)]
    seconds: BTreeMap<&'static str, f64>,
}

impl CpuUse {
    /// Cores that went to neither the run nor the services it measures.
    fn other(&self) -> f64 {
        self.cores.get("other").copied().unwrap_or(0.0)
    }

    /// CPU microseconds of `group` per unit of work (a customer, a row, an event); `None` for no
    /// work.
    pub fn micros_per(&self, group: &str, units: u64) -> Option<f64> {
        (units > 0).then(|| self.seconds.get(group).copied().unwrap_or(0.0) * 1e6 / units as f64)
    }
}

/// How long the broker is watched before a phase, while nothing of the run is running.
const BROKER_IDLE_SAMPLE: Duration = Duration::from_secs(1);
/// Above this many cores of RabbitMQ with nothing of the run running, someone else is using the
/// broker: at 0.05 cores, a phase of 50,000 events in 6 s gets 6 µs per event that are not its own.
const NOISY_BROKER_CORES: f64 = 0.05;

/// RabbitMQ's cores over a second in which the run does nothing: the broker serves every user of
/// this machine, and `rabbitmq` cannot tell their work from the run's.
pub async fn broker_idle_cores() -> f64 {
    let watch = CpuWatch::start(Attribution {
        workers: Vec::new(),
        database: String::new(),
    });
    tokio::time::sleep(BROKER_IDLE_SAMPLE).await;
    let used = watch.finish(BROKER_IDLE_SAMPLE.as_secs_f64()).await;
    round(
        used.seconds.get("rabbitmq").copied().unwrap_or(0.0) / BROKER_IDLE_SAMPLE.as_secs_f64(),
        3,
    )
}

pub fn broker_noise_warning(what: &str, idle_cores: f64) -> Option<String> {
    (idle_cores > NOISY_BROKER_CORES).then(|| {
        format!(
            "{what}: RabbitMQ used {idle_cores:.2} cores in the second before it, with nothing of \
             the run running: other users of the broker; its `rabbitmq` figures are overstated"
        )
    })
}

/// Above this many cores of `other` during a phase, its figures say more about the neighbours than
/// about the pipeline, and the report says so.
const NOISY_OTHER_CORES: f64 = 0.2;

pub fn noise_warning(what: &str, cpu: &CpuUse) -> Option<String> {
    (cpu.other() > NOISY_OTHER_CORES).then(|| {
        format!(
            "{what}: other processes used {:.2} cores ({:?}); its figures are understated",
            cpu.other(),
            cpu.other_top
        )
    })
}

/// One process as sampled through a phase.
#[derive(Debug)]
struct Track {
    group: &'static str,
    command: String,
    /// Its ticks when first seen: at the start of the phase, or 0 for a process born during it.
    first: u64,
    last: u64,
    /// A Postgres process forked but not yet showing its title is classified again next time.
    settled: bool,
}

/// Everything seen so far, and the machine's ticks at the first and latest sample.
#[derive(Debug, Default)]
struct Tracks {
    processes: HashMap<u32, Track>,
    machine_first: (u64, u64),
    machine_last: (u64, u64),
}

/// One process's reading: pid, command name, user+system ticks.
struct Reading {
    pid: u32,
    command: String,
    ticks: u64,
}

impl Tracks {
    /// Merges one sample. `initial`: processes seen now were running before the phase, so only what
    /// they use from now on counts; a process first seen later counts from its birth.
    fn observe(
        &mut self,
        machine: (u64, u64),
        readings: Vec<Reading>,
        initial: bool,
        classify: &dyn Fn(u32, &str) -> (&'static str, bool),
    ) {
        if initial {
            self.machine_first = machine;
        }
        self.machine_last = machine;
        for reading in readings {
            match self.processes.get_mut(&reading.pid) {
                Some(track) => {
                    track.last = track.last.max(reading.ticks);
                    if !track.settled {
                        (track.group, track.settled) = classify(reading.pid, &reading.command);
                    }
                }
                None => {
                    let (group, settled) = classify(reading.pid, &reading.command);
                    let track = Track {
                        group,
                        command: reading.command,
                        first: if initial { reading.ticks } else { 0 },
                        last: reading.ticks,
                        settled,
                    };
                    self.processes.insert(reading.pid, track);
                }
            }
        }
    }

    fn used(&self, seconds: f64) -> CpuUse {
        let mut ticks: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut others: HashMap<&str, u64> = HashMap::new();
        for track in self.processes.values() {
            let grown = track.last.saturating_sub(track.first);
            *ticks.entry(track.group).or_default() += grown;
            if track.group == "other" {
                let command = match track.command.as_str() {
                    "postgres" => OTHER_DATABASES,
                    command => command,
                };
                *others.entry(command).or_default() += grown;
            }
        }
        let cpu_seconds = |t: u64| t as f64 / TICKS_PER_SECOND;
        let mut used: BTreeMap<&'static str, f64> = ticks
            .into_iter()
            .map(|(g, t)| (g, cpu_seconds(t)))
            .collect();
        let (busy_last, total_last) = self.machine_last;
        let (busy_first, total_first) = self.machine_first;
        let busy = busy_last.saturating_sub(busy_first);
        let total = total_last.saturating_sub(total_first);
        let attributed: f64 = used.values().sum();
        used.insert("unattributed", (cpu_seconds(busy) - attributed).max(0.0));
        let cores = used
            .iter()
            .map(|(&group, &s)| (group, round(s / seconds, 2)))
            .collect();
        let mut others: Vec<(&str, u64)> = others.into_iter().filter(|(_, t)| *t > 0).collect();
        others.sort_by_key(|&(_, ticks)| std::cmp::Reverse(ticks));
        let other_top = others
            .into_iter()
            .take(3)
            .map(|(command, t)| (command.to_owned(), round(cpu_seconds(t) / seconds, 2)))
            .filter(|(_, cores)| *cores >= 0.01)
            .collect();
        CpuUse {
            machine_busy_percent: if total == 0 {
                0.0
            } else {
                round(busy as f64 * 100.0 / total as f64, 1)
            },
            cores,
            other_top,
            seconds: used,
        }
    }
}

/// Samples `/proc` from [`start`](Self::start) until [`finish`](Self::finish).
pub struct CpuWatch {
    stop: CancellationToken,
    task: AbortOnDropHandle<Tracks>,
}

impl CpuWatch {
    /// Takes the first sample now (so the phase's clock may start right after), then samples in the
    /// background.
    pub fn start(attribution: Attribution) -> Self {
        let classify = move |pid: u32, command: &str| classify(&attribution, pid, command);
        let mut tracks = Tracks::default();
        let (machine, readings) = read_proc();
        tracks.observe(machine, readings, true, &classify);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let last = tokio::select! {
                    () = stopped.cancelled() => true,
                    () = tokio::time::sleep(SAMPLE_EVERY) => false,
                };
                let (machine, readings) = read_proc();
                tracks.observe(machine, readings, false, &classify);
                if last {
                    return tracks;
                }
            }
        });
        CpuWatch {
            stop,
            task: AbortOnDropHandle::new(task),
        }
    }

    /// Takes the last sample and what was used over `seconds`.
    pub async fn finish(self, seconds: f64) -> CpuUse {
        self.stop.cancel();
        let tracks = tokio::time::timeout(CALL_PATIENCE, self.task)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        tracks.used(seconds)
    }
}

/// The group of a process, and whether that is final (a Postgres process that does not show its
/// title yet is looked at again).
fn classify(attribution: &Attribution, pid: u32, command: &str) -> (&'static str, bool) {
    if attribution.workers.contains(&pid) {
        return ("worker", true);
    }
    if pid == std::process::id() {
        return ("bench", true);
    }
    match command {
        "postgres" => {
            let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let title = String::from_utf8_lossy(&title);
            let title = title.trim_end_matches(['\0', ' ']);
            match serves_another_database(title, &attribution.database) {
                Some(true) => ("other", true),
                Some(false) => ("postgres", true),
                None => ("postgres", false),
            }
        }
        "beam.smp" | "epmd" | "erl_child_setup" | "inet_gethost" => ("rabbitmq", true),
        _ => ("other", true),
    }
}

/// Whether a Postgres process title (`postgres: [cluster: ]user database host(port) state`, or
/// `... autovacuum worker database`, or a server process such as `walwriter`) names a database other
/// than `ours`; `None` while the process does not show its title yet.
fn serves_another_database(title: &str, ours: &str) -> Option<bool> {
    let rest = title.strip_prefix("postgres: ")?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    if words.contains(&ours) {
        return Some(false);
    }
    let client = words
        .iter()
        .any(|w| *w == "[local]" || (w.ends_with(')') && w.contains('(')));
    let autovacuum = rest.contains("autovacuum worker ");
    Some(client || autovacuum)
}

/// The machine's busy and total ticks, and every process's own ticks, from `/proc`.
fn read_proc() -> ((u64, u64), Vec<Reading>) {
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| machine_ticks(&stat))
        .unwrap_or((0, 0));
    let mut readings = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((command, ticks)) = process_ticks(&stat) {
            readings.push(Reading {
                pid,
                command: command.to_owned(),
                ticks,
            });
        }
    }
    (machine, readings)
}

/// Busy and total ticks of all CPUs from `/proc/stat` (idle and iowait are not busy).
fn machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3)? + fields.get(4)?;
    Some((total - idle, total))
}

/// A process's command name and its own user+system ticks, from `/proc/<pid>/stat`. The name is in
/// parentheses and may hold spaces, so the fields are counted from its closing parenthesis.
fn process_ticks(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some((stat.get(open + 1..close)?, field(11)? + field(12)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_lines_are_read_past_the_command_name() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(process_ticks(stat), Some(("my (odd) name", 300)));
        let machine = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3";
        assert_eq!(machine_ticks(machine), Some((150, 1000)));
    }

    fn readings(processes: &[(u32, u64)]) -> Vec<Reading> {
        processes
            .iter()
            .map(|&(pid, ticks)| Reading {
                pid,
                command: format!("p{pid}"),
                ticks,
            })
            .collect()
    }

    #[test]
    fn a_process_that_ends_during_a_phase_counts_only_its_time_in_the_phase() {
        let postgres = |_: u32, _: &str| ("postgres", true);
        let mut tracks = Tracks::default();
        // The postmaster (1) used 10 ticks itself; its parallel worker (2) used 30 more, then ended
        // and was reaped (its time goes nowhere else); a new session (3) started and used 20.
        tracks.observe((0, 0), readings(&[(1, 100), (2, 50)]), true, &postgres);
        tracks.observe((0, 0), readings(&[(1, 105), (2, 80)]), false, &postgres);
        tracks.observe((0, 0), readings(&[(1, 110), (3, 20)]), false, &postgres);
        let used = tracks.used(1.0);
        assert_eq!(used.cores["postgres"], 0.6);
        assert_eq!(used.micros_per("postgres", 1000), Some(600.0));
        assert_eq!(used.micros_per("postgres", 0), None);
    }

    #[test]
    fn busy_time_no_process_accounts_for_is_unattributed() {
        let mixed = |pid: u32, _: &str| (if pid == 1 { "worker" } else { "other" }, true);
        let mut tracks = Tracks::default();
        tracks.observe((1000, 4000), readings(&[(1, 0), (2, 0)]), true, &mixed);
        tracks.observe((1100, 4200), readings(&[(1, 40), (2, 20)]), false, &mixed);
        let used = tracks.used(1.0);
        assert_eq!(used.cores["worker"], 0.4);
        assert_eq!(used.cores["other"], 0.2);
        assert_eq!(used.cores["unattributed"], 0.4);
        assert_eq!(used.machine_busy_percent, 50.0);
        assert_eq!(used.other_top["p2"], 0.2);
    }

    #[test]
    fn postgres_backends_of_other_databases_are_not_the_run_s() {
        let ours = "ingest_bench_ab12cd34_main";
        let of = |title: &str| serves_another_database(title, ours);
        assert_eq!(
            of("postgres: 15/main: postgres ingest_bench_ab12cd34_main 127.0.0.1(5170) idle"),
            Some(false)
        );
        assert_eq!(
            of("postgres: 15/main: postgres test_db_9 127.0.0.1(5171) INSERT"),
            Some(true)
        );
        assert_eq!(
            of("postgres: 15/main: postgres other [local] idle"),
            Some(true)
        );
        assert_eq!(
            of("postgres: 15/main: autovacuum worker test_db_9"),
            Some(true)
        );
        assert_eq!(
            of("postgres: autovacuum worker ingest_bench_ab12cd34_main"),
            Some(false)
        );
        assert_eq!(of("postgres: 15/main: walwriter"), Some(false));
        assert_eq!(of("postgres: 15/main: checkpointer"), Some(false));
        assert_eq!(
            of("/usr/lib/postgresql/15/bin/postgres -D /var/lib/x"),
            None
        );
    }
}

//! Where the CPU went during a phase: the machine's busy share and cores per process group, from
//! `/proc`.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::report::round;

/// Clock ticks per second in `/proc/*/stat` (`USER_HZ`): 100 on every Linux this runs on, and not
/// readable without libc.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time so far, of the machine and of every process on it.
pub struct CpuSnapshot {
    machine_busy: u64,
    machine_total: u64,
    processes: HashMap<u32, ProcessTicks>,
}

struct ProcessTicks {
    group: &'static str,
    command: String,
    /// The process's own ticks.
    own: u64,
    /// Its own ticks plus those of the children it reaped.
    with_children: u64,
}

/// CPU used during a phase: the machine's busy share, and cores used per process group (`worker`,
/// `postgres`, `rabbitmq`, `bench`, `other`, and `unattributed` for busy time no live process
/// accounts for).
#[derive(Debug, Serialize)]
pub struct CpuUse {
    machine_busy_percent: f64,
    cores: BTreeMap<&'static str, f64>,
    /// The busiest live commands in `other` by their own time: on a shared machine, what else took
    /// CPU from the run.
    other_top: BTreeMap<String, f64>,
}

impl CpuUse {
    /// Cores that went to neither the run nor the services it measures.
    fn other(&self) -> f64 {
        self.cores.get("other").copied().unwrap_or(0.0)
    }
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

impl CpuSnapshot {
    pub fn take(workers: &[u32]) -> Self {
        let (machine_busy, machine_total) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| machine_ticks(&stat))
            .unwrap_or((0, 0));
        let me = std::process::id();
        let mut processes = HashMap::new();
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
            let Some((command, own, children)) = process_ticks(&stat) else {
                continue;
            };

            let group = if workers.contains(&pid) {
                "worker"
            } else if pid == me {
                "bench"
            } else {
                match command {
                    "postgres" => "postgres",
                    "beam.smp" | "epmd" | "erl_child_setup" | "inet_gethost" => "rabbitmq",
                    _ => "other",
                }
            };
            processes.insert(
                pid,
                ProcessTicks {
                    group,
                    command: command.to_owned(),
                    own,
                    with_children: own + children,
                },
            );
        }
        CpuSnapshot {
            machine_busy,
            machine_total,
            processes,
        }
    }

    /// What was used between `before` and this snapshot. A process that started meanwhile counts
    /// in full.
    pub fn since(&self, before: &CpuSnapshot, seconds: f64) -> CpuUse {
        let cores_of = |ticks: f64| ticks / TICKS_PER_SECOND / seconds;
        let mut cores: BTreeMap<&'static str, f64> = BTreeMap::new();
        let mut others: HashMap<&str, f64> = HashMap::new();
        // Group totals include the children a process reaped, so that a process that ended during
        // the phase (a Postgres parallel worker, a neighbour's rustc) is still counted...
        for (pid, now) in &self.processes {
            let earlier = before.processes.get(pid);
            let grown = now
                .with_children
                .saturating_sub(earlier.map_or(0, |p| p.with_children));
            *cores.entry(now.group).or_default() += cores_of(grown as f64);
            if now.group == "other" {
                let own = now.own.saturating_sub(earlier.map_or(0, |p| p.own));
                *others.entry(now.command.as_str()).or_default() += cores_of(own as f64);
            }
        }
        // ...but it reached its parent's total with the time it had used before the phase, which
        // is taken back here. Parent and child share a group (the postmaster and its backends,
        // cargo and rustc); the exception, a restarted Postgres, voids the phase anyway.
        for (pid, earlier) in &before.processes {
            if !self.processes.contains_key(pid) {
                *cores.entry(earlier.group).or_default() -= cores_of(earlier.with_children as f64);
            }
        }
        cores.values_mut().for_each(|c| *c = c.max(0.0));
        let total = self.machine_total.saturating_sub(before.machine_total);
        let busy = self.machine_busy.saturating_sub(before.machine_busy);
        // Busy time no process accounts for: the kernel's own work (interrupts, softirqs), and
        // processes whose parent ended before them.
        let attributed: f64 = cores.values().sum();
        let busy_cores = busy as f64 / TICKS_PER_SECOND / seconds;
        cores.insert("unattributed", (busy_cores - attributed).max(0.0));
        cores.values_mut().for_each(|c| *c = round(*c, 2));
        let mut others: Vec<(&str, f64)> = others.into_iter().filter(|(_, c)| *c >= 0.01).collect();
        others.sort_by(|a, b| b.1.total_cmp(&a.1));
        let other_top = others
            .into_iter()
            .take(3)
            .map(|(command, used)| (command.to_owned(), round(used, 2)))
            .collect();
        CpuUse {
            machine_busy_percent: if total == 0 {
                0.0
            } else {
                round(busy as f64 * 100.0 / total as f64, 1)
            },
            cores,
            other_top,
        }
    }
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

/// A process's command name, its user+system ticks and those of its children that ended, from
/// `/proc/<pid>/stat`. The name is in parentheses and may hold spaces, so the fields are counted from
/// its closing parenthesis.
fn process_ticks(stat: &str) -> Option<(&str, u64, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some((
        stat.get(open + 1..close)?,
        field(11)? + field(12)?,
        field(13)? + field(14)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_lines_are_read_past_the_command_name() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(process_ticks(stat), Some(("my (odd) name", 300, 0)));
        let machine = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3";
        assert_eq!(machine_ticks(machine), Some((150, 1000)));
    }

    #[test]
    fn a_process_that_ends_during_a_phase_counts_only_its_time_in_the_phase() {
        let snapshot = |processes: Vec<(u32, &'static str, u64)>| CpuSnapshot {
            machine_busy: 0,
            machine_total: 0,
            processes: processes
                .into_iter()
                .map(|(pid, group, ticks)| {
                    let process = ProcessTicks {
                        group,
                        command: format!("p{pid}"),
                        own: ticks,
                        with_children: ticks,
                    };
                    (pid, process)
                })
                .collect(),
        };
        // The postmaster (1) used 10 ticks itself; its parallel worker (2) used 30 more, then ended
        // and was reaped; a new session (3) started and used 20.
        let before = snapshot(vec![(1, "postgres", 100), (2, "postgres", 50)]);
        let after = snapshot(vec![(1, "postgres", 110 + 80), (3, "postgres", 20)]);
        let used = after.since(&before, 1.0);
        assert_eq!(used.cores["postgres"], 0.6);
    }
}

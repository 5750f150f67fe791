//! One run: the ceiling, then each phase on its own rig, then the report. Whatever happens, what the
//! run made is removed before it ends.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use customer_ingest::config::Settings;
use customer_ingest::shutdown;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Args;
use crate::ceiling::ceiling;
use crate::cleanup::{Ledger, clean};
use crate::cpu::noise_warning;
use crate::phases::{Batches, Expect, Throughput, large, small, throughput};
use crate::report::{BenchSettings, Report, Scale, Small, Targets, machine_facts, round};
use crate::rig::Rig;
use crate::worker::service_binary;
use crate::workload::{TENANT, bulk_body};

pub async fn run(mut settings: Settings, args: Args) -> anyhow::Result<()> {
    if let Some(mode) = args.events_mode {
        settings.events.mode = mode.into();
    }
    validate(&settings, &args)?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    eprintln!(
        "bench {run_id}: M={} K={} events.mode={:?}",
        args.messages, args.customers, settings.events.mode
    );
    let ledger = Ledger::default();
    let mut warnings = Vec::new();
    let stop = CancellationToken::new();
    shutdown::on_signal(stop.clone());
    let outcome = tokio::select! {
        outcome = bench(&settings, &args, &run_id, &ledger, &mut warnings) => outcome,
        () = stop.cancelled() => Err(anyhow!("interrupted")),
    };
    // Whatever a failed or interrupted phase left behind. Its workers were killed when the phase was
    // dropped (`kill_on_drop`); their queues and databases are removed here.
    if let Err(error) = clean(&settings, &ledger.take()).await {
        warnings.push(format!("{error:#}"));
    }
    for warning in &warnings {
        eprintln!("bench: warning: {warning}");
    }
    let mut report = outcome?;
    report.warnings = warnings;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn validate(settings: &Settings, args: &Args) -> anyhow::Result<()> {
    if args.messages == 0 || args.customers == 0 {
        bail!("--messages and --customers must be at least 1");
    }
    if args.customers > settings.pipeline.max_records {
        bail!(
            "--customers {} is more than pipeline.max_records ({}): every batch would be rejected",
            args.customers,
            settings.pipeline.max_records
        );
    }
    if args.prefetch == 0 || args.timeout == 0 {
        bail!("--prefetch and --timeout must be at least 1");
    }
    // The figures describe this machine, and the bench puts a heavy load on what it talks to.
    for (key, url) in [
        ("amqp.url", settings.amqp.url()),
        ("database.url", settings.database.url()),
    ] {
        if !is_loopback(url) {
            bail!("{key} must name 127.0.0.1, ::1 or localhost: the bench measures this machine");
        }
    }
    // Found now rather than after the ceiling has taken its time.
    service_binary()?;
    Ok(())
}

/// Whether a URL's host is this machine.
fn is_loopback(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    matches!(host, "127.0.0.1" | "::1" | "localhost")
}

async fn bench(
    settings: &Settings,
    args: &Args,
    run_id: &str,
    ledger: &Ledger,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Report> {
    let phase_limit = Duration::from_secs(args.timeout);
    let deadline = || Instant::now() + phase_limit;
    let (m, k) = (args.messages, args.customers);
    let machine = machine_facts(settings).await?;

    let inserts: Arc<Vec<Vec<u8>>> = Arc::new((0..m).map(|i| bulk_body(i, k, 0)).collect());
    let largest = inserts.iter().map(Vec::len).max().unwrap_or(0);
    if largest > settings.pipeline.max_body_bytes {
        bail!(
            "a message of {k} customers is {largest} bytes, over pipeline.max_body_bytes ({}); \
             use fewer --customers",
            settings.pipeline.max_body_bytes
        );
    }

    eprintln!("bench: ceiling: COPY of {} customers", m * k);
    let ceiling = ceiling(settings, run_id, ledger, &inserts, deadline()).await?;
    eprintln!(
        "bench: ceiling: {:.0} customers/s",
        ceiling.customers_per_sec
    );

    let mut rig = Rig::start(settings, args, run_id, "main", 1, ledger).await?;
    let outcome = main_phases(&mut rig, args, &inserts, deadline).await;
    warnings.extend(rig.finish(settings, ledger).await);
    let (mut insert, mut update, mut unchanged, small) = outcome?;
    for phase in [&mut insert, &mut update, &mut unchanged] {
        warnings.append(&mut phase.warnings);
    }
    let ratio = |t: &Throughput| t.customers_per_sec / ceiling.customers_per_sec;
    let insert_ratio = ratio(&insert);
    let insert_cps = insert.customers_per_sec;

    let scale = if args.skip_scale {
        None
    } else {
        let mut rig = Rig::start(settings, args, run_id, "scale", 2, ledger).await?;
        let batches = Batches {
            phase: "scale",
            tenant: TENANT,
            bodies: inserts.clone(),
            customers: k,
            expect: Expect::Created,
        };
        let outcome = throughput(&mut rig, batches, deadline()).await;
        warnings.extend(rig.finish(settings, ledger).await);
        let mut scale = outcome?;
        warnings.append(&mut scale.warnings);
        Some(Scale {
            workers: 2,
            ratio_to_insert: round(scale.customers_per_sec / insert_cps, 3),
            phase: scale.into_phase(ceiling.customers_per_sec),
        })
    };
    drop(inserts);

    let large = if args.skip_large {
        None
    } else {
        large(settings, args, run_id, ledger, deadline(), warnings).await?
    };

    let peak_rss = [
        Some(insert.peak_rss_mib),
        Some(update.peak_rss_mib),
        Some(unchanged.peak_rss_mib),
        scale.as_ref().map(|s| s.phase.peak_rss_mib),
        large.as_ref().map(|l| l.peak_rss_mib),
    ]
    .into_iter()
    .flatten()
    .fold(0.0, f64::max);
    let targets = Targets::new(
        insert_ratio,
        ratio(&update),
        ratio(&unchanged),
        small.as_ref().map(|s| s.p99_ms),
        peak_rss,
        scale.as_ref().map(|s| s.ratio_to_insert),
    );
    let report = Report {
        machine,
        messages: m,
        customers_per_message: k,
        customers: m * k,
        settings: BenchSettings {
            chunk_size: settings.pipeline.chunk_size,
            concurrency: settings.pipeline.concurrency,
            prefetch: args.prefetch,
            max_connections: settings.database.max_connections,
            relay_batch_size: settings.relay.batch_size,
            events_mode: settings.events.mode,
        },
        insert: insert.into_phase(ceiling.customers_per_sec),
        update: update.into_phase(ceiling.customers_per_sec),
        unchanged: unchanged.into_phase(ceiling.customers_per_sec),
        ceiling,
        small,
        scale,
        large,
        targets,
        warnings: Vec::new(),
    };
    let measured = [
        Some(("ceiling", &report.ceiling.cpu)),
        Some(("insert", &report.insert.cpu)),
        Some(("update", &report.update.cpu)),
        Some(("unchanged", &report.unchanged.cpu)),
        report.scale.as_ref().map(|s| ("scale", &s.phase.cpu)),
        report.large.as_ref().map(|l| ("large", &l.cpu)),
    ];
    warnings.extend(
        measured
            .into_iter()
            .flatten()
            .filter_map(|(what, cpu)| noise_warning(what, cpu)),
    );
    Ok(report)
}

/// Insert, update and unchanged on one worker, then the small-message latency on that same worker.
async fn main_phases(
    rig: &mut Rig,
    args: &Args,
    inserts: &Arc<Vec<Vec<u8>>>,
    deadline: impl Fn() -> Instant,
) -> anyhow::Result<(Throughput, Throughput, Throughput, Option<Small>)> {
    let k = args.customers;
    let insert = throughput(
        rig,
        Batches {
            phase: "insert",
            tenant: TENANT,
            bodies: inserts.clone(),
            customers: k,
            expect: Expect::Created,
        },
        deadline(),
    )
    .await?;
    let updates: Arc<Vec<Vec<u8>>> =
        Arc::new((0..args.messages).map(|i| bulk_body(i, k, 1)).collect());
    let update = throughput(
        rig,
        Batches {
            phase: "update",
            tenant: TENANT,
            bodies: updates.clone(),
            customers: k,
            expect: Expect::Updated,
        },
        deadline(),
    )
    .await?;
    // The same documents again under new batch ids: nothing may change and nothing may be published.
    let unchanged = throughput(
        rig,
        Batches {
            phase: "unchanged",
            tenant: TENANT,
            bodies: updates,
            customers: k,
            expect: Expect::Unchanged,
        },
        deadline(),
    )
    .await?;
    let small = if args.skip_small {
        None
    } else {
        Some(small(rig, deadline()).await?)
    };
    Ok((insert, update, unchanged, small))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_machine_is_benched() {
        assert!(is_loopback("amqp://guest:guest@127.0.0.1:5672/%2f"));
        assert!(is_loopback(
            "postgres://postgres@localhost/x?sslmode=disable"
        ));
        assert!(is_loopback("postgres://u:p@[::1]:5432/x"));
        assert!(!is_loopback("postgres://u:p@db.internal:5432/x"));
        assert!(!is_loopback("amqp://guest:guest@10.0.0.5:5672/%2f"));
        assert!(!is_loopback("not a url"));
    }
}

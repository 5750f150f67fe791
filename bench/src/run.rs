//! One run: the ceiling, then each phase on its own rig, then the report. Whatever happens, what the
//! run made is removed before it ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use customer_ingest::config::Settings;
use customer_ingest::events::EventsMode;
use customer_ingest::shutdown;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Args;
use crate::bare::bare_publish;
use crate::ceiling::ceiling;
use crate::cleanup::{Ledger, clean};
use crate::cpu::{broker_noise_warning, noise_warning};
use crate::observer::Captured;
use crate::phases::{Batches, Expect, Throughput, large, small, throughput};
use crate::report::{
    BarePublish, BenchSettings, Ceiling, Large, ModePhases, Phase, Report, Scale, Small,
    machine_facts, round,
};
use crate::rig::Rig;
use crate::targets::{Inputs, PhaseFigures, Targets};
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
    eprintln!("\nbench {run_id}: targets\n{}", report.targets.table());
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
    let updates: Arc<Vec<Vec<u8>>> = Arc::new((0..m).map(|i| bulk_body(i, k, 1)).collect());
    let bodies = Bodies { inserts, updates };

    eprintln!("bench: ceiling: COPY of {} customers", m * k);
    let ceiling = ceiling(settings, run_id, ledger, &bodies.inserts, deadline()).await?;
    eprintln!(
        "bench: ceiling: {:.0} customers/s",
        ceiling.customers_per_sec
    );
    let copy_cps = ceiling.customers_per_sec;

    // The settings' mode: insert, update, unchanged, small.
    let default_mode = settings.events.mode;
    let mut rig = Rig::start(settings, args, run_id, "main", 1, ledger).await?;
    let outcome = main_phases(&mut rig, args, &bodies, deadline).await;
    warnings.extend(rig.finish(settings, ledger).await);
    let ((mut insert, mut update, mut unchanged, small), mut captured) = outcome?;
    for phase in [&mut insert, &mut update, &mut unchanged] {
        warnings.append(&mut phase.warnings);
    }
    let insert_cps = insert.customers_per_sec;
    let (insert, update, unchanged) = (
        insert.into_phase(copy_cps),
        update.into_phase(copy_cps),
        unchanged.into_phase(copy_cps),
    );
    let mut events_modes = BTreeMap::new();
    events_modes.insert(
        mode_name(default_mode),
        ModePhases {
            insert: insert.clone(),
            update: update.clone(),
        },
    );

    // The other mode: insert and update on a fresh worker, unless one mode was asked for.
    if args.events_mode.is_none() {
        let other = match default_mode {
            EventsMode::PerCustomer => EventsMode::Batch,
            EventsMode::Batch => EventsMode::PerCustomer,
        };
        let (phases, mut kept) =
            other_mode(settings, args, run_id, ledger, other, &bodies, warnings).await?;
        captured.append(&mut kept);
        events_modes.insert(mode_name(other), phases.into_phases(copy_cps));
    }
    drop(bodies.updates);

    // The broker's ceiling, from the events of the per-customer insert.
    let bare = if captured.is_empty() {
        None
    } else {
        Some(bare_publish(settings, args, run_id, ledger, captured, deadline()).await?)
    };

    let scale = if args.skip_scale {
        None
    } else {
        let mut rig = Rig::start(settings, args, run_id, "scale", 2, ledger).await?;
        let batches = Batches {
            phase: "scale",
            tenant: TENANT,
            bodies: bodies.inserts.clone(),
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
            phase: scale.into_phase(copy_cps),
        })
    };
    drop(bodies.inserts);

    let large = if args.skip_large {
        None
    } else {
        large(settings, args, run_id, ledger, deadline(), warnings).await?
    };

    let targets = Targets::new(&target_inputs(
        &ceiling,
        bare.as_ref(),
        (&insert, &update, &unchanged),
        &events_modes,
        default_mode,
        small.as_ref(),
        large.as_ref(),
        scale.as_ref(),
    ));
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
            events_mode: default_mode,
        },
        ceiling,
        bare_publish: bare,
        insert,
        update,
        unchanged,
        events_modes,
        small,
        scale,
        large,
        targets,
        warnings: Vec::new(),
    };
    let mut measured = vec![
        ("ceiling".to_owned(), &report.ceiling.cpu),
        ("unchanged".to_owned(), &report.unchanged.cpu),
    ];
    for (mode, phases) in &report.events_modes {
        measured.push((format!("{mode} insert"), &phases.insert.cpu));
        measured.push((format!("{mode} update"), &phases.update.cpu));
    }
    if let Some(bare) = &report.bare_publish {
        measured.push(("bare_publish".to_owned(), &bare.cpu));
        warnings.extend(broker_noise_warning(
            "bare_publish",
            bare.rabbitmq_idle_cores,
        ));
    }
    if let Some(scale) = &report.scale {
        measured.push(("scale".to_owned(), &scale.phase.cpu));
    }
    if let Some(large) = &report.large {
        measured.push(("large".to_owned(), &large.cpu));
    }
    warnings.extend(
        measured
            .into_iter()
            .filter_map(|(what, cpu)| noise_warning(&what, cpu)),
    );
    Ok(report)
}

/// Insert and update on a fresh worker started with `events.mode` = `mode`, and the insert's event
/// messages if they are one per customer.
async fn other_mode(
    settings: &Settings,
    args: &Args,
    run_id: &str,
    ledger: &Ledger,
    mode: EventsMode,
    bodies: &Bodies,
    warnings: &mut Vec<String>,
) -> anyhow::Result<(MeasuredMode, Vec<Captured>)> {
    let mut mode_settings = settings.clone();
    mode_settings.events.mode = mode;
    let label = match mode {
        EventsMode::PerCustomer => "per_customer",
        EventsMode::Batch => "batch",
    };
    let deadline = || Instant::now() + Duration::from_secs(args.timeout);
    let mut rig = Rig::start(&mode_settings, args, run_id, label, 1, ledger).await?;
    let outcome = mode_phases(&mut rig, args, bodies, deadline).await;
    warnings.extend(rig.finish(&mode_settings, ledger).await);
    let (mut insert, mut update, captured) = outcome?;
    warnings.append(&mut insert.warnings);
    warnings.append(&mut update.warnings);
    Ok((MeasuredMode { insert, update }, captured))
}

/// Insert and update of one mode, before they are set against the ceiling.
struct MeasuredMode {
    insert: Throughput,
    update: Throughput,
}

impl MeasuredMode {
    fn into_phases(self, ceiling_per_sec: f64) -> ModePhases {
        ModePhases {
            insert: self.insert.into_phase(ceiling_per_sec),
            update: self.update.into_phase(ceiling_per_sec),
        }
    }
}

/// The generated bodies of the throughput phases: every key new, then every customer renamed.
struct Bodies {
    inserts: Arc<Vec<Vec<u8>>>,
    updates: Arc<Vec<Vec<u8>>>,
}

/// `events.mode` as the settings spell it.
fn mode_name(mode: EventsMode) -> &'static str {
    match mode {
        EventsMode::PerCustomer => "per-customer",
        EventsMode::Batch => "batch",
    }
}

#[allow(clippy::too_many_arguments)]
fn target_inputs(
    ceiling: &Ceiling,
    bare: Option<&BarePublish>,
    (insert, update, unchanged): (&Phase, &Phase, &Phase),
    events_modes: &BTreeMap<&'static str, ModePhases>,
    default_mode: EventsMode,
    small: Option<&Small>,
    large: Option<&Large>,
    scale: Option<&Scale>,
) -> Inputs {
    let mode = |mode: EventsMode| {
        events_modes
            .get(mode_name(mode))
            .map(|p| [PhaseFigures::from(&p.insert), PhaseFigures::from(&p.update)])
    };
    let mut all_phases: Vec<PhaseFigures> = [insert, update, unchanged]
        .into_iter()
        .map(PhaseFigures::from)
        .collect();
    for (name, phases) in events_modes {
        if *name != mode_name(default_mode) {
            all_phases.push(PhaseFigures::from(&phases.insert));
            all_phases.push(PhaseFigures::from(&phases.update));
        }
    }
    Inputs {
        copy_customers_per_sec: ceiling.customers_per_sec,
        copy_postgres_us_per_row: ceiling.postgres_us_per_row,
        bare_events_per_sec: bare.map(|b| b.events_per_sec),
        bare_broker_us_per_event: bare.and_then(|b| b.broker_us_per_event),
        insert: PhaseFigures::from(insert),
        update: PhaseFigures::from(update),
        unchanged: PhaseFigures::from(unchanged),
        per_customer: mode(EventsMode::PerCustomer),
        batch: mode(EventsMode::Batch),
        all_phases,
        small_p99_ms: small.map(|s| s.p99_ms),
        large_rss_to_body: large.map(|l| l.rss_to_body),
        scale_ratio: scale.map(|s| s.ratio_to_insert),
    }
}

/// Insert, update and unchanged on one worker, then the small-message latency on that same worker;
/// and the insert's event messages if they are one per customer.
async fn main_phases(
    rig: &mut Rig,
    args: &Args,
    bodies: &Bodies,
    deadline: impl Fn() -> Instant,
) -> anyhow::Result<(MainPhases, Vec<Captured>)> {
    let (insert, update, captured) = mode_phases(rig, args, bodies, &deadline).await?;
    // The same documents again under new batch ids: nothing may change and nothing may be published.
    let unchanged = throughput(
        rig,
        Batches {
            phase: "unchanged",
            tenant: TENANT,
            bodies: bodies.updates.clone(),
            customers: args.customers,
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
    Ok(((insert, update, unchanged, small), captured))
}

type MainPhases = (Throughput, Throughput, Throughput, Option<Small>);

/// Insert, then update, on a fresh worker; and the insert's event messages if they are one per
/// customer, for the `bare_publish` ceiling.
async fn mode_phases(
    rig: &mut Rig,
    args: &Args,
    bodies: &Bodies,
    deadline: impl Fn() -> Instant,
) -> anyhow::Result<(Throughput, Throughput, Vec<Captured>)> {
    let k = args.customers;
    if rig.events_mode == EventsMode::PerCustomer {
        rig.observer.capture(args.messages * k);
    }
    let insert = throughput(
        rig,
        Batches {
            phase: "insert",
            tenant: TENANT,
            bodies: bodies.inserts.clone(),
            customers: k,
            expect: Expect::Created,
        },
        deadline(),
    )
    .await;
    let captured = rig.observer.take_captured();
    let insert = insert?;
    let update = throughput(
        rig,
        Batches {
            phase: "update",
            tenant: TENANT,
            bodies: bodies.updates.clone(),
            customers: k,
            expect: Expect::Updated,
        },
        deadline(),
    )
    .await?;
    Ok((insert, update, captured))
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

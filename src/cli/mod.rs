//! The `baton` command line. The only place that reads files and prints.

mod admin;
mod client;
mod table;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use baton::dsl;
use baton::engine::Registry;
use baton::simulate::Simulation;

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Process orchestration over Kafka",
    after_help = admin::EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check process definitions; prints every error with file, line and column.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a definition as a Mermaid flowchart.
    Graph { file: PathBuf },
    /// Translate a BPMN 2.0 model (Camunda Modeler, bpmn.io) into a process
    /// definition; every element it cannot translate is reported with its
    /// id, name and line (see the README's "Importing BPMN").
    Import {
        /// The BPMN 2.0 XML file.
        file: PathBuf,
        /// Where the definition goes (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// A mapping file (TOML): topics of command types, event types of
        /// messages, commands of elements.
        #[arg(long)]
        mapping: Option<PathBuf>,
        /// The process to translate (its id), when the model holds several.
        #[arg(long)]
        process: Option<String>,
        /// Write the definition even when elements cannot be translated
        /// (flows into them become incidents) and exit 0 if it validates.
        #[arg(long)]
        keep_going: bool,
    },
    /// Write the event contract of definitions as AsyncAPI 3.1 JSON: the
    /// topics baton reads and writes, with every event and command (see the
    /// README's "Event contracts (AsyncAPI)").
    Asyncapi {
        /// Definitions (YAML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write the document here (one definition, or --merge).
        #[arg(short, long, conflicts_with = "out_dir")]
        output: Option<PathBuf>,
        /// Write one document per definition into this directory, as
        /// <process>.asyncapi.json.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// One document for all the definitions.
        #[arg(long, conflicts_with = "out_dir")]
        merge: bool,
        /// The topic domain events arrive on (one of baton's
        /// kafka.input_topics); without it the channel's address is left open.
        #[arg(long)]
        events_topic: Option<String>,
    },
    /// Run definitions in memory against a scenario (JSON Lines) on a virtual clock.
    Simulate {
        /// Definitions to deploy (the first is the one under test; add called processes).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The scenario: events, clock moves, operator actions and expectations.
        #[arg(long)]
        events: PathBuf,
        /// Print only the final state and the verdict.
        #[arg(long)]
        quiet: bool,
    },
    /// Run baton against Kafka (see the README's "Run against Kafka").
    Run {
        #[arg(long, default_value = "baton.toml")]
        config: PathBuf,
        /// Log as JSON lines instead of text (same as `log.format = "json"`).
        #[arg(long)]
        json_logs: bool,
    },
    /// Run the HTTP connector: call HTTP endpoints for command events and
    /// publish their outcomes (see the README's "HTTP connector").
    Connect {
        #[arg(long, default_value = "connectors.toml")]
        config: PathBuf,
        /// Log as JSON lines instead of text (same as `log.format = "json"`).
        #[arg(long)]
        json_logs: bool,
        /// Load and check the configuration (secrets and CA files
        /// included), print what it amounts to, and connect to nothing.
        #[arg(long)]
        check: bool,
    },
    /// Run the three examples on an in-process Kafka with simulated services.
    Demo {
        /// Seconds during which new instances start.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// New instances per second.
        #[arg(long, default_value_t = 20)]
        rate: u32,
        /// Share of payments the simulated provider declines (→ compensation).
        #[arg(long, default_value_t = 0.1)]
        decline_rate: f64,
        /// Share of commands no simulated service answers (→ timeouts, retries).
        #[arg(long, default_value_t = 0.05)]
        silence_rate: f64,
        /// Serve /healthz, /readyz and /metrics on this address while the demo runs.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Load a configuration with its BATON_* environment and its
    /// definitions as `baton run` does, connect to nothing, and print what
    /// it amounts to (JSON); exit 1 when a definition fails, 2 when the
    /// configuration does.
    Check {
        #[arg(long, default_value = "baton.toml")]
        config: PathBuf,
    },
    /// List the dead letters (kind, reason, origin), and with --replay
    /// publish the chosen ones again to where they came from (see the
    /// README's "Dead letters").
    DeadLetters {
        #[arg(long, default_value = "baton.toml")]
        config: PathBuf,
        /// Only letters of this kind (repeatable), e.g. instance-cap.
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// Only this partition of the dead-letter topic.
        #[arg(long)]
        partition: Option<i32>,
        /// Only offsets at or after this one.
        #[arg(long)]
        from: Option<i64>,
        /// Only offsets before this one.
        #[arg(long)]
        to: Option<i64>,
        /// Publish the listed letters' original records again.
        #[arg(long)]
        replay: bool,
    },
    /// Play the demo's simulated CRM, ERP, payment, warehouse, chat and ops
    /// systems against a Kafka that `baton run` processes use (the three
    /// examples deployed): start instances and answer their commands.
    Services {
        #[arg(long, default_value = "localhost:9092")]
        brokers: String,
        /// The topic the simulated systems publish domain events to.
        #[arg(long, default_value = crate::demo::EVENTS)]
        topic: String,
        /// Partitions of the event and command topics created when missing
        /// (the processes' `topics.partitions`).
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        /// New instances per second.
        #[arg(long, default_value_t = 5)]
        rate: u32,
        /// Seconds during which new instances start (0: until stopped).
        #[arg(long, default_value_t = 0)]
        seconds: u64,
        /// Share of payments the simulated provider declines (→ compensation).
        #[arg(long, default_value_t = 0.1)]
        decline_rate: f64,
        /// Share of commands no simulated service answers (→ timeouts, retries).
        #[arg(long, default_value_t = 0.05)]
        silence_rate: f64,
    },
    /// Exit 0 when a URL answers 2xx, 1 otherwise: a container health check
    /// (`HEALTHCHECK`) in an image without curl.
    Probe {
        #[arg(default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Measure throughput, latency, restore and memory against a baseline (see the README's "Performance").
    Bench {
        /// A Kafka to measure against (default: start Apache Kafka, installed by `scripts/kafka.sh install` or on first use).
        #[arg(long)]
        bootstrap_servers: Option<String>,
        /// Where the report, JSON and charts go.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
        /// A small smoke run (hundreds of orders, thousands of instances).
        #[arg(long)]
        quick: bool,
        /// Orders at full speed (six events, four commands each).
        #[arg(long)]
        orders: Option<u64>,
        /// Seconds of paced load at half of the full-speed rate.
        #[arg(long)]
        latency_seconds: Option<u64>,
        /// Instances in the changelog for the restore comparison.
        #[arg(long)]
        restore_instances: Option<u64>,
        /// Instance counts at which idle memory is measured (comma-separated).
        #[arg(long, value_delimiter = ',')]
        memory_instances: Option<Vec<u64>>,
        /// Partitions of every topic (shards).
        #[arg(long)]
        partitions: Option<i32>,
        /// Commit interval of baton and the baseline (e.g. 100ms).
        #[arg(long, value_parser = humantime::parse_duration)]
        commit_interval: Option<std::time::Duration>,
        /// Commit intervals at which half-load latency of baton and the
        /// passthrough is also measured (comma-separated; default 20ms,100ms).
        #[arg(long, value_delimiter = ',', value_parser = humantime::parse_duration)]
        latency_intervals: Option<Vec<std::time::Duration>>,
        /// Skip the full-speed run with the state phase's instances idle in the shards.
        #[arg(long)]
        no_loaded: bool,
        /// Most events per transaction.
        #[arg(long)]
        max_batch: Option<usize>,
        /// Run baton re-keying every event through the repartition topic
        /// (default: `runtime.in_place`, as the load is keyed by order).
        #[arg(long)]
        no_in_place: bool,
        /// A librdkafka option for every client, as KEY=VALUE (repeatable; e.g. security settings).
        #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
        kafka_options: Vec<String>,
        /// Measure scale-out instead: the order-to-cash load with 1, 2, 3 …
        /// processes of one group (see --processes), and the time until every
        /// shard runs again after one of them is killed.
        #[arg(long)]
        scale_out: bool,
        /// Process counts of --scale-out (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        processes: Vec<usize>,
        /// Internal: run one measured process from this spec.
        #[arg(long, hide = true)]
        worker: Option<PathBuf>,
    },
    /// Publish one event (a structured CloudEvent) to a topic.
    Send {
        #[arg(long, default_value = "localhost:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
        /// CloudEvents type.
        #[arg(long = "type")]
        kind: String,
        /// Event id (default: a fresh one).
        #[arg(long)]
        id: Option<String>,
        #[arg(long, default_value = "baton-send")]
        source: String,
        /// Kafka key (default: the id).
        #[arg(long)]
        key: Option<String>,
        /// Event data as JSON text.
        #[arg(long, conflicts_with = "file")]
        data: Option<String>,
        /// Event data from a JSON file.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    #[command(flatten)]
    Admin(admin::Command),
}

/// `baton.toml` with the `BATON_*` overrides of this process's environment.
fn load_config(path: &Path) -> Result<baton::config::Config> {
    let text = read(path)?;
    Ok(baton::config::Config::load(
        &path.display().to_string(),
        &text,
        std::env::vars(),
    )?)
}

/// Definition files named by the configuration (directories give their `*.yaml`).
fn definition_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Sets `stop` on Ctrl-C or SIGTERM (a container's stop signal), from a
/// thread of its own; `baton run` then commits the open transaction first.
fn stop_on_signal(stop: Arc<AtomicBool>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot set up the signal handler")?;
    std::thread::spawn(move || {
        rt.block_on(async {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                match signal(SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! {
                            _ = tokio::signal::ctrl_c() => {}
                            _ = term.recv() => {}
                        }
                    }
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
        });
        stop.store(true, Ordering::Relaxed);
    });
    Ok(())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Loads and validates definitions; prints every diagnostic and returns `None` if any failed.
fn load(files: &[PathBuf]) -> Result<Option<Registry>> {
    let mut registry = Registry::default();
    let mut failed = false;
    for f in files {
        let text = read(f)?;
        let name = f.display().to_string();
        match dsl::parse(&name, &text) {
            Ok(def) => {
                if let Err(e) = registry.deploy(def, &text) {
                    eprintln!("{name}: error: {e}");
                    failed = true;
                }
            }
            Err(diags) => {
                for d in &diags.0 {
                    eprintln!("{d}");
                }
                eprintln!(
                    "{name}: {} error{}",
                    diags.0.len(),
                    if diags.0.len() == 1 { "" } else { "s" }
                );
                failed = true;
            }
        }
    }
    Ok((!failed).then_some(registry))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Validate { files } => match load(&files)? {
            Some(_) => {
                for f in &files {
                    println!("{}: ok", f.display());
                }
                Ok(ExitCode::SUCCESS)
            }
            None => Ok(ExitCode::from(1)),
        },
        Cmd::Graph { file } => {
            let text = read(&file)?;
            match dsl::parse(&file.display().to_string(), &text) {
                Ok(def) => {
                    print!("{}", baton::diagram::mermaid(&def));
                    Ok(ExitCode::SUCCESS)
                }
                Err(diags) => {
                    eprintln!("{diags}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Cmd::Import {
            file,
            output,
            mapping,
            process,
            keep_going,
        } => import_bpmn(
            &file,
            output.as_deref(),
            mapping.as_deref(),
            process,
            keep_going,
        ),
        Cmd::Asyncapi {
            files,
            output,
            out_dir,
            merge,
            events_topic,
        } => asyncapi(
            &files,
            output.as_deref(),
            out_dir.as_deref(),
            merge,
            events_topic,
        ),
        Cmd::Simulate {
            files,
            events,
            quiet,
        } => {
            let Some(registry) = load(&files)? else {
                return Ok(ExitCode::from(1));
            };
            let scenario = read(&events)?;
            let mut sim = Simulation::new(registry);
            let result = sim.run(&events.display().to_string(), &scenario);
            if !quiet {
                print!("{}", sim.render());
                println!();
            }
            println!("final state:");
            print!("{}", sim.summary());
            match result {
                Ok(()) => {
                    println!("scenario passed: {} commands", sim.commands.len());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("scenario failed: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Cmd::Check { config } => {
            let cfg = load_config(&config)?;
            let Some(registry) = load(&definition_files(&cfg.definitions.paths)?)? else {
                return Ok(ExitCode::from(1));
            };
            let summary = serde_json::json!({
                "instance_id": cfg.instance_id(),
                "group_id": cfg.kafka.group_id,
                "group_protocol": format!("{:?}", cfg.kafka.group_protocol).to_lowercase(),
                "bootstrap_servers": cfg.kafka.bootstrap_servers,
                "input_topics": cfg.kafka.input_topics,
                "partitions": cfg.topics.partitions,
                "command_topics": baton::runtime::command_topics(&registry),
                "commit_interval_ms": cfg.runtime.commit_interval.as_millis() as u64,
                "transaction_timeout_ms": cfg
                    .kafka
                    .producer_option("transaction.timeout.ms")
                    .map_or(Ok(baton::kafka::TRANSACTION_TIMEOUT_MS), |v| v.parse::<u64>())
                    .context("kafka transaction.timeout.ms is not a number")?,
                "admin_listen": cfg.admin.enabled.then(|| cfg.admin.listen.to_string()),
                "admin_advertised": cfg.admin.advertised(),
                "token_variables": cfg.admin.tokens.iter().filter_map(|t| t.env.clone()).collect::<Vec<_>>(),
                "otlp_endpoint": cfg.telemetry.otlp_endpoint,
                "definitions": registry.all().map(|d| format!("{} v{}", d.process, d.version)).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::DeadLetters {
            config,
            kinds,
            partition,
            from,
            to,
            replay,
        } => {
            let cfg = load_config(&config)?;
            let filter = baton::deadletters::Filter {
                kinds,
                partition,
                from,
                to,
            };
            let letters = baton::deadletters::read(&cfg, &filter)?;
            for d in &letters {
                println!(
                    "{}/{}  {}  from {}/{}/{}  {}",
                    d.partition,
                    d.offset,
                    d.kind,
                    d.origin_topic.as_deref().unwrap_or("?"),
                    d.origin_partition.map_or("?".into(), |p| p.to_string()),
                    d.origin_offset.map_or("?".into(), |o| o.to_string()),
                    d.reason
                );
            }
            if !replay {
                println!("{} dead letters", letters.len());
                return Ok(ExitCode::SUCCESS);
            }
            let refused = baton::deadletters::replay(&cfg, &letters)?;
            for (d, why) in &refused {
                eprintln!("{}/{} not replayed: {why}", d.partition, d.offset);
            }
            println!(
                "replayed {} of {} dead letters",
                letters.len() - refused.len(),
                letters.len()
            );
            Ok(if refused.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Run { config, json_logs } => {
            let mut cfg = load_config(&config)?;
            if json_logs {
                cfg.log.format = baton::config::LogFormat::Json;
            }
            baton::telemetry::init_logs(&cfg.log);
            let files = definition_files(&cfg.definitions.paths)?;
            let Some(registry) = load(&files)? else {
                return Ok(ExitCode::from(1));
            };
            let stop = Arc::new(AtomicBool::new(false));
            stop_on_signal(stop.clone())?;
            let traces = baton::telemetry::init_traces(&cfg.telemetry, &cfg.instance_id())
                .context("cannot set up trace export")?;
            let stats = Arc::new(baton::runtime::Stats::default());
            let admin_cfg = cfg.admin.clone();
            // The admin port is taken first: one in use is said at once,
            // not after the runtime has joined the cluster.
            let listener = admin_cfg
                .enabled
                .then(|| baton::admin::bind(admin_cfg.listen))
                .transpose()?;
            let group = cfg.kafka.group_id.clone();
            let mut runtime = baton::runtime::Runtime::new(cfg, registry, stats.clone())
                .context("cannot start the runtime")?;
            if let Some(t) = &traces {
                runtime = runtime.with_tracer(t.tracer(&group));
            }
            let admin = if let Some(listener) = listener {
                let mut tokens = Vec::new();
                for t in &admin_cfg.tokens {
                    let secret = t
                        .secret()
                        .map_err(|why| anyhow::anyhow!("admin token `{}`: {why}", t.name))?;
                    tokens.push((t.name.clone(), t.role, secret));
                }
                let api = baton::admin::api::Api::for_runtime(
                    &runtime,
                    baton::admin::api::Tokens::new(tokens),
                    admin_cfg.advertised(),
                )
                .context("cannot start the admin API")?;
                Some(baton::admin::serve_on(
                    listener,
                    stats.metrics.clone(),
                    runtime.health(),
                    admin_cfg.stall_after,
                    Some(api),
                )?)
            } else {
                None
            };
            let result = runtime.run(stop).context("the runtime stopped");
            drop(admin);
            if let Some(t) = traces {
                t.shutdown();
            }
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Connect {
            config,
            json_logs,
            check,
        } => {
            let text = read(&config)?;
            let mut setup =
                baton::connect::load(&config.display().to_string(), &text, std::env::vars())?;
            if check {
                let summary = serde_json::json!({
                    "instance_id": setup.instance_id,
                    "transactional_id": setup.transactional_id(),
                    "group_id": setup.client.kafka.group_id,
                    "bootstrap_servers": setup.client.kafka.bootstrap_servers,
                    "command_topics": setup.client.kafka.input_topics,
                    "result_topics": setup.result_topics(),
                    "endpoints": setup.endpoints.iter().map(|e| serde_json::json!({
                        "name": e.name,
                        "url": e.url,
                        "timeout_ms": e.timeout.as_millis() as u64,
                        "concurrency": e.concurrency,
                    })).collect::<Vec<_>>(),
                    "commands": setup.routes.values().map(|r| serde_json::json!({
                        "type": r.kind,
                        "method": r.method.as_str(),
                        "result_topic": r.result_topic,
                    })).collect::<Vec<_>>(),
                    "admin_listen": setup.admin.enabled.then(|| setup.admin.listen.to_string()),
                });
                println!("{}", serde_json::to_string_pretty(&summary)?);
                return Ok(ExitCode::SUCCESS);
            }
            if json_logs {
                setup.log.format = baton::config::LogFormat::Json;
            }
            baton::telemetry::init_logs(&setup.log);
            let stop = Arc::new(AtomicBool::new(false));
            stop_on_signal(stop.clone())?;
            let admin = setup.admin.clone();
            let connector =
                baton::connect::Connector::new(setup).context("cannot start the connector")?;
            let port = if admin.enabled {
                Some(connector.serve(admin.listen, admin.stall_after)?)
            } else {
                None
            };
            let result = connector.run(stop).context("the connector stopped");
            drop(port);
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo {
            seconds,
            rate,
            decline_rate,
            silence_rate,
            admin,
        } => {
            baton::telemetry::init_logs(&baton::config::Log {
                level: "error".into(),
                ..Default::default()
            });
            // Traces when the standard OTEL_EXPORTER_OTLP_* variables ask for them.
            let telemetry = baton::config::Telemetry {
                service_name: "baton-demo".into(),
                ..Default::default()
            };
            let traces = baton::telemetry::init_traces(&telemetry, "demo-1")
                .context("cannot set up trace export")?;
            let opts = crate::demo::Options {
                seconds,
                rate,
                decline_rate,
                silence_rate,
                admin,
                admin_token: fresh_token(),
                tracer: traces
                    .as_ref()
                    .map_or_else(baton::telemetry::Tracer::disabled, |t| {
                        t.tracer("baton-demo")
                    }),
                ..Default::default()
            };
            if traces.is_some() {
                println!("exporting traces over OTLP (OTEL_EXPORTER_OTLP_* variables)");
            }
            if let Some(a) = admin {
                println!("metrics on http://{a}/metrics");
                println!(
                    "admin API on http://{a}/api/v1 (operator token for this run):\n  export BATON_ADMIN_URL=http://{a} BATON_TOKEN={}",
                    opts.admin_token
                );
            }
            println!(
                "baton demo: order-to-cash, customer-onboarding and incident-response on an in-process Kafka ({seconds}s of load at {rate}/s, then {}s to drain)",
                opts.drain_seconds
            );
            let summary = crate::demo::run(&opts, &mut |line| println!("{line}"));
            if let Some(t) = traces {
                t.shutdown();
            }
            println!("\n{}", crate::demo::render(&summary?));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Services {
            brokers,
            topic,
            partitions,
            rate,
            seconds,
            decline_rate,
            silence_rate,
        } => {
            baton::telemetry::init_logs(&baton::config::Log::default());
            let world = crate::demo::World {
                bootstrap: brokers,
                topic,
                partitions,
                opts: crate::demo::Options {
                    seconds,
                    rate,
                    decline_rate,
                    silence_rate,
                    ..Default::default()
                },
            };
            let stop = Arc::new(AtomicBool::new(false));
            stop_on_signal(stop.clone())?;
            println!(
                "baton services: simulated systems on {} (events to {}, {rate} new instances/s)",
                world.bootstrap, world.topic
            );
            let started = crate::demo::world(&world, &stop, &mut |line| println!("{line}"))?;
            println!("stopped after starting {started} instances");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe { url, timeout } => match baton::admin::probe(&url, timeout) {
            Ok(status) => {
                println!("{url}: {status}");
                Ok(ExitCode::SUCCESS)
            }
            Err(why) => {
                eprintln!("{url}: {why}");
                Ok(ExitCode::from(1))
            }
        },
        Cmd::Bench {
            bootstrap_servers,
            out,
            quick,
            orders,
            latency_seconds,
            restore_instances,
            memory_instances,
            partitions,
            commit_interval,
            latency_intervals,
            no_loaded,
            max_batch,
            no_in_place,
            kafka_options,
            scale_out,
            processes,
            worker,
        } => {
            if let Some(spec) = worker {
                baton::telemetry::init_logs(&baton::config::Log {
                    level: "warn,rdkafka=error".into(),
                    ..Default::default()
                });
                crate::bench::worker::serve(&spec).context("benchmark worker")?;
                return Ok(ExitCode::SUCCESS);
            }
            baton::telemetry::init_logs(&baton::config::Log {
                level: "error".into(),
                ..Default::default()
            });
            let exe = std::env::current_exe().context("cannot find the baton executable")?;
            let mut opts = if quick {
                crate::bench::Options::quick(exe)
            } else {
                crate::bench::Options::full(exe)
            };
            opts.bootstrap_servers = bootstrap_servers;
            opts.out = out;
            opts.orders = orders.unwrap_or(opts.orders);
            opts.latency_seconds = latency_seconds.unwrap_or(opts.latency_seconds);
            opts.restore_instances = restore_instances.unwrap_or(opts.restore_instances);
            opts.memory_instances = memory_instances.unwrap_or(opts.memory_instances);
            opts.partitions = partitions.unwrap_or(opts.partitions);
            opts.commit_interval = commit_interval.unwrap_or(opts.commit_interval);
            opts.latency_intervals = latency_intervals.unwrap_or(opts.latency_intervals);
            opts.loaded = !no_loaded;
            opts.max_batch = max_batch.unwrap_or(opts.max_batch);
            opts.in_place = !no_in_place;
            for kv in kafka_options {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--kafka-option {kv}: expected KEY=VALUE"))?;
                opts.kafka_options.insert(k.to_string(), v.to_string());
            }
            if scale_out {
                // Twelve shards unless --partitions says otherwise: room for
                // the processes to divide the work.
                opts.partitions = partitions.unwrap_or(12);
                let scale = crate::bench::scale::ScaleOptions {
                    processes,
                    failover: true,
                    failover_seconds: if quick { 12 } else { 30 },
                };
                let report = with_progress(|p| crate::bench::scale::run(&opts, &scale, p))?;
                println!("{}", report.table());
                println!("written to {}", opts.out.display());
                return Ok(ExitCode::SUCCESS);
            }
            let report = with_progress(|p| crate::bench::run(&opts, p))?;
            println!("{}", report.table());
            println!("written to {}", opts.out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Send {
            brokers,
            topic,
            kind,
            id,
            source,
            key,
            data,
            file,
        } => {
            let data: serde_json::Value = match (data, file) {
                (Some(d), _) => serde_json::from_str(&d).context("--data is not JSON")?,
                (None, Some(f)) => serde_json::from_str(&read(&f)?)
                    .with_context(|| format!("{} is not JSON", f.display()))?,
                (None, None) => serde_json::Value::Null,
            };
            let now = baton::runtime::now_ms();
            let id = id.unwrap_or_else(|| format!("{source}-{now}"));
            let payload = baton::wire::cloudevents::structured(&id, &kind, &source, now, &data);
            let producer = baton::kafka::PlainProducer::new(&brokers)?;
            producer.send(&baton::kafka::Outgoing {
                topic: topic.clone(),
                partition: None,
                key: key.unwrap_or_else(|| id.clone()).into_bytes(),
                payload: Some(payload),
                headers: vec![(
                    "content-type".into(),
                    b"application/cloudevents+json".to_vec(),
                )],
            })?;
            producer.flush()?;
            println!("sent {kind} ({id}) to {topic}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Admin(cmd) => Ok(admin::run(cmd)),
    }
}

/// `baton import`: BPMN in, a definition's YAML out, every problem on stderr.
fn import_bpmn(
    file: &Path,
    output: Option<&Path>,
    mapping: Option<&Path>,
    process: Option<String>,
    keep_going: bool,
) -> Result<ExitCode> {
    let name = file.display().to_string();
    let xml = read(file)?;
    let mapping = match mapping {
        Some(m) => baton::bpmn::Mapping::from_toml(&m.display().to_string(), &read(m)?)?,
        None => baton::bpmn::Mapping::default(),
    };
    let opts = baton::bpmn::Options {
        process,
        mapping,
        keep_going,
    };
    let imported = match baton::bpmn::import(&name, &xml, &opts) {
        Ok(i) => i,
        Err(e @ baton::bpmn::ImportError::Untranslatable { .. }) => {
            eprintln!("{e}");
            eprintln!(
                "{name}: not imported (--keep-going writes the definition anyway, with incidents where elements are missing)"
            );
            return Ok(ExitCode::from(1));
        }
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    for p in &imported.problems {
        eprintln!("{}", p.render(&name));
    }
    match output {
        Some(out) => {
            std::fs::write(out, &imported.yaml)
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "{name}: process `{}` written to {}",
                imported.process,
                out.display()
            );
        }
        None => print!("{}", imported.yaml),
    }
    Ok(if imported.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `baton asyncapi`: the event contracts of definitions.
fn asyncapi(
    files: &[PathBuf],
    output: Option<&Path>,
    out_dir: Option<&Path>,
    merge: bool,
    events_topic: Option<String>,
) -> Result<ExitCode> {
    let mut defs = Vec::new();
    for f in files {
        let text = read(f)?;
        match dsl::parse(&f.display().to_string(), &text) {
            Ok(def) => defs.push(def),
            Err(diags) => {
                eprintln!("{diags}");
                return Ok(ExitCode::from(1));
            }
        }
    }
    let opts = baton::asyncapi::Options { events_topic };
    let write = |path: &Path, doc: &serde_json::Value| -> Result<()> {
        let text = serde_json::to_string_pretty(doc)? + "\n";
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for def in &defs {
            let path = dir.join(format!("{}.asyncapi.json", def.process));
            write(&path, &baton::asyncapi::document(&[def], &opts))?;
            println!("{}", path.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if defs.len() > 1 && !merge {
        anyhow::bail!(
            "{} definitions: give --merge for one document, or --out-dir for one each",
            defs.len()
        );
    }
    let all: Vec<&baton::engine::Definition> = defs.iter().collect();
    let doc = baton::asyncapi::document(&all, &opts);
    match output {
        Some(path) => write(path, &doc)?,
        None => println!("{}", serde_json::to_string_pretty(&doc)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `baton bench` with a progress bar on stderr.
/// Runs a benchmark with a progress bar on the terminal.
fn with_progress<T>(
    run: impl FnOnce(&mut dyn FnMut(crate::bench::Progress)) -> Result<T, crate::bench::BenchError>,
) -> Result<T> {
    use indicatif::{ProgressBar, ProgressStyle};
    let bar = ProgressBar::new(0);
    let counted =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg} {wide_bar} {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    let open = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg} {pos}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let report = run(&mut |p| match p {
        crate::bench::Progress::Phase { name, total } => {
            bar.set_style(if total > 0 {
                counted.clone()
            } else {
                open.clone()
            });
            bar.set_length(total);
            bar.set_position(0);
            bar.set_message(name);
        }
        crate::bench::Progress::Step { done } => bar.set_position(done),
    });
    bar.finish_and_clear();
    report.context("baton bench")
}

/// A random token for one demo run: 128 bits from the standard library's
/// randomly keyed hasher.
fn fresh_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let half = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    };
    format!("{:016x}{:016x}", half(), half())
}

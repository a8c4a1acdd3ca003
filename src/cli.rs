//! Command-line interface: parses arguments and dispatches to the library.

use std::path::PathBuf;

use std::io::Write as _;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, LoadOptions, Loaded};
use crate::error::Error;

#[derive(Debug, Parser)]
#[command(
    name = "ecs-capacity-agent",
    about = "Observe this ECS container instance, report its spare capacity, and drain it before it goes away.",
    version
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// One JSON object, for scripts.
    Json,
}

/// `--config FILE`, the same on every subcommand that reads the configuration.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigFile {
    /// Configuration file. When the default file (/etc/ecs-capacity-agent/config.toml) does not
    /// exist, the built-in defaults are used (local sinks only).
    #[arg(long, short, env = "ECS_CAPACITY_AGENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: observe the host every interval, publish capacity to the configured sinks and
    /// watch instance metadata for interruption notices. Ends cleanly on SIGTERM or SIGINT.
    Run {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Observe this host once and print what it has registered, what its tasks reserve and use, and
    /// how much more fits.
    Status {
        #[command(flatten)]
        config: ConfigFile,
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Validate the configuration and print every effective value with where it came from
    /// (default, ecs.config, file or environment). Exits 78 when the configuration is invalid.
    CheckConfig {
        #[command(flatten)]
        config: ConfigFile,
        /// The same as --config FILE, kept for existing scripts; it wins over --config and
        /// ECS_CAPACITY_AGENT_CONFIG.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Drain this instance in ECS (DRAINING), as the daemon does on a notice. With --wait, follow
    /// its tasks until they are gone (tasks remaining, elapsed, deadline).
    Drain {
        #[command(flatten)]
        config: ConfigFile,
        /// Wait until the tasks are gone.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (e.g. "10m"); the instance stays DRAINING.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// This instance's EC2 id (default: drain.instance_id).
        #[arg(long, value_name = "ID")]
        instance_id: Option<String>,
    },
    /// Return this instance to ACTIVE in ECS.
    Activate {
        #[command(flatten)]
        config: ConfigFile,
        /// This instance's EC2 id (default: drain.instance_id).
        #[arg(long, value_name = "ID")]
        instance_id: Option<String>,
    },
    /// Capacity of a whole cluster with a per-host breakdown: live from ECS/EC2 with --cluster, or
    /// offline from the AWS CLI's own JSON output ("what if" with data you already have). Only ACTIVE
    /// container instances count.
    Cluster(ClusterArgs),
    /// Print the version.
    Version,
}

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Read the cluster live from ECS and EC2 (credentials and region from the standard AWS chain).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["container_instances", "task_definitions", "instance_types", "tasks"])]
    pub cluster: Option<String>,
    /// With --cluster: plan for these task definition families (latest ACTIVE revision) instead of
    /// the task definitions of the cluster's services. Repeatable.
    #[arg(
        long = "task-definition-family",
        value_name = "FAMILY",
        requires = "cluster"
    )]
    pub families: Vec<String>,
    /// Output of `aws ecs describe-container-instances`.
    #[arg(long, value_name = "FILE", required_unless_present = "cluster")]
    pub container_instances: Option<PathBuf>,
    /// Output of `aws ecs describe-task-definition`: a task shape to plan for. Repeatable.
    #[arg(long = "task-definition", value_name = "FILE")]
    pub task_definitions: Vec<PathBuf>,
    /// Output of `aws ec2 describe-instance-types`, for ENI limits.
    #[arg(long, value_name = "FILE")]
    pub instance_types: Option<PathBuf>,
    /// Output of `aws ecs describe-tasks`, to count the ENIs awsvpc tasks hold per instance.
    #[arg(long, value_name = "FILE")]
    pub tasks: Option<PathBuf>,
    /// Scale out when ContainerCapacity is below this.
    #[arg(long, value_name = "N", default_value_t = 1.0)]
    pub scale_out_threshold: f64,
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

fn cluster(args: ClusterArgs) -> Result<(), Error> {
    if !(args.scale_out_threshold.is_finite() && args.scale_out_threshold > 0.0) {
        return Err(Error::Input(format!(
            "--scale-out-threshold {} must be a positive number",
            args.scale_out_threshold
        )));
    }
    let inputs = match (&args.cluster, &args.container_instances) {
        (Some(name), _) => runtime()?.block_on(async {
            let sdk = crate::aws::sdk_config().await;
            crate::cluster::live::fetch(&sdk, name, &args.families).await
        })?,
        (None, Some(file)) => crate::cluster::files::load(&crate::cluster::files::Paths {
            container_instances: file,
            task_definitions: &args.task_definitions,
            instance_types: args.instance_types.as_deref(),
            tasks: args.tasks.as_deref(),
        })?,
        (None, None) => {
            return Err(Error::Input(
                "give --cluster NAME or --container-instances FILE".into(),
            ));
        }
    };
    let out = crate::cluster::calculate(&inputs, args.scale_out_threshold);
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let written = match args.output {
        Output::Table => stdout.write_all(out.to_table().as_bytes()),
        Output::Json => out.write_json(&mut stdout),
    }
    .and_then(|()| stdout.flush());
    match written {
        // A reader that stops early (`| head`) is not an error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Unavailable(format!(
            "cannot write the report to stdout: {e}"
        ))),
        _ => Ok(()),
    }
}

/// `drain` and `activate`: with the configuration loaded and this instance's id resolved (flag,
/// config or IMDS), runs `act` and prints the drain's status.
fn on_this_instance(
    config: ConfigFile,
    instance_id: Option<String>,
    act: impl AsyncFnOnce(
        &config::Config,
        crate::instance_id::InstanceId,
    ) -> Result<crate::drain::DrainStatus, Error>,
) -> Result<(), Error> {
    let loaded = load_config(config.config.as_deref())?;
    crate::logging::init(&loaded.config.log);
    runtime()?.block_on(async {
        let id = crate::drain::command::resolve_instance_id(instance_id.as_deref(), &loaded.config)
            .await?;
        let status = act(&loaded.config, id).await?;
        println!("{}", status.summary());
        Ok(())
    })
}

/// Loads and validates the configuration; the only place commands get one.
pub fn load_config(path: Option<&std::path::Path>) -> Result<Loaded, Error> {
    Ok(config::load(LoadOptions::from_process(path))?)
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

pub fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Version => {
            println!("ecs-capacity-agent {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::CheckConfig { config, file } => {
            let loaded = load_config(file.or(config.config).as_deref())?;
            match &loaded.file {
                Some(p) => println!("# configuration file: {}", p.display()),
                None => println!(
                    "# no configuration file at {}: built-in defaults",
                    config::DEFAULT_CONFIG_PATH
                ),
            }
            print!("{}", loaded.describe());
            Ok(())
        }
        Command::Run { config } => {
            let loaded = load_config(config.config.as_deref())?;
            crate::logging::init(&loaded.config.log);
            runtime()?.block_on(crate::daemon::run(loaded, crate::daemon::shutdown_signal()))
        }
        Command::Drain {
            config,
            wait,
            timeout,
            instance_id,
        } => on_this_instance(config, instance_id, async |cfg, id| {
            crate::drain::command::drain(cfg, id, wait, timeout).await
        }),
        Command::Activate {
            config,
            instance_id,
        } => on_this_instance(config, instance_id, async |cfg, id| {
            crate::drain::command::activate(cfg, id).await
        }),
        Command::Cluster(args) => cluster(args),
        Command::Status { config, output } => {
            let loaded = load_config(config.config.as_deref())?;
            crate::logging::init(&loaded.config.log);
            runtime()?.block_on(async {
                let mut status = crate::daemon::observe_once(&loaded.config).await?;
                // The daemon's drain, as its state file records it. A state file that cannot be
                // read leaves the drain out of the report and fails the command, naming the file.
                let drain = crate::drain::status_from_disk(&loaded.config.agent.state_dir);
                status.drain = drain.as_ref().ok().cloned();
                match output {
                    Output::Table => print!("{}", status.to_table()),
                    Output::Json => println!("{}", status.to_json()),
                }
                drain.map(|_| ()).map_err(|e| match e {
                    crate::drain::StateError::Parse { .. } => Error::Input(e.to_string()),
                    e => Error::NoInput(e.to_string()),
                })
            })
        }
    }
}

//! edge-lb binary: parse the command line (pingora's `Opt`: `-c conf.yaml`, `-u` upgrade,
//! `-d` daemon, `-t` test; and the workspace's `--set`, `--check-config`, `--version`),
//! load the configuration's layers, build the server, run until signalled. A configuration
//! error exits 2 naming the key and its layer.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use pingora_core::server::configuration::{Opt, ServerConf};

/// jemalloc rather than glibc's malloc: a tunnel's allocations (its task,
/// buffers, table entries) fit jemalloc's size classes with less slack, so
/// an open tunnel costs ~13 % less memory (0.54× HAProxy's against 0.62×;
/// docs/performance.md, "edge-lb on jemalloc"). Its CPU per message and
/// per setup moved within the runs' scatter.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "edge-lb",
    version = settings::version!(),
    about = "Edge load balancer: sticky quiz routing with bounded-load consistent hashing"
)]
struct Cli {
    #[command(flatten)]
    opt: Opt,
    #[command(flatten)]
    settings: settings::ConfigArgs,
}

fn main() -> ExitCode {
    // pingora's `Opt` names its command `basic`; flattened, its attributes would rename
    // ours, so the name is set again on the built command.
    let matches = Cli::command().name("edge-lb").get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let Some(path) = cli.opt.conf.clone() else {
        eprintln!(
            "usage: edge-lb -c <config.yaml> [-u] [-d] [-t] [--set KEY=VALUE] [--check-config]"
        );
        return ExitCode::from(settings::EXIT_INVALID);
    };
    let loaded = load(&path, &cli.settings);
    let (server_conf, edge, layers, set) = match loaded {
        Ok(l) => l,
        Err(e) => {
            eprintln!("edge-lb: {e}");
            return ExitCode::from(settings::EXIT_INVALID);
        }
    };
    // The logger's format is a configuration key, so it is installed once every layer is read.
    if let Err(e) = edge_lb::logs::init(edge.log_format) {
        eprintln!("edge-lb: logger: {e}");
        return ExitCode::FAILURE;
    }
    if cli.settings.check_config {
        print!("{}", edge_lb::config::SCHEME.render(&layers));
        return ExitCode::SUCCESS;
    }
    if cli.opt.test {
        println!("configuration {path} is valid");
        return ExitCode::SUCCESS;
    }
    edge_lb::config::set_command_line(set);
    let built = edge_lb::build(edge_lb::BuildOptions {
        server_conf,
        edge,
        config_path: Some(path.into()),
        opt: Some(cli.opt),
        handle_sighup: true,
    });
    match built {
        Ok((server, _cluster)) => server.run_forever(),
        Err(e) => {
            eprintln!("edge-lb: {e}");
            ExitCode::FAILURE
        }
    }
}

type Loaded = (
    ServerConf,
    edge_lb::EdgeConfig,
    settings::Layers,
    Vec<settings::Override>,
);

/// Every layer of the configuration, pingora's keys, the admin token file readable and the
/// source addresses this host's (what a start would find wrong, found before starting).
fn load(path: &str, args: &settings::ConfigArgs) -> anyhow::Result<Loaded> {
    let set = args.overrides()?;
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("config file {path}: {e}"))?;
    let (edge, layers) =
        edge_lb::EdgeConfig::layered(path, &text, &|name| std::env::var(name).ok(), &set)?;
    let server_conf = ServerConf::from_yaml(&text)
        .map_err(|e| anyhow::anyhow!("config file {path}: pingora configuration: {e}"))?;
    edge.clone().read_admin_token()?.check_source_addresses()?;
    Ok((server_conf, edge, layers, set))
}

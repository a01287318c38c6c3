//! edge-lb binary: parse the command line (pingora's `Opt`: `-c conf.yaml`, `-u` upgrade,
//! `-d` daemon, `-t` test), build the server, run until signalled.

use clap::Parser;
use pingora_core::server::configuration::Opt;

fn main() -> anyhow::Result<()> {
    let opt = Opt::parse();
    let path = opt
        .conf
        .clone()
        .ok_or_else(|| anyhow::anyhow!("usage: edge-lb -c <config.yaml> [-u] [-d] [-t]"))?;
    let text = std::fs::read_to_string(&path)?;
    let (server_conf, edge) = edge_lb::parse_config(&text)?;
    // The logger's format is a configuration key, so it is installed once the file is read.
    edge_lb::logs::init(edge.log_format).map_err(|e| anyhow::anyhow!("logger: {e}"))?;
    if opt.test {
        println!("configuration {path} is valid");
        return Ok(());
    }
    let (server, _cluster) = edge_lb::build(edge_lb::BuildOptions {
        server_conf,
        edge,
        config_path: Some(path.into()),
        opt: Some(opt),
        handle_sighup: true,
    })?;
    server.run_forever()
}

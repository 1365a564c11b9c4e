//! `qmesh serve`: load the config, bind, print the address, serve until SIGINT/SIGTERM.

use clap::Args;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use qmesh::config::{Config, LogFormat};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (worker sockets, /otel, /health). Use 0.0.0.0 to accept remote workers.
    #[arg(long, env = "QMESH_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address of the HTTP trigger-route listener (`[http] listen`; default 127.0.0.1:3111).
    #[arg(long, env = "QMESH_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Address of the realtime-route listener for browsers (`[realtime] listen`; default 127.0.0.1:3113).
    #[arg(long, env = "QMESH_REALTIME_LISTEN")]
    realtime_listen: Option<SocketAddr>,
    /// Address of the streams client socket (`[streams] listen`; default 127.0.0.1:3112).
    #[arg(long, env = "QMESH_STREAMS_LISTEN")]
    streams_listen: Option<SocketAddr>,
    /// Home of the embedded store.
    #[arg(long, env = "QMESH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Optional TOML config file; every key has a default.
    #[arg(long, env = "QMESH_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, env = "QMESH_LOG_FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Join a cluster on these NATS servers (`[cluster] urls`; repeat or
    /// comma-separate). Off by default: one engine on its embedded store.
    #[arg(long, env = "QMESH_CLUSTER", value_delimiter = ',')]
    cluster: Vec<String>,
}

pub fn run(args: ServeArgs) -> ExitCode {
    let mut config = match &args.config {
        Some(path) => match Config::from_file(path) {
            Ok(c) => c,
            Err(e) => return fail(&e.to_string()),
        },
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(listen) = args.http_listen {
        config.http.listen = listen;
    }
    if let Some(listen) = args.realtime_listen {
        config.realtime.listen = listen;
    }
    if let Some(listen) = args.streams_listen {
        config.streams.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if !args.cluster.is_empty() {
        config.cluster.urls = args.cluster;
    }
    if let Some(f) = args.log_format.as_deref() {
        config.log.format = if f == "json" {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
    }
    qmesh::logging::init(config.log.format);
    if let Err(e) = std::fs::create_dir_all(&config.data_dir) {
        return fail(&format!(
            "cannot create data dir {}: {e}",
            config.data_dir.display()
        ));
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        // The engine (and its HTTP listener) first: a client that waits for
        // the worker port to accept (iii's CI polls it) then finds every
        // other port bound too.
        let listen = config.listen;
        let engine = match qmesh::Engine::start(config).await {
            Ok(engine) => engine,
            Err(e) => return fail(&e.to_string()),
        };
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => return fail(&format!("cannot listen on {listen}: {e}")),
        };
        // Ready: the store is open, every module started, HTTP routes served.
        match listener.local_addr() {
            // One line, read by scripts and tests (which may stop reading
            // after it): the worker listener first, then the public ones.
            Ok(addr) => println!(
                "qmesh listening on ws://{addr} realtime=ws://{} http=http://{}",
                engine.realtime_addr(),
                engine.http_addr()
            ),
            Err(e) => return fail(&format!("cannot read the listening address: {e}")),
        }
        let _ = std::io::stdout().flush();
        match engine.serve(listener, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("server error: {e}")),
        }
    })
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("qmesh: {msg}");
    ExitCode::FAILURE
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

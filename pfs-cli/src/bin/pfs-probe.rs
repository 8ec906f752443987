//! `pfs-probe`: a scriptable pfs client for tests and diagnostics. It reads one command per
//! line on standard input and answers each with one line on standard output, so a test can
//! drive several client processes step by step without sleeping:
//!
//! ```text
//! session                      -> ok <session id, hex>
//! create PATH                  -> ok            open PATH -> ok
//! write OFF LEN BYTE           -> ok LEN        (LEN copies of BYTE, 0-255)
//! read OFF LEN                 -> ok <hex of the bytes read>
//! readsum OFF LEN              -> ok <bytes read> <sha256>
//! fsync | close                -> ok
//! truncate SIZE                -> ok
//! size                         -> ok <size>
//! id                           -> ok <file id>
//! tokens                       -> ok <range>:<R|W> ...
//! stats                        -> ok acquires=N revokes=N read_hits=N ...
//! exit
//! ```
//! Errors answer `err <code> <message>`. Revokes handled are reported on standard error.

use clap::Parser;
use pfs_cli::tool;
use pfs_client::{Client, ClientOptions, CreateOptions, Error, File, Mode, Result};
use std::path::PathBuf;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A scriptable pfs client (commands on stdin, answers on stdout).
#[derive(Parser)]
#[command(name = "pfs-probe", version)]
struct Args {
    #[arg(long, env = "PFS_CONFIG")]
    config: Option<PathBuf>,
}

fn main() {
    pfs_common::logging::init();
    let args = Args::parse();
    let rt = tool::runtime().unwrap_or_else(|e| tool::die("pfs-probe", &e));
    if let Err(e) = rt.block_on(run(args)) {
        tool::die("pfs-probe", &e);
    }
}

async fn run(args: Args) -> pfs_cli::Result<()> {
    let client = Client::connect(ClientOptions::from_config(&*tool::load_config(args.config)?)?).await?;
    client.on_revoke(|ev| eprintln!("revoke file {} {} {:?}", ev.file, ev.range, ev.wanted));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    let mut file: Option<File> = None;
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"exit") {
            break;
        }
        let answer = match command(&client, &mut file, &words).await {
            Ok(s) if s.is_empty() => "ok".to_string(),
            Ok(s) => format!("ok {s}"),
            Err(e) => format!("err {:?} {}", e.code(), e.to_string().replace('\n', " ")),
        };
        out.write_all(format!("{answer}\n").as_bytes()).await.ok();
        out.flush().await.ok();
    }
    if let Some(f) = file.take() {
        if let Err(e) = f.close().await {
            eprintln!("closing the open file: {e}");
        }
    }
    tool::close(&client).await;
    Ok(())
}

fn num(words: &[&str], i: usize) -> Result<u64> {
    words.get(i).and_then(|w| w.parse().ok()).ok_or_else(|| Error::Invalid(format!("argument {i} must be a number")))
}

async fn command(client: &Client, file: &mut Option<File>, words: &[&str]) -> Result<String> {
    let need = |f: &Option<File>| f.clone().ok_or_else(|| Error::Invalid("no file open".into()));
    match words.first().copied().unwrap_or("") {
        "session" => Ok(format!("{:x}", client.session()?)),
        "create" => {
            *file = Some(client.create(words.get(1).copied().unwrap_or("/"), &CreateOptions::default()).await?);
            Ok(String::new())
        }
        "open" => {
            *file = Some(client.open(words.get(1).copied().unwrap_or("/")).await?);
            Ok(String::new())
        }
        "write" => {
            let (off, len, byte) = (num(words, 1)?, num(words, 2)? as usize, num(words, 3)? as u8);
            let n = need(file)?.write_at(off, &vec![byte; len]).await?;
            Ok(n.to_string())
        }
        "read" => {
            let (off, len) = (num(words, 1)?, num(words, 2)? as usize);
            let mut buf = vec![0u8; len];
            let n = need(file)?.read_at(off, &mut buf).await?;
            Ok(hex::encode(&buf[..n]))
        }
        "readsum" => {
            let (off, len) = (num(words, 1)?, num(words, 2)? as usize);
            let mut buf = vec![0u8; len];
            let n = need(file)?.read_at(off, &mut buf).await?;
            Ok(format!("{n} {}", pfs_common::ids::Sha256Digest::of(&buf[..n])))
        }
        "fsync" => need(file)?.fsync().await.map(|()| String::new()),
        "close" => {
            let f = file.take().ok_or_else(|| Error::Invalid("no file open".into()))?;
            f.close().await.map(|()| String::new())
        }
        "size" => Ok(need(file)?.size().to_string()),
        "id" => Ok(need(file)?.id().to_string()),
        "truncate" => need(file)?.truncate(num(words, 1)?).await.map(|()| String::new()),
        "tokens" => Ok(need(file)?
            .tokens()
            .iter()
            .map(|(r, m)| format!("{r}:{}", if *m == Mode::Write { "W" } else { "R" }))
            .collect::<Vec<_>>()
            .join(" ")),
        "stats" => {
            let s = client.stats();
            let c = s.cache;
            Ok(format!(
                "acquires={} revokes={} read_hits={} read_misses={} write_hits={} evictions={} writebacks={} invalidations={} close_writebacks={} close_evictions={}",
                s.token_acquires, s.revokes, c.read_hits, c.read_misses, c.write_hits, c.evictions, c.writebacks, c.invalidations, c.close_writebacks, c.close_evictions
            ))
        }
        other => Err(Error::Invalid(format!("unknown command {other:?}"))),
    }
}

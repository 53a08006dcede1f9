//! A small tokio service keeping a disk reserve in its data directory: `ensure` at
//! start-up, the operator hint when one of its writes meets `ENOSPC`, and its status as
//! JSON. Every reserve call blocks (a `flock`, `fsync`, sleeps while frees settle), so each
//! runs on the runtime's blocking pool through `spawn_blocking`, the reserve shared in an
//! `Arc`.
//!
//! The "requests" are a fixed script, so it runs to completion on its own: one write that
//! succeeds, one the disk refuses (a simulated `ENOSPC`, as a full disk would return), and
//! a status request.
//!
//! Run it: `cargo run --example tokio_service [DIR]` (default: a fresh directory under the
//! temp dir, removed afterwards).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use disk_reserve::{Ensured, RealFs, Reserve, ReserveConfig, Status, is_out_of_space};
use serde_json::{Value, json};

/// The service's state: where it writes, and its reserve.
struct Service {
    data: PathBuf,
    reserve: Arc<Reserve<RealFs>>,
}

/// One request in the script.
enum Request {
    /// Store `bytes` under `name`.
    Put { name: &'static str, bytes: usize },
    /// Store under `name` on a disk that is full.
    PutOnFullDisk { name: &'static str },
    /// The reserve's status, as JSON.
    Status,
}

impl Service {
    /// Start-up: lay the reserve down (or learn that it has to wait for room).
    async fn start(data: PathBuf) -> Result<Service, Box<dyn std::error::Error + Send + Sync>> {
        let config = ReserveConfig::with_size_bytes(8 << 20);
        let reserve = Reserve::new(RealFs::new(), &data, config)?
            // A service should not hang its start-up on another process's lock for ever.
            .lock_timeout(Some(Duration::from_secs(10)))
            .settle_time(Duration::from_millis(200));
        let reserve = Arc::new(reserve);
        let ensured = blocking(&reserve, |reserve| reserve.ensure()).await?;
        match ensured {
            Ensured::Deferred {
                free_bytes,
                needed_bytes,
                ..
            } => eprintln!(
                "disk reserve deferred: {free_bytes} bytes free, {needed_bytes} needed; the next start-up tries again"
            ),
            other => eprintln!(
                "disk reserve {}: {} bytes held at {}",
                other.as_str(),
                other.allocated_bytes().unwrap_or(0),
                reserve.path()
            ),
        }
        Ok(Service { data, reserve })
    }

    /// Serves one request; an error comes back as a JSON error object.
    async fn handle(&self, request: Request) -> Value {
        let result = match request {
            Request::Put { name, bytes } => self.put(name, bytes).await,
            Request::PutOnFullDisk { name } => {
                // What `write(2)` returns on a full disk, as the storage layer passes it up.
                let full = io::Error::from_raw_os_error(libc::ENOSPC);
                Err(io::Error::new(full.kind(), format!("write {name}: {full}")))
            }
            Request::Status => return self.status().await,
        };
        match result {
            Ok(value) => value,
            Err(error) => self.failed(error).await,
        }
    }

    async fn put(&self, name: &str, bytes: usize) -> io::Result<Value> {
        let path = self.data.join(name);
        let written = tokio::task::spawn_blocking(move || std::fs::write(&path, vec![7u8; bytes]))
            .await
            .map_err(io::Error::other)?;
        written?;
        Ok(json!({ "stored": name, "bytes": bytes }))
    }

    /// An error, with the operator hint when the disk (or a quota) is full.
    async fn failed(&self, error: io::Error) -> Value {
        let hint = if is_out_of_space(&error) {
            // The hint looks at the reserve on disk: a blocking call like the others.
            let hint = blocking(&self.reserve, |reserve| {
                Ok::<_, disk_reserve::Error>(reserve.out_of_space_hint())
            })
            .await
            .ok();
            if let Some(hint) = &hint {
                eprintln!("{hint}");
            }
            hint
        } else {
            None
        };
        json!({ "error": error.to_string(), "hint": hint })
    }

    async fn status(&self) -> Value {
        match blocking(&self.reserve, |reserve| reserve.status()).await {
            Ok(status) => status_json(&status, self.reserve.path().as_str()),
            Err(error) => json!({ "error": error.to_string() }),
        }
    }
}

/// Runs `call` on the reserve on tokio's blocking pool.
async fn blocking<T, E>(
    reserve: &Arc<Reserve<RealFs>>,
    call: impl FnOnce(&Reserve<RealFs>) -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
{
    let reserve = Arc::clone(reserve);
    tokio::task::spawn_blocking(move || call(&reserve))
        .await
        .expect("a reserve call panicked")
}

fn status_json(status: &Status, path: &str) -> Value {
    json!({
        "path": path,
        "condition": status.condition.as_str(),
        "allocated_bytes": status.observed.allocated_bytes(),
        "size_bytes": status.size_bytes,
        "headroom_bytes": status.headroom_bytes,
        "free_bytes": status.space.free_bytes,
        "total_bytes": status.space.total_bytes,
        "ensure_would": status.plan.as_str(),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let temp;
    let data: PathBuf = match std::env::args_os().nth(1) {
        Some(dir) => dir.into(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    let service = Arc::new(Service::start(data.clone()).await?);

    let requests = [
        Request::Put {
            name: "a.bin",
            bytes: 64 << 10,
        },
        Request::PutOnFullDisk { name: "b.bin" },
        Request::Status,
    ];
    let mut answers = Vec::new();
    for request in requests {
        let service = Arc::clone(&service);
        answers.push(tokio::spawn(async move { service.handle(request).await }));
    }
    for answer in answers {
        println!("{}", answer.await?);
    }
    check_stored(&data)?;
    Ok(())
}

/// The successful request's file is there (the example checks itself when CI runs it).
fn check_stored(data: &Path) -> io::Result<()> {
    let len = std::fs::metadata(data.join("a.bin"))?.len();
    assert_eq!(len, 64 << 10);
    Ok(())
}

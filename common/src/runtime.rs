//! The one async runtime of a process: the S3 store and the builder's fleet both block on it.
//!
//! The AWS SDK is async while the store's trait and the commands are not. Two runtimes, each
//! owned by whatever used it first, meant their order mattered (dropping one inside the other
//! panics); a single runtime made on first use and living as long as the process does not.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

/// The process's I/O runtime, started on first use (two worker threads: the work is network
/// waits, not computation). Only a failure to start threads at all makes this fail.
pub fn shared() -> std::io::Result<&'static Runtime> {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("io")
        .enable_all()
        .build()?;
    // A racing first use may have won: its runtime is the one; this one is dropped unused.
    Ok(RUNTIME.get_or_init(|| rt))
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_runtime_for_every_caller() {
        let a = super::shared().unwrap() as *const _;
        let b = super::shared().unwrap() as *const _;
        assert_eq!(a, b);
        assert_eq!(super::shared().unwrap().block_on(async { 2 + 2 }), 4);
    }
}

//! Finding the application repository's root from `--repo` or the current directory.

use std::path::{Path, PathBuf};

use common::error::BadInput;

/// The repository root: `--repo` if given (it must be a git work tree's root or inside one),
/// else the work tree containing the current directory.
pub fn root(repo: Option<&Path>) -> anyhow::Result<PathBuf> {
    let start = match repo {
        Some(p) => p.to_owned(),
        None => std::env::current_dir()?,
    };
    let mut dir = std::path::absolute(&start)?;
    loop {
        if dir.join(".git").exists() {
            return Ok(dir);
        }
        if !dir.pop() {
            return Err(BadInput(format!(
                "`{}` is not inside a git repository: run builder in the application repository or pass `--repo DIR`",
                start.display()
            ))
            .into());
        }
    }
}

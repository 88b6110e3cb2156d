//! `builder keygen`: the Ed25519 key pair (minisign's format) that signs releases.

use anyhow::bail;
use common::error::BadInput;
use common::report::ExitCode;

use crate::cli::KeygenArgs;
use crate::config::is_env_name;
use crate::signing::{self, SIGNING_KEY_ENV};

pub fn run(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    let password = match &args.password_env {
        None => None,
        Some(var) if !is_env_name(var) => bail!(BadInput(format!(
            "`--password-env {var}`: not an environment variable name"
        ))),
        Some(var) => match std::env::var(var) {
            Ok(pw) if !pw.is_empty() => Some(pw),
            _ => bail!(BadInput(format!(
                "`--password-env {var}`: `${var}` is not set or empty; export the password in it first"
            ))),
        },
    };
    let g = signing::generate(&args.out_dir, &args.name, password, args.force)?;
    let secret = std::path::absolute(&g.secret_path).unwrap_or(g.secret_path.clone());
    let public = std::path::absolute(&g.public_path).unwrap_or(g.public_path.clone());
    if args.json {
        let out = serde_json::json!({
            "key_id": g.key_id,
            "public_key": g.public_key,
            "secret_key_file": secret,
            "public_key_file": public,
            "encrypted": g.encrypted,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        eprintln!(
            "wrote `{}` (keep it away from the repository and the artifact store) and `{}`; trust it on the servers with `[signing] public_keys = [\"{}\"]`",
            secret.display(),
            public.display(),
            g.public_key
        );
        return Ok(ExitCode::Success);
    }
    println!("key id      {}", g.key_id);
    println!(
        "secret key  {} (mode 0600, {}) — keep it away from the repository and the artifact store",
        secret.display(),
        if g.encrypted {
            format!(
                "password-protected: sign with `--signing-password-env {}`",
                args.password_env.as_deref().unwrap_or_default()
            )
        } else {
            "not password-protected".to_owned()
        }
    );
    println!("public key  {}", public.display());
    println!();
    println!("Sign releases with it, one of:");
    println!("  builder package --signing-key {}", secret.display());
    println!("  export {SIGNING_KEY_ENV}={}", secret.display());
    println!(
        "  deploy.toml:    [signing]\n                  secret_key = \"{}\"",
        secret.display()
    );
    println!();
    println!(
        "Trust it on every server, in installer.toml (keep the old key there while rotating):"
    );
    println!("  [signing]");
    println!("  public_keys = [\"{}\"]", g.public_key);
    println!();
    println!("{}", g.public_key);
    Ok(ExitCode::Success)
}

//! Release signatures in minisign's format: key pairs for `builder keygen`, and signatures of
//! the exact bytes of `release.json` for `builder package` and `builder sign`.
//!
//! Keys are read and written with the `minisign` crate, so `minisign -V` checks our signatures
//! and `minisign -G` keys work here. The signature itself is made with deterministic Ed25519
//! (RFC 8032, no added randomness) over minisign's BLAKE2b-512 prehash: the `minisign` crate
//! mixes fresh random bytes into every signature, which would make two packagings of the same
//! tag differ and an interrupted publish impossible to repeat byte for byte. Every signature
//! made here is checked with the `minisign` crate's own verifier before it is written.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use blake2::{Blake2b512, Digest};
use common::atomic;
use common::error::BadInput;
use common::manifest::RELEASE_SIGNATURE;
use common::Sidecar;

/// Names the secret key when neither `--signing-key` nor `deploy.toml` does.
pub const SIGNING_KEY_ENV: &str = "BINARYCRATE_SIGNING_KEY";
/// Holds a password-protected key's password unless `password_env` names another variable.
pub const DEFAULT_PASSWORD_ENV: &str = "BINARYCRATE_SIGNING_PASSWORD";
/// `builder keygen`'s file names without extension.
pub const DEFAULT_KEY_NAME: &str = "binarycrate";

/// minisign's algorithm tag for prehashed (BLAKE2b-512) Ed25519 signatures.
const PREHASHED_ALG: &[u8; 2] = b"ED";
/// Where the parts of a decrypted secret key are in `SecretKey::to_bytes()`: algorithm tags
/// (2+2+2), KDF salt (32), KDF limits (8+8), then key id (8) and Ed25519 seed + public key (64).
const SK_KEYNUM: std::ops::Range<usize> = 54..62;
const SK_ED25519: std::ops::Range<usize> = 62..126;

/// A secret key ready to sign.
pub struct SigningKey {
    path: PathBuf,
    keynum: [u8; 8],
    ed25519: ed25519_compact::SecretKey,
    public: minisign::PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SigningKey({}, id {})",
            self.path.display(),
            self.key_id()
        )
    }
}

/// minisign's key id notation: the 8 id bytes as a little-endian number in 16 hex digits.
pub fn key_id_of(keynum: &[u8]) -> String {
    keynum.iter().rev().map(|b| format!("{b:02X}")).collect()
}

impl SigningKey {
    /// Reads a minisign secret key file; a password-protected one needs `password`.
    pub fn load(path: &Path, password: Option<String>) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!(BadInput(format!(
                    "the signing key `{}` does not exist: create a key pair with `builder keygen`, or fix the path",
                    path.display()
                )))
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", path.display())),
        };
        let not_a_key = |why: &str| {
            BadInput(format!(
                "`{}` is not a minisign secret key ({why}): use the `.key` file `builder keygen` wrote",
                path.display()
            ))
        };
        let encoded = text.lines().nth(1).unwrap_or_default().trim();
        let raw = BASE64
            .decode(encoded)
            .map_err(|_| not_a_key("its second line is not base64"))?;
        if raw.len() < SK_ED25519.end || &raw[0..2] != b"Ed" {
            return Err(not_a_key("wrong length or algorithm").into());
        }
        let encrypted = raw[2..4] != [0, 0];
        let sk = match (encrypted, password) {
            // Read directly rather than through the box: `minisign -G -W` leaves the checksum
            // of unencrypted keys empty, which the box check calls corrupt. The halves are
            // checked against each other below instead.
            (false, _) => {
                minisign::SecretKey::from_bytes(&raw).map_err(|e| not_a_key(&e.to_string()))?
            }
            (true, Some(pw)) => minisign::SecretKeyBox::from_string(&text)
                .and_then(|boxed| boxed.into_secret_key(Some(pw)))
                .map_err(|e| {
                    BadInput(format!(
                        "cannot unlock the signing key `{}`: {e} (check the password variable)",
                        path.display()
                    ))
                })?,
            (true, None) => bail!(BadInput(format!(
                "the signing key `{}` is password-protected: put its password in `{DEFAULT_PASSWORD_ENV}` (or the variable named by `--signing-password-env` / `signing.password_env`)",
                path.display()
            ))),
        };
        let bytes = sk.to_bytes();
        let mut keynum = [0u8; 8];
        keynum.copy_from_slice(&bytes[SK_KEYNUM]);
        let ed25519 = ed25519_compact::SecretKey::from_slice(&bytes[SK_ED25519])
            .map_err(|_| not_a_key("bad Ed25519 key"))?;
        let public =
            minisign::PublicKey::from_secret_key(&sk).map_err(|e| not_a_key(&e.to_string()))?;
        // A damaged file could hold a seed that does not belong to its public half; signatures
        // made with it would never verify on the servers.
        let seed = ed25519_compact::Seed::from_slice(&bytes[SK_ED25519][..32])
            .map_err(|_| not_a_key("bad Ed25519 seed"))?;
        let derived = ed25519_compact::KeyPair::from_seed(seed).pk;
        if keynum != sk.keynum() || derived.as_ref() != &public.to_bytes()[10..] {
            return Err(not_a_key("its halves do not match").into());
        }
        Ok(Self {
            path: path.to_owned(),
            keynum,
            ed25519,
            public,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn key_id(&self) -> String {
        key_id_of(&self.keynum)
    }

    /// The public key as one base64 line (`RW…`), as `installer.toml` wants it.
    pub fn public_key_base64(&self) -> String {
        self.public.to_base64()
    }

    /// A minisign signature (the whole `.minisig` file) of `data`. The same key, data and
    /// comment always give the same bytes.
    pub fn sign(&self, data: &[u8], trusted_comment: &str) -> anyhow::Result<Vec<u8>> {
        if trusted_comment.contains(['\n', '\r']) {
            bail!("a trusted comment is one line");
        }
        let prehash = Blake2b512::digest(data);
        let signature = self.ed25519.sign(prehash, None);
        let mut line = Vec::with_capacity(74);
        line.extend_from_slice(PREHASHED_ALG);
        line.extend_from_slice(&self.keynum);
        line.extend_from_slice(signature.as_ref());
        let mut global = signature.to_vec();
        global.extend_from_slice(trusted_comment.as_bytes());
        let global = self.ed25519.sign(&global, None);
        let text = format!(
            "untrusted comment: signature from binarycrate secret key {}\n{}\ntrusted comment: {trusted_comment}\n{}\n",
            self.key_id(),
            BASE64.encode(&line),
            BASE64.encode(global.as_ref())
        );
        let boxed = minisign::SignatureBox::from_string(&text)
            .context("the signature made does not parse as minisign's format")?;
        minisign::verify(&self.public, &boxed, Cursor::new(data), true, false, false)
            .context("the signature made does not verify with its own public key")?;
        Ok(text.into_bytes())
    }
}

/// The signature's trusted comment for a sidecar: what it is, without any time, so signing
/// the same release again gives the same bytes.
pub fn trusted_comment(sidecar: &Sidecar) -> String {
    let m = &sidecar.manifest;
    let (file, blake3) = sidecar
        .archive
        .as_ref()
        .map(|a| (a.file_name.clone(), a.blake3.to_hex()))
        .unwrap_or_default();
    format!(
        "app:{}\tbuild:{:#}\tfile:release.json\tarchive:{file}\tblake3:{blake3}",
        m.app, m.build
    )
}

/// Signs the exact bytes of the `release.json` at `sidecar_path` into `release.json.minisig`
/// beside it; returns the signature's path.
pub fn sign_sidecar(key: &SigningKey, sidecar_path: &Path) -> anyhow::Result<PathBuf> {
    let bytes = std::fs::read(sidecar_path)
        .with_context(|| format!("cannot read `{}`", sidecar_path.display()))?;
    let sidecar = Sidecar::from_bytes(&bytes, &sidecar_path.display().to_string())?;
    let signature = key.sign(&bytes, &trusted_comment(&sidecar))?;
    let path = atomic::parent_of(sidecar_path).join(RELEASE_SIGNATURE);
    atomic::write_file(&path, &signature)?;
    Ok(path)
}

/// Which key signs, and from where the choice came, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChoice {
    pub path: PathBuf,
    pub password_env: String,
    pub origin: String,
}

/// `--signing-key` (relative to the current directory), else `$BINARYCRATE_SIGNING_KEY`, else
/// `signing.secret_key` of `deploy.toml` (relative to the repository root); `None`: unsigned.
pub fn choose_key(
    cli_key: Option<&Path>,
    cli_password_env: Option<&str>,
    config: &crate::config::SigningConfig,
    config_origin: &str,
    repo_root: &Path,
) -> anyhow::Result<Option<KeyChoice>> {
    let env_key = std::env::var_os(SIGNING_KEY_ENV).filter(|v| !v.is_empty());
    let (path, origin) = if let Some(p) = cli_key {
        (p.to_owned(), "--signing-key".to_owned())
    } else if let Some(p) = env_key {
        (PathBuf::from(p), format!("${SIGNING_KEY_ENV}"))
    } else if let Some(p) = &config.secret_key {
        let p = Path::new(p);
        let p = if p.is_absolute() {
            p.to_owned()
        } else {
            repo_root.join(p)
        };
        (p, format!("`signing.secret_key` in {config_origin}"))
    } else {
        return Ok(None);
    };
    let password_env = match cli_password_env.or(config.password_env.as_deref()) {
        Some(v) if !crate::config::is_env_name(v) => bail!(BadInput(format!(
            "`{v}` is not an environment variable name (for the signing key's password)"
        ))),
        Some(v) => v.to_owned(),
        None => DEFAULT_PASSWORD_ENV.to_owned(),
    };
    Ok(Some(KeyChoice {
        path,
        password_env,
        origin,
    }))
}

impl KeyChoice {
    pub fn load(&self) -> anyhow::Result<SigningKey> {
        let password = std::env::var(&self.password_env)
            .ok()
            .filter(|p| !p.is_empty());
        SigningKey::load(&self.path, password)
            .with_context(|| format!("the signing key comes from {}", self.origin))
    }
}

/// What `builder keygen` wrote.
#[derive(Debug, Clone)]
pub struct Generated {
    pub secret_path: PathBuf,
    pub public_path: PathBuf,
    pub key_id: String,
    pub public_key: String,
    pub encrypted: bool,
}

/// Creates a new key pair as `<dir>/<name>.key` (mode 0600) and `<dir>/<name>.pub`, refusing
/// to replace either unless `force`.
pub fn generate(
    dir: &Path,
    name: &str,
    password: Option<String>,
    force: bool,
) -> anyhow::Result<Generated> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        bail!(BadInput(format!(
            "key name `{name}` must be a plain file name without `/`, e.g. `binarycrate`"
        )));
    }
    let secret_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    if !force {
        for p in [&secret_path, &public_path] {
            if std::fs::symlink_metadata(p).is_ok() {
                bail!(BadInput(format!(
                    "`{}` already exists: a signing key is not replaced by accident; pass `--force` to overwrite it (servers that trust the old public key will refuse releases signed by the new one), or choose another `--name` / `--out-dir`",
                    p.display()
                )));
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let encrypted = password.is_some();
    let pair = match password {
        Some(pw) => minisign::KeyPair::generate_encrypted_keypair(Some(pw)),
        None => minisign::KeyPair::generate_unencrypted_keypair(),
    }
    .context("cannot generate a key pair")?;
    let key_id = key_id_of(pair.pk.keynum());
    let secret = pair
        .sk
        .to_box(Some(&format!(
            "binarycrate release signing secret key {key_id}"
        )))
        .context("cannot encode the secret key")?
        .to_bytes();
    let public = pair
        .pk
        .to_box()
        .context("cannot encode the public key")?
        .to_bytes();
    // Secret first: a public key without its secret half would be trusted for nothing.
    for (path, data, mode) in [
        (&secret_path, &secret, 0o600),
        (&public_path, &public, 0o644),
    ] {
        if !atomic::write_file_mode(path, data, mode, force)? {
            bail!(BadInput(format!(
                "`{}` appeared while the key was being written: nothing replaced; run again",
                path.display()
            )));
        }
    }
    Ok(Generated {
        secret_path,
        public_path,
        key_id,
        public_key: pair.pk.to_base64(),
        encrypted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_deterministic_and_verify_with_minisign() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate(dir.path(), "k", None, false).unwrap();
        let key = SigningKey::load(&g.secret_path, None).unwrap();
        assert_eq!(key.key_id(), g.key_id);
        assert_eq!(key.public_key_base64(), g.public_key);
        let data = b"{\"release\": 1}\n";
        let one = key.sign(data, "app:x\tbuild:Build000001").unwrap();
        let two = key.sign(data, "app:x\tbuild:Build000001").unwrap();
        assert_eq!(one, two, "the same input signs to the same bytes");
        let text = String::from_utf8(one).unwrap();
        assert!(text.contains("trusted comment: app:x\tbuild:Build000001\n"));

        // minisign's verifier accepts it with the public key file and refuses altered data.
        let pk = minisign::PublicKey::from_file(&g.public_path).unwrap();
        let sig = minisign::SignatureBox::from_string(&text).unwrap();
        minisign::verify(&pk, &sig, Cursor::new(&data[..]), true, false, false).unwrap();
        assert!(
            minisign::verify(&pk, &sig, Cursor::new(&b"other"[..]), true, false, false).is_err()
        );
        assert!(key.sign(data, "two\nlines").is_err());
    }

    #[test]
    fn keygen_refuses_to_overwrite_and_keeps_the_secret_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let g = generate(dir.path(), "ci", None, false).unwrap();
        let mode = std::fs::metadata(&g.secret_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let before = std::fs::read(&g.secret_path).unwrap();
        let err = generate(dir.path(), "ci", None, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("already exists") && err.contains("--force"),
            "{err}"
        );
        assert_eq!(std::fs::read(&g.secret_path).unwrap(), before);
        let again = generate(dir.path(), "ci", None, true).unwrap();
        assert_ne!(again.key_id, g.key_id);
        assert!(generate(dir.path(), "../x", None, false).is_err());
    }

    #[test]
    fn bad_key_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.key");
        let err = SigningKey::load(&missing, None).unwrap_err().to_string();
        assert!(
            err.contains("none.key") && err.contains("builder keygen"),
            "{err}"
        );
        let g = generate(dir.path(), "k", None, false).unwrap();
        let err = SigningKey::load(&g.public_path, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a minisign secret key"), "{err}");
    }

    #[test]
    fn password_protected_keys_need_their_password() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate(dir.path(), "p", Some("correct horse".into()), false).unwrap();
        assert!(g.encrypted);
        let err = SigningKey::load(&g.secret_path, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("password-protected") && err.contains(DEFAULT_PASSWORD_ENV),
            "{err}"
        );
        let err = SigningKey::load(&g.secret_path, Some("wrong".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot unlock"), "{err}");
        let key = SigningKey::load(&g.secret_path, Some("correct horse".into())).unwrap();
        assert_eq!(key.public_key_base64(), g.public_key);
        key.sign(b"data", "c").unwrap();
    }

    #[test]
    fn key_ids_read_like_minisign_prints_them() {
        assert_eq!(
            key_id_of(&[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0xAB]),
            "AB07060504030201"
        );
    }
}

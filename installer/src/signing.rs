//! Signed releases: the minisign public keys this server trusts (`[signing]` in
//! `installer.toml`), and the check that a release's `release.json` is signed by one of them —
//! made before the artifact is downloaded, so whoever can write to the store cannot make this
//! server run code the release builder did not sign.
//!
//! The signature covers the sidecar's exact bytes, and the sidecar holds the archive's BLAKE3
//! and size, so a verified sidecar pins the artifact; the download is then checked against it.

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use common::error::BadInput;
use common::manifest::{RELEASE_JSON, RELEASE_SIGNATURE};
use common::report::{detail, Report, SignatureCheck};
use common::store::ArtifactStore;
use common::BuildNumber;

use crate::config::{InstallerConfig, SigningConfig};
use crate::keys::{key_id_of, parse_public_key, read_public_key_file};

/// A public key this server trusts.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// minisign's key id notation (16 hex digits).
    pub id: String,
    /// Where it was configured, for messages.
    pub origin: String,
    key: minisign_verify::PublicKey,
}

/// What this server requires of a release.
#[derive(Debug, Clone)]
pub struct Policy {
    pub keys: Vec<TrustedKey>,
    pub required: bool,
}

impl Policy {
    /// The configured keys, key files read now; a bad one is a configuration error (exit 2).
    pub fn from_config(c: &SigningConfig) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for (i, k) in c.public_keys.iter().enumerate() {
            let (id, key) = parse_public_key(k)
                .map_err(|e| BadInput(format!("key `signing.public_keys[{i}]`: {e}")))?;
            keys.push(TrustedKey {
                id,
                origin: format!("signing.public_keys[{i}]"),
                key,
            });
        }
        for p in &c.public_key_files {
            let (id, key) = read_public_key_file(p)
                .map_err(|e| BadInput(format!("key `signing.public_key_files`: {e}")))?;
            keys.push(TrustedKey {
                id,
                origin: format!("`{}`", p.display()),
                key,
            });
        }
        Ok(Self {
            keys,
            required: c.required(),
        })
    }

    /// The trusted key ids, for messages: `A, B` or `none`.
    pub fn key_ids(&self) -> String {
        if self.keys.is_empty() {
            return "none".into();
        }
        self.keys
            .iter()
            .map(|k| k.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One line for `installer config`.
    pub fn describe(&self) -> String {
        match (self.required, self.keys.is_empty()) {
            (true, _) => format!(
                "signatures required; trusted keys: {}",
                self.keys
                    .iter()
                    .map(|k| format!("{} ({})", k.id, k.origin))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (false, false) => format!(
                "signatures checked when present, unsigned releases allowed (`require_signature = false`); trusted keys: {}",
                self.key_ids()
            ),
            (false, true) => "signatures not checked: no trusted keys (`[signing] public_keys`); any release in the store is installed".into(),
        }
    }
}

/// The outcome of a successful check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Signed by this trusted key over exactly these sidecar bytes.
    Verified {
        key_id: String,
        trusted_comment: String,
    },
    /// Not signed, and this server does not require it.
    Unsigned,
    /// Signed, but this server trusts no key, so nothing could be checked.
    NotChecked { key_id: String },
}

/// Decides whether a release may be installed: `sidecar` is the exact bytes fetched from the
/// store, `signature` its `release.json.minisig` if there is one. Every refusal says which build,
/// which key(s), and what to do.
pub fn verify(
    policy: &Policy,
    build: BuildNumber,
    sidecar: &[u8],
    signature: Option<&[u8]>,
) -> Result<Verdict, BadInput> {
    let trusted = policy.key_ids();
    let Some(signature) = signature else {
        if policy.required {
            return Err(BadInput(format!(
                "{build:#} is not signed (the store has no `{RELEASE_SIGNATURE}` beside its `{RELEASE_JSON}`) and this server requires a signature by one of its trusted keys ({trusted}): sign it with `builder sign` and publish it again, or set `require_signature = false` under `[signing]` if unsigned releases are really meant to be installed; nothing was changed"
            )));
        }
        return Ok(Verdict::Unsigned);
    };
    let malformed = |why: &str| {
        BadInput(format!(
            "the `{RELEASE_SIGNATURE}` of {build:#} is not a minisign signature ({why}): the store holds something the release builder did not write; do not install it, publish the release again from the builder; nothing was changed"
        ))
    };
    let text = std::str::from_utf8(signature).map_err(|_| malformed("not text"))?;
    let parsed = minisign_verify::Signature::decode(text).map_err(|e| malformed(&e.to_string()))?;
    let signer = text
        .lines()
        .nth(1)
        .and_then(|l| BASE64.decode(l.trim()).ok())
        .filter(|raw| raw.len() == 74)
        .map(|raw| key_id_of(&raw[2..10]))
        .ok_or_else(|| malformed("no key id"))?;
    if policy.keys.is_empty() {
        return Ok(Verdict::NotChecked { key_id: signer });
    }
    let Some(key) = policy.keys.iter().find(|k| k.id == signer) else {
        return Err(BadInput(format!(
            "{build:#} is signed by key {signer}, which this server does not trust (trusted keys: {trusted}): if {signer} is your new release key, add its public key to `signing.public_keys` in the installer configuration; otherwise someone else signed this release — do not install it; nothing was changed"
        )));
    };
    if let Err(e) = key.key.verify(sidecar, &parsed, false) {
        return Err(BadInput(format!(
            "the signature of {build:#} by trusted key {signer} does not match its `{RELEASE_JSON}` ({e}): the sidecar or its signature was altered after signing; do not install it, publish the release again from the builder; nothing was changed"
        )));
    }
    Ok(Verdict::Verified {
        key_id: signer,
        trusted_comment: parsed.trusted_comment().to_owned(),
    })
}

/// Fetches the build's signature and verifies `sidecar` (the exact bytes just fetched) against
/// the configured keys; says what it found in the report. Called before anything is downloaded.
pub fn check_release(
    store: &ArtifactStore,
    config: &InstallerConfig,
    build: BuildNumber,
    sidecar: &[u8],
    report: &mut Report,
) -> anyhow::Result<()> {
    let policy = Policy::from_config(&config.signing)?;
    if policy.keys.is_empty() {
        // Nothing could be checked, and a server allowed only `s3:GetObject` cannot even tell a
        // missing signature (S3 says AccessDenied then) from an unreadable one: do not ask.
        let warning = format!(
            "the signature of {build:#} was not checked: this server trusts no release signing keys (`[signing] public_keys` in the installer configuration)"
        );
        eprintln!("warning: {warning}");
        report.warnings.push(warning);
        report.set_detail(
            detail::SIGNATURE,
            &SignatureCheck::NotChecked { key_id: None },
        );
        return Ok(());
    }
    let signature = store.fetch_signature(&config.app, build).with_context(|| {
        format!(
            "cannot read `{}` of {build:#} from `{}` (on S3, a server without `s3:ListBucket` on the prefix is told AccessDenied, not NotFound, when a release is unsigned)",
            ArtifactStore::signature_key(&config.app, build),
            store.location()
        )
    })?;
    let verdict = verify(&policy, build, sidecar, signature.as_deref())?;
    let detail = match &verdict {
        Verdict::Verified {
            key_id,
            trusted_comment,
        } => {
            eprintln!("    {build:#} is signed by trusted key {key_id}");
            SignatureCheck::Verified {
                key_id: key_id.clone(),
                trusted_comment: trusted_comment.clone(),
            }
        }
        Verdict::Unsigned => {
            let warning = format!(
                "{build:#} is not signed; installed anyway because of `require_signature = false`"
            );
            eprintln!("warning: {warning}");
            report.warnings.push(warning);
            SignatureCheck::Unsigned
        }
        Verdict::NotChecked { key_id } => {
            let warning = format!("{build:#} is signed by key {key_id}, but the signature was not checked: no trusted keys are configured (`[signing] public_keys`)");
            eprintln!("warning: {warning}");
            report.warnings.push(warning);
            SignatureCheck::NotChecked {
                key_id: Some(key_id.clone()),
            }
        }
    };
    report.set_detail(detail::SIGNATURE, &detail);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh key pair (the `minisign` crate, as `builder keygen` uses): its public key line.
    fn keypair() -> (minisign::KeyPair, String) {
        let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let line = pair.pk.to_base64();
        (pair, line)
    }

    fn sign(pair: &minisign::KeyPair, data: &[u8]) -> Vec<u8> {
        minisign::sign(
            None,
            &pair.sk,
            std::io::Cursor::new(data),
            Some("app:binarycrate\tbuild:Build000007"),
            None,
        )
        .unwrap()
        .to_bytes()
    }

    fn policy(keys: &[&str], required: Option<bool>) -> Policy {
        Policy::from_config(&SigningConfig {
            public_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            public_key_files: Vec::new(),
            require_signature: required,
        })
        .unwrap()
    }

    fn build() -> BuildNumber {
        BuildNumber::parse("Build000007").unwrap()
    }

    #[test]
    fn public_keys_parse_with_their_ids_and_bad_ones_are_named() {
        let (pair, line) = keypair();
        let (id, _) = parse_public_key(&line).unwrap();
        assert_eq!(id, key_id_of(pair.pk.keynum()));
        assert_eq!(id.len(), 16);
        for bad in [
            "",
            "RWQ",
            "not base64!",
            "untrusted comment: minisign public key",
        ] {
            let err = parse_public_key(bad).unwrap_err();
            assert!(err.contains("not a minisign public key"), "{bad}: {err}");
        }
    }

    #[test]
    fn requirement_follows_the_keys_unless_set() {
        let (_, a) = keypair();
        let c = SigningConfig::default();
        assert!(!c.required() && c.validate().is_ok());
        let c = SigningConfig {
            public_keys: vec![a.clone()],
            ..Default::default()
        };
        assert!(c.required() && c.validate().is_ok());
        let c = SigningConfig {
            require_signature: Some(true),
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .contains("signing.require_signature"));
        let c = SigningConfig {
            public_keys: vec![a, "RWbad".into()],
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("signing.public_keys[1]"));
        let c = SigningConfig {
            public_key_files: vec!["keys/a.pub".into()],
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("absolute"));
    }

    #[test]
    fn a_trusted_signature_over_the_exact_bytes_is_accepted() {
        let (a, pk_a) = keypair();
        let (b, pk_b) = keypair();
        let sidecar = b"{\"manifest\": 7}\n";
        let trusted = policy(&[&pk_a, &pk_b], None);
        // Rotation: either trusted key will do.
        for pair in [&a, &b] {
            let verdict = verify(&trusted, build(), sidecar, Some(&sign(pair, sidecar))).unwrap();
            let Verdict::Verified {
                key_id,
                trusted_comment,
            } = verdict
            else {
                panic!("{verdict:?}")
            };
            assert_eq!(key_id, key_id_of(pair.pk.keynum()));
            assert_eq!(trusted_comment, "app:binarycrate\tbuild:Build000007");
        }
    }

    #[test]
    fn untrusted_keys_altered_sidecars_and_garbage_are_refused() {
        let (a, pk_a) = keypair();
        let (c, _) = keypair();
        let sidecar = b"{\"manifest\": 7}\n";
        let only_a = policy(&[&pk_a], None);
        let err = verify(&only_a, build(), sidecar, Some(&sign(&c, sidecar))).unwrap_err();
        let id_c = key_id_of(c.pk.keynum());
        let id_a = key_id_of(a.pk.keynum());
        assert!(
            err.0.contains(&format!("signed by key {id_c}")) && err.0.contains(&id_a),
            "{}",
            err.0
        );
        let signature = sign(&a, sidecar);
        let err = verify(&only_a, build(), b"{\"manifest\": 8}\n", Some(&signature)).unwrap_err();
        assert!(
            err.0.contains("does not match") && err.0.contains(&id_a),
            "{}",
            err.0
        );
        // A trusted comment changed after signing breaks the second signature.
        let forged = String::from_utf8(signature)
            .unwrap()
            .replace("Build000007", "Build000008");
        let err = verify(&only_a, build(), sidecar, Some(forged.as_bytes())).unwrap_err();
        assert!(err.0.contains("does not match"), "{}", err.0);
        let err = verify(&only_a, build(), sidecar, Some(b"garbage")).unwrap_err();
        assert!(err.0.contains("not a minisign signature"), "{}", err.0);
    }

    #[test]
    fn unsigned_releases_are_refused_only_when_required() {
        let (a, pk_a) = keypair();
        let err = verify(&policy(&[&pk_a], None), build(), b"{}", None).unwrap_err();
        assert!(err.0.contains("Build000007 is not signed"), "{}", err.0);
        assert_eq!(
            verify(&policy(&[&pk_a], Some(false)), build(), b"{}", None).unwrap(),
            Verdict::Unsigned
        );
        assert_eq!(
            verify(&policy(&[], None), build(), b"{}", None).unwrap(),
            Verdict::Unsigned
        );
        // Without keys a signature cannot be checked, and says so.
        assert_eq!(
            verify(&policy(&[], None), build(), b"{}", Some(&sign(&a, b"{}"))).unwrap(),
            Verdict::NotChecked {
                key_id: key_id_of(a.pk.keynum())
            }
        );
    }

    #[test]
    fn key_files_are_read_and_missing_ones_named() {
        let (pair, line) = keypair();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.pub");
        std::fs::write(&file, pair.pk.to_box().unwrap().to_bytes()).unwrap();
        let p = Policy::from_config(&SigningConfig {
            public_key_files: vec![file.clone()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.keys[0].id, parse_public_key(&line).unwrap().0);
        assert!(p.required && p.describe().contains("required"));
        let err = Policy::from_config(&SigningConfig {
            public_key_files: vec![file, dir.path().join("missing.pub")],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("missing.pub"), "{err}");
    }
}

//! `builder init`: a commented `deploy.toml` from what the application repository holds (only
//! the keys that differ from the defaults), the build-number file when there is none, and what
//! is left to do by hand.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::bail;
use common::atomic;
use common::error::BadInput;
use common::report::ExitCode;

use crate::cli::InitArgs;
use crate::config::{DeployConfig, DEPLOY_TOML};
use crate::discover::{self, Found};
use crate::repo;

pub fn run(args: &InitArgs) -> anyhow::Result<ExitCode> {
    let root = repo::root(args.repo.repo.as_deref())?;
    let path = root.join(DEPLOY_TOML);
    if path.exists() && !args.force {
        bail!(BadInput(format!(
            "`{}` already exists: nothing was written; `builder config` shows what it says, `builder init --force` replaces it",
            path.display()
        )));
    }
    let found = discover::discover(&root).map_err(BadInput)?;
    let build_number_file = found.build_number_file.clone().unwrap_or_else(|| {
        discover::new_build_number_file(&found)
            .display()
            .to_string()
    });
    let text = render(&found, &build_number_file);
    // What is written must be what `builder package` reads.
    let config = DeployConfig::parse(&text, "the generated deploy.toml")?;

    let mut created = Vec::new();
    if found.build_number_file.is_none() {
        let file = root.join(&build_number_file);
        if !file.exists() {
            atomic::write_file(
                &file,
                b"# The build this tree is; `builder prepare` rewrites the line below.\nBUILD_NUMBER = '000000'\n",
            )?;
            created.push(build_number_file.clone());
        }
    }
    atomic::write_file(&path, text.as_bytes())?;
    created.push(DEPLOY_TOML.to_owned());

    eprint!("{}", summary(&found, &config, &created));
    if args.json {
        let out = serde_json::json!({
            "deploy_toml": path,
            "created": created,
            "config": config,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", path.display());
    }
    Ok(ExitCode::Success)
}

/// `"value"` as TOML writes a string.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// `{ "a" = "b" }`.
fn inline_table<'a>(pairs: impl Iterator<Item = (&'a String, &'a String)>) -> String {
    let items: Vec<String> = pairs
        .map(|(k, v)| format!("{} = {}", quoted(k), quoted(v)))
        .collect();
    if items.is_empty() {
        "{}".into()
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}

/// The file's text: each key that differs from the defaults, with where it was found.
fn render(found: &Found, build_number_file: &str) -> String {
    let d = DeployConfig::default();
    let mut top = String::new();
    let mut python = String::new();
    let mut django = String::new();
    let mut frontend = String::new();
    let key = |section: &mut String, name: &str, value: String, default: String, why: &str| {
        if value != default {
            let _ = writeln!(section, "# {why}\n{name} = {value}");
        }
    };

    let app = found
        .wsgi_module
        .as_deref()
        .and_then(|w| w.split('.').next())
        .map(|a| a.to_ascii_lowercase().replace('_', "-"))
        .filter(|a| common::manifest::validate_app_name(a).is_ok());
    if let Some(app) = app {
        key(
            &mut top,
            "app",
            quoted(&app),
            quoted(&d.app),
            "the application's name in artifact names and store keys (its project package)",
        );
    }
    if let Some(req) = &found.requirements {
        key(
            &mut python,
            "requirements",
            quoted(req),
            quoted(&d.python.requirements),
            "the requirements found",
        );
    }
    let dj = &d.django;
    key(
        &mut django,
        "manage_py",
        quoted(&found.manage_py),
        quoted(&dj.manage_py),
        "the project's manage.py",
    );
    if let Some(w) = &found.wsgi_module {
        key(
            &mut django,
            "wsgi_module",
            quoted(w),
            quoted(&dj.wsgi_module),
            "the project's wsgi.py",
        );
    }
    if let Some((module, origin)) = &found.settings_module {
        key(
            &mut django,
            "settings_module",
            quoted(module),
            quoted(&dj.settings_module),
            &format!("DJANGO_SETTINGS_MODULE as `{origin}` sets it"),
        );
    }
    match &found.static_root {
        Some(s) => key(
            &mut django,
            "static_root",
            quoted(s),
            quoted(&dj.static_root),
            "STATIC_ROOT in the settings",
        ),
        None => {
            let _ = writeln!(django, "# STATIC_ROOT was not found in the settings: set it to where collectstatic writes\n# static_root = \"staticfiles\"");
        }
    }
    key(
        &mut django,
        "build_number_file",
        quoted(build_number_file),
        quoted(&dj.build_number_file),
        "the file with `BUILD_NUMBER = 'NNNNNN'`",
    );
    let version_hash = Path::new(build_number_file)
        .with_file_name("version_hash.py")
        .display()
        .to_string();
    key(
        &mut django,
        "version_hash_file",
        quoted(&version_hash),
        quoted(&dj.version_hash_file),
        "written by each build as `VERSION_HASH = '<commit>'`, beside the build number",
    );
    let template = found.production_template.clone().unwrap_or_default();
    key(
        &mut django,
        "production_template",
        quoted(&template),
        quoted(&dj.production_template),
        if template.is_empty() {
            "no template of a server-only settings file"
        } else {
            "the template of the server-only settings file"
        },
    );

    // The server's own files: the settings file made from the template, or the `.env`.
    let mut shared_files = std::collections::BTreeMap::new();
    if let (Some(_), Some((module, _))) = (&found.production_template, &found.settings_module) {
        let file = format!(
            "{}{}.py",
            if found.project_dir.is_empty() {
                String::new()
            } else {
                format!("{}/", found.project_dir)
            },
            module.replace('.', "/")
        );
        let name = Path::new(&file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        shared_files.insert(file, name);
    }
    if found.env_file {
        let file = if found.project_dir.is_empty() {
            ".env".to_owned()
        } else {
            format!("{}/.env", found.project_dir)
        };
        shared_files.insert(file, ".env".to_owned());
    }
    key(
        &mut django,
        "shared_files",
        inline_table(shared_files.iter()),
        inline_table(dj.shared_files.iter()),
        "each server's own files (kept in its shared/, never committed)",
    );
    let shared_dirs: std::collections::BTreeMap<String, String> = found
        .media_root
        .iter()
        .map(|m| {
            let name = Path::new(m)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "media".into());
            (m.clone(), name)
        })
        .collect();
    key(
        &mut django,
        "shared_dirs",
        inline_table(shared_dirs.iter()),
        inline_table(dj.shared_dirs.iter()),
        "each server's own directories (MEDIA_ROOT: user uploads)",
    );
    if !found.frontend {
        key(
            &mut frontend,
            "enabled",
            "false".into(),
            "true".into(),
            "no PyPy.js bundler in the repository: no front-end steps",
        );
    }

    let mut out = String::from(
        "# deploy.toml: how `builder package` builds this application into a release, written by\n\
         # `builder init` from what the repository holds. Only what differs from the defaults is\n\
         # here; `builder config` shows every key in effect, and each key is described in the\n\
         # release pipeline's docs/configuration.md.\n",
    );
    for (name, body) in [
        ("", top),
        ("python", python),
        ("django", django),
        ("frontend", frontend),
    ] {
        if body.is_empty() {
            continue;
        }
        out.push('\n');
        if !name.is_empty() {
            let _ = writeln!(out, "[{name}]");
        }
        out.push_str(&body);
    }
    out
}

/// What was written and what is left to do by hand.
fn summary(found: &Found, config: &DeployConfig, created: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "wrote {}", created.join(", "));
    if !found.submodules.is_empty() {
        let _ = writeln!(
            s,
            "git submodules (exported with each tag): {}",
            found.submodules.join(", ")
        );
    }
    let profile = config.django.profile();
    let module = Path::new(&config.django.build_number_file)
        .with_extension("")
        .strip_prefix(&profile.project_dir)
        .map(|p| p.display().to_string().replace('/', "."))
        .unwrap_or_else(|_| config.django.build_number_file.clone());
    let _ = writeln!(s, "\nleft to do by hand:");
    let _ = writeln!(s, "1. put the build number in the page the servers' health check asks for (`[health] url`), e.g. in the base template:");
    let _ = writeln!(s, "     <!-- Build number = {{{{ BUILD_NUMBER }}}} -->");
    let _ = writeln!(s, "   with `from {module} import BUILD_NUMBER` in the view's context (or a context processor)");
    let _ = writeln!(s, "2. serve static files per build: STATIC_URL = '/static/' + VERSION_HASH + '/', with VERSION_HASH");
    let _ = writeln!(
        s,
        "   from `{}` (each build writes it; keep one with `VERSION_HASH = 'dev'` for development)",
        config.django.version_hash_file
    );
    let _ = writeln!(
        s,
        "3. commit `{DEPLOY_TOML}`{}, then `builder check` and `builder prepare`",
        if created.len() > 1 {
            " and the build-number file"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "4. on each server: /etc/binarycrate/installer.toml (`store`, `reload_fifo`, `[health] url`), the uWSGI");
    let _ = writeln!(s, "   and nginx files of the release pipeline's docs/server-setup.md, and in `<root>/shared/`:");
    for (inside, name) in &profile.shared_files {
        let _ = writeln!(s, "     {name} (linked into each release as `{inside}`)");
    }
    if profile.shared_files.is_empty() {
        let _ = writeln!(s, "     nothing: the app keeps no server-only file");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binarycrate_repository_needs_no_key_but_the_defaults() {
        let found = Found {
            manage_py: "binarycrate/manage.py".into(),
            project_dir: "binarycrate".into(),
            settings_module: Some(("binarycrate.settings.production".into(), "x".into())),
            wsgi_module: Some("binarycrate.wsgi".into()),
            static_root: Some("binarycrate/public/static".into()),
            media_root: Some("binarycrate/media".into()),
            requirements: Some("requirements.txt".into()),
            build_number_file: Some("binarycrate/binarycrate/settings/build_number.py".into()),
            production_template: Some(
                "binarycrate/binarycrate/settings/production_template.py".into(),
            ),
            frontend: true,
            ..Found::default()
        };
        let text = render(&found, "binarycrate/binarycrate/settings/build_number.py");
        let config = DeployConfig::parse(&text, "t").unwrap();
        let defaults = DeployConfig::default();
        // Only `shared_dirs` differs: BinaryCrate's `private/` is not MEDIA_ROOT.
        assert_eq!(config.django.shared_files, defaults.django.shared_files);
        assert_eq!(config.django.static_root, defaults.django.static_root);
        assert!(!text.contains("manage_py"), "{text}");
        assert!(!text.contains("[frontend]"), "{text}");
    }

    #[test]
    fn a_twelve_factor_repository_gets_its_own_keys() {
        let found = Found {
            manage_py: "manage.py".into(),
            project_dir: String::new(),
            settings_module: Some(("shop.settings".into(), "shop/wsgi.py".into())),
            wsgi_module: Some("shop.wsgi".into()),
            static_root: Some("staticfiles".into()),
            media_root: Some("uploads".into()),
            requirements: Some("requirements.txt".into()),
            env_file: true,
            settings_dir: Some("shop".into()),
            ..Found::default()
        };
        let text = render(&found, "shop/build_number.py");
        let c = DeployConfig::parse(&text, "t").unwrap();
        assert_eq!(c.app, "shop");
        assert_eq!(c.django.manage_py, "manage.py");
        assert_eq!(c.django.wsgi_module, "shop.wsgi");
        assert_eq!(c.django.settings_module, "shop.settings");
        assert_eq!(c.django.static_root, "staticfiles");
        assert_eq!(c.django.version_hash_file, "shop/version_hash.py");
        assert_eq!(c.django.production_template, "");
        assert_eq!(
            c.django.shared_files,
            [(".env".to_owned(), ".env".to_owned())].into()
        );
        assert_eq!(
            c.django.shared_dirs,
            [("uploads".to_owned(), "uploads".to_owned())].into()
        );
        assert!(!c.frontend.enabled);
        let profile = c.django.profile();
        assert_eq!(profile.project_dir, "");
        assert_eq!(
            profile.migrate,
            ["venv/bin/python", "manage.py", "migrate", "--noinput"]
        );
        assert!(
            text.contains("# the project's wsgi.py\nwsgi_module = \"shop.wsgi\""),
            "{text}"
        );
    }
}

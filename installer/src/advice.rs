//! What the operator changes in uWSGI, nginx and `installer.toml` when a server running the
//! checkout in place moves to the release layout: old line, new line.

use std::fs;
use std::path::Path;

use common::error::BadInput;

use crate::config::InstallerConfig;
use crate::legacy::PROJECT;

/// The uWSGI lines of the in-place setup and what replaces each (`docs/server-setup.md`).
pub fn uwsgi_changes(root: &Path, old: &str) -> Vec<(String, String)> {
    let r = root.display();
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for line in old.lines() {
        let t = line.trim();
        let Some((key, _)) = t.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let new = match key {
            "chdir" => "(remove it: the loader changes into the release each worker serves; a chdir pins workers to one release)".to_owned(),
            "home" | "virtualenv" | "venv" | "pyhome" => "(remove it: every release has its own venv/, which the loader puts on sys.path; uWSGI runs from its own venv)".to_owned(),
            "pythonpath" => "(remove it: the loader sets sys.path from `current`)".to_owned(),
            "module" | "wsgi" | "wsgi-file" | "mount" => format!("wsgi-file = {r}/loader.py"),
            "touch-reload" => format!("touch-chain-reload = {r}/.deploy/reload"),
            "need-app" => "(remove it: with lazy-apps one worker that cannot load would stop uWSGI)".to_owned(),
            "lazy-apps" => "lazy-apps = true".to_owned(),
            "master" => "master = true".to_owned(),
            "processes" | "workers" => "processes = 2 (or more: a chain reload replaces one at a time)".to_owned(),
            _ => continue,
        };
        seen.insert(key.to_owned());
        out.push((t.to_owned(), new));
    }
    let missing = [
        ("master", "master = true".to_owned()),
        ("processes", "processes = 2".to_owned()),
        ("lazy-apps", "lazy-apps = true".to_owned()),
        ("wsgi-file", format!("wsgi-file = {r}/loader.py")),
        (
            "touch-chain-reload",
            format!("touch-chain-reload = {r}/.deploy/reload"),
        ),
        (
            "master-fifo",
            format!("master-fifo = {r}/.deploy/uwsgi.fifo"),
        ),
        (
            "stats",
            "stats = 127.0.0.1:9191 and stats-http = true".to_owned(),
        ),
    ];
    for (key, line) in missing {
        let covered = match key {
            "wsgi-file" => ["module", "wsgi", "wsgi-file", "mount"]
                .iter()
                .any(|k| seen.contains(*k)),
            "touch-chain-reload" => seen.contains("touch-reload"),
            "processes" => seen.contains("processes") || seen.contains("workers"),
            k => seen.contains(k),
        };
        if !covered {
            out.push(("(none)".into(), line));
        }
    }
    out
}

pub fn print_server_changes(
    config: &InstallerConfig,
    uwsgi_ini: Option<&Path>,
) -> anyhow::Result<()> {
    let root = &config.root;
    let r = root.display();
    let (source, old) = match uwsgi_ini {
        Some(p) => (
            format!("`{}`", p.display()),
            fs::read_to_string(p).map_err(|e| {
                BadInput(format!("cannot read the uWSGI configuration `{}`: {e}", p.display()))
            })?,
        ),
        // The usual Ubuntu uwsgi-emperor app serving the checkout in place.
        None => (
            "the usual in-place setup (pass `--uwsgi-ini FILE` to compare yours)".to_owned(),
            format!(
                "chdir = {r}/{PROJECT}\nhome = {r}/{PROJECT}\nmodule = binarycrate.wsgi:application\n"
            ),
        ),
    };
    let mut text = String::new();
    text.push_str(&format!(
        "\nuWSGI: change {source} to the recommended uwsgi.ini (`docs/server-setup.md`), old line -> new line:\n"
    ));
    for (old, new) in uwsgi_changes(root, &old) {
        text.push_str(&format!("  {old}\n      -> {new}\n"));
    }
    text.push_str(&format!(
        "  then restart uWSGI once; it serves the legacy release through `{r}/current` exactly as before.\n"
    ));
    text.push_str(&format!(
        "\nnginx (the site serving {r}):\n  location /static/ {{ alias {r}/{PROJECT}/public/static/; }}\n      -> location /static/ {{ alias {r}/static/; add_header Cache-Control \"public, max-age=31536000, immutable\"; }}\n  location / {{ uwsgi_pass …; }}\n      -> location / {{ include uwsgi_params; uwsgi_pass binarycrate; uwsgi_read_timeout 60s; add_header Cache-Control \"no-cache\"; }} (upstream binarycrate {{ server unix:/run/binarycrate/uwsgi.sock; }})\n  and deploys no longer stop nginx (`service nginx stop/start` goes away).\n"
    ));
    text.push_str(&format!(
        "\ninstaller.toml: reload_fifo = \"{r}/.deploy/uwsgi.fifo\" and [health] stats_url = \"http://127.0.0.1:9191/\"\n"
    ));
    text.push_str(&format!(
        "\nto go back to the old setup entirely: restore the old uWSGI and nginx files and restart them; the checkout `{r}` and its files were never changed.\n"
    ));
    eprint!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uwsgi_lines_map_to_the_recommended_setup() {
        let old = "[uwsgi]\nchdir = /srv/x/binarycrate\nhome = /srv/x/binarycrate\nmodule = binarycrate.wsgi:application\nsocket = /tmp/x.sock\n";
        let changes = uwsgi_changes(Path::new("/srv/x"), old);
        assert!(changes
            .iter()
            .any(|(o, n)| o.starts_with("module") && n == "wsgi-file = /srv/x/loader.py"));
        assert!(changes
            .iter()
            .any(|(o, n)| o.starts_with("chdir") && n.starts_with("(remove")));
        assert!(changes
            .iter()
            .any(|(o, n)| o == "(none)" && n == "lazy-apps = true"));
        assert!(!changes.iter().any(|(o, _)| o.starts_with("socket")));
    }
}

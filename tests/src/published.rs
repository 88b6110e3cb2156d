//! Builds 000001–000004 of the example application, packaged once and published to one file
//! store, and server roots that install them under a real uWSGI: shared by the tests that need
//! several builds (the crash matrix, concurrent activations, a full disk).
//!
//! Build 000002 adds a migration (so killing `migrate` interrupts real work); 000003 and
//! 000004 change only the build number.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bins;
use crate::example::{self, ExampleRepo};
use crate::uwsgi::{UwsgiOptions, UwsgiServer};

/// The published builds; the store lives as long as some test holds it.
pub struct Published {
    pub tmp: tempfile::TempDir,
    pub repo: ExampleRepo,
    /// The file store (a directory).
    pub store: PathBuf,
}

/// The builds every test here installs, by number.
pub const BUILDS: [&str; 4] = ["000001", "000002", "000003", "000004"];

/// Packages and publishes the four builds, or hands out the ones another running test made.
pub fn builds() -> Arc<Published> {
    static SHARED: Mutex<Weak<Published>> = Mutex::new(Weak::new());
    // Held while packaging, so two tests that start together package once.
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = shared.upgrade() {
        return p;
    }
    let p = Arc::new(publish_all().unwrap_or_else(|e| panic!("{e:#}")));
    *shared = Arc::downgrade(&p);
    p
}

fn publish_all() -> anyhow::Result<Published> {
    let tmp = tempfile::Builder::new().prefix("published-").tempdir()?;
    let repo = example::create(&tmp.path().join("repo"))?;
    let store = tmp.path().join("store");
    for number in BUILDS {
        if number == "000002" {
            repo.commit_and_tag(number, add_stars_migration)?;
        } else if number != example::BUILD_NUMBER {
            repo.commit_and_tag(number, |_| {})?;
        }
        let t = Instant::now();
        let out_dir = tmp.path().join(format!("out{number}"));
        let packaged = bins::builder_offline(&repo.work)
            .args(["package", "--tag", &format!("Build{number}"), "--out"])
            .arg(&out_dir)
            .output()?;
        let artifact = succeeded(&packaged, "builder package")?;
        let artifact = artifact
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let published = Command::new(bins::builder())
            .current_dir(&repo.work)
            .arg("publish")
            .arg(&artifact)
            .arg("--store")
            .arg(format!("file://{}", store.display()))
            .output()?;
        succeeded(&published, "builder publish")?;
        eprintln!(
            "published Build{number} in {:.1}s",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(Published { tmp, repo, store })
}

/// A new field and its migration, so that migrating Build000002 changes the database.
fn add_stars_migration(work: &Path) {
    let models = work.join("binarycrate/dashboard/models.py");
    let text = fs::read_to_string(&models).expect("models.py");
    fs::write(
        &models,
        text.replace(
            "    created = ",
            "    stars = models.IntegerField(default=0)\n    created = ",
        ),
    )
    .expect("write models.py");
    fs::write(
        work.join("binarycrate/dashboard/migrations/0002_project_stars.py"),
        "from django.db import migrations, models\n\n\nclass Migration(migrations.Migration):\n    dependencies = [('dashboard', '0001_initial')]\n    operations = [migrations.AddField(model_name='project', name='stars', field=models.IntegerField(default=0))]\n",
    )
    .expect("write the migration");
}

/// stdout of a command that must have succeeded.
pub fn succeeded(out: &Output, what: &str) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub use crate::free_port;

/// A server root with its `installer.toml`, for the published builds; uWSGI is started by
/// the test ([`ServerRoot::start_uwsgi`]) on the ports the configuration names.
#[derive(Debug, Clone)]
pub struct ServerRoot {
    pub root: PathBuf,
    pub config: PathBuf,
    pub http_port: u16,
    pub stats_port: u16,
}

impl ServerRoot {
    /// `dir/srv` with the operator's `shared/production.py`, and `dir/installer.toml`.
    pub fn new(dir: &Path, published: &Published, lock_timeout_secs: u64) -> anyhow::Result<Self> {
        let root = dir.join("srv");
        fs::create_dir_all(root.join("shared"))?;
        let site = Self {
            config: dir.join("installer.toml"),
            root,
            http_port: free_port(),
            stats_port: free_port(),
        };
        site.write_settings(published)?;
        site.write_config(published, lock_timeout_secs)?;
        Ok(site)
    }

    fn write_settings(&self, published: &Published) -> anyhow::Result<()> {
        fs::write(
            self.root.join("shared/production.py"),
            example::production_settings(&published.repo, &self.root)?,
        )?;
        Ok(())
    }

    fn write_config(&self, published: &Published, lock_timeout_secs: u64) -> anyhow::Result<()> {
        let python = crate::moto::venv_dir().join("bin/python");
        fs::write(
            &self.config,
            format!(
                r#"root = {root:?}
store = "file://{store}"
python = {python:?}
reload_fifo = "{root}/.deploy/uwsgi.fifo"
lock_timeout_secs = {lock_timeout_secs}

[health]
url = "http://127.0.0.1:{http}/"
stats_url = "http://127.0.0.1:{stats}/"
timeout_secs = 60
confirm_requests = 5
"#,
                root = self.root.display().to_string(),
                store = published.store.display(),
                python = python.display().to_string(),
                http = self.http_port,
                stats = self.stats_port,
            ),
        )?;
        Ok(())
    }

    /// A copy of this root in `dir/srv` (with new ports): its links into `shared/` and its
    /// database path are rewritten to the copy, so it is a server of its own. Much faster than
    /// installing the same releases again.
    pub fn copy_to(
        &self,
        dir: &Path,
        published: &Published,
        lock_timeout_secs: u64,
    ) -> anyhow::Result<Self> {
        let root = dir.join("srv");
        fs::create_dir_all(dir)?;
        let status = Command::new("cp")
            .arg("-a")
            .arg(&self.root)
            .arg(&root)
            .status()?;
        if !status.success() {
            bail!("cp -a `{}` failed", self.root.display());
        }
        let copy = Self {
            config: dir.join("installer.toml"),
            root,
            http_port: free_port(),
            stats_port: free_port(),
        };
        let mut walk = walkdir::WalkDir::new(&copy.root).into_iter();
        while let Some(entry) = walk.next() {
            let entry = entry?;
            if entry.file_type().is_dir() && entry.file_name() == "venv" {
                walk.skip_current_dir();
                continue;
            }
            if !entry.file_type().is_symlink() {
                continue;
            }
            let target = fs::read_link(entry.path())?;
            if let Ok(rest) = target.strip_prefix(&self.root) {
                fs::remove_file(entry.path())?;
                std::os::unix::fs::symlink(copy.root.join(rest), entry.path())?;
            }
        }
        // uWSGI's FIFO and socket files belong to the original's server.
        let _ = fs::remove_file(copy.root.join(".deploy/uwsgi.fifo"));
        copy.write_settings(published)?;
        copy.write_config(published, lock_timeout_secs)?;
        Ok(copy)
    }

    /// `installer ARGS` with this root's configuration and extra environment.
    pub fn installer(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.installer_command(args, env)
            .output()
            .expect("run the installer")
    }

    pub fn installer_command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(bins::installer());
        cmd.env("BINARYCRATE_INSTALLER_CONFIG", &self.config)
            .env_remove(common::fault::ENV)
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Where `current` points (`releases/BuildNNNNNN`), if anywhere.
    pub fn current(&self) -> Option<String> {
        fs::read_link(self.root.join("current"))
            .ok()
            .map(|p| p.display().to_string())
    }

    pub fn uwsgi_options(&self) -> UwsgiOptions {
        UwsgiOptions {
            http_port: Some(self.http_port),
            stats_port: Some(self.stats_port),
            ..UwsgiOptions::default()
        }
    }

    /// uWSGI serving this root (which must have `current`).
    pub fn start_uwsgi(&self) -> anyhow::Result<UwsgiServer> {
        UwsgiServer::start_with(&self.root, &self.uwsgi_options())
    }

    /// The first activation of a fresh root: uWSGI starts once `current` exists, as on a new
    /// machine. Returns the running server.
    pub fn first_activation(&self, build: &str) -> anyhow::Result<UwsgiServer> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let root = self.root.clone();
        let options = self.uwsgi_options();
        let done = Arc::new(AtomicBool::new(false));
        let installer_done = done.clone();
        let starter = std::thread::spawn(move || -> anyhow::Result<UwsgiServer> {
            while fs::symlink_metadata(root.join("current")).is_err() {
                if installer_done.load(Ordering::SeqCst) {
                    bail!("the installer ended without making `current`");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            UwsgiServer::start_with(&root, &options)
        });
        let out = self.installer(&["activate", "--build", build], &[]);
        done.store(true, Ordering::SeqCst);
        let server = starter
            .join()
            .map_err(|_| anyhow::anyhow!("the uWSGI starter panicked"))?;
        succeeded(&out, &format!("installer activate --build {build}"))?;
        server.context("starting uWSGI")
    }
}

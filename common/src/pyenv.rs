//! A Python interpreter's identity, and the light virtualenv both binaries give a set of
//! installed dependencies: the builder for collectstatic, the installer for each release.
//!
//! `python -m venv --without-pip` costs a second or so of interpreter start-up and copying; what
//! it leaves that matters here is three links to the interpreter, a `pyvenv.cfg` naming the
//! interpreter's home, and `lib/pythonX.Y/site-packages`, which both sides make a link to the
//! dependencies. Written directly, that is a few milliseconds, and both sides write the same.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::FsError;

/// What to run under an interpreter to learn its identity, parsed by [`PythonInfo::parse`].
/// `_base_executable` (3.7+) is the interpreter behind a venv's own link; older ones have only
/// `executable`.
pub const PROBE_SCRIPT: &str = "import os, sys\nprint('%d %d %d' % sys.version_info[:3])\nprint(os.path.realpath(getattr(sys, '_base_executable', None) or sys.executable))\nprint(sys.version.replace(chr(10), ' '))";

/// [`PROBE_SCRIPT`] plus pip's version (`-` without pip) on a last line: what the builder's
/// caches are keyed by. Importing the metadata costs start-up time the installer does not spend.
pub const PROBE_WITH_PIP_SCRIPT: &str = "import os, sys\nprint('%d %d %d' % sys.version_info[:3])\nprint(os.path.realpath(getattr(sys, '_base_executable', None) or sys.executable))\nprint(sys.version.replace(chr(10), ' '))\ntry:\n    import importlib.metadata as m; print(m.version('pip'))\nexcept Exception:\n    print('-')";

/// An interpreter as [`PROBE_SCRIPT`] describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonInfo {
    /// `(major, minor)`.
    pub version: (u32, u32),
    /// `major.minor.micro`, as `pyvenv.cfg` records it.
    pub full_version: String,
    /// The real interpreter (not a venv's link to it).
    pub executable: PathBuf,
    /// The directory of `executable`: `home` in `pyvenv.cfg`.
    pub home: PathBuf,
    /// `sys.version` on one line (build date and compiler included).
    pub banner: String,
    /// pip's version, when the interpreter has pip and was asked ([`PROBE_WITH_PIP_SCRIPT`]).
    pub pip: Option<String>,
}

impl PythonInfo {
    /// Reads [`PROBE_SCRIPT`]'s (or [`PROBE_WITH_PIP_SCRIPT`]'s) output; `None` when it is not
    /// that output.
    pub fn parse(out: &str) -> Option<Self> {
        let mut lines = out.lines();
        let parts: Vec<u32> = lines
            .next()?
            .split(' ')
            .map(|p| p.parse().ok())
            .collect::<Option<_>>()?;
        let [major, minor, micro] = parts.as_slice() else {
            return None;
        };
        let executable = PathBuf::from(lines.next()?);
        let home = executable.parent()?.to_owned();
        if !executable.is_absolute() {
            return None;
        }
        let banner = lines.next().unwrap_or_default().to_owned();
        let pip = lines
            .next()
            .filter(|p| !p.is_empty() && *p != "-")
            .map(str::to_owned);
        Some(Self {
            version: (*major, *minor),
            full_version: format!("{major}.{minor}.{micro}"),
            executable,
            home,
            banner,
            pip,
        })
    }

    /// `lib/pythonX.Y/site-packages`, relative to a venv.
    pub fn site_packages(&self) -> PathBuf {
        let (major, minor) = self.version;
        PathBuf::from(format!("lib/python{major}.{minor}/site-packages"))
    }
}

/// Writes a venv at `venv` (which must not exist) for `python` whose site-packages is a link to
/// `site_target` (relative to the site-packages directory's parent, or absolute).
pub fn write_light_venv(
    venv: &Path,
    python: &PythonInfo,
    site_target: &Path,
) -> Result<(), FsError> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| FsError::new(op, path, source)
    };
    let site = venv.join(python.site_packages());
    let bin = venv.join("bin");
    fs::create_dir_all(&bin).map_err(io("cannot create", &bin))?;
    let lib = site.parent().expect("lib/pythonX.Y");
    fs::create_dir_all(lib).map_err(io("cannot create", lib))?;
    let cfg = venv.join("pyvenv.cfg");
    let text = format!(
        "home = {}\ninclude-system-site-packages = false\nversion = {}\n",
        python.home.display(),
        python.full_version
    );
    fs::write(&cfg, text).map_err(io("cannot write", &cfg))?;
    let (major, minor) = python.version;
    for name in ["python", "python3", &format!("python{major}.{minor}")] {
        let link = bin.join(name);
        std::os::unix::fs::symlink(&python.executable, &link).map_err(io("cannot link", &link))?;
    }
    std::os::unix::fs::symlink(site_target, &site).map_err(io("cannot link", &site))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_run_and_say_who_they_are() {
        let Ok(out) = std::process::Command::new("python3")
            .args(["-c", PROBE_WITH_PIP_SCRIPT])
            .output()
        else {
            eprintln!("skipped: no python3 here");
            return;
        };
        let info = PythonInfo::parse(&String::from_utf8_lossy(&out.stdout)).expect("parsed");
        assert!(info.version.0 == 3 && info.executable.is_absolute());
        assert!(PROBE_WITH_PIP_SCRIPT.starts_with(PROBE_SCRIPT));
    }

    #[test]
    fn probe_output_is_read_and_a_venv_written_from_it() {
        let out = "3 11 2 \n/usr/bin/python3.11\n3.11.2 (main) [GCC 12]\n23.0.1\n";
        assert_eq!(
            PythonInfo::parse(out),
            None,
            "a trailing space is not a version"
        );
        let out = "3 11 2\n/usr/bin/python3.11\n3.11.2 (main) [GCC 12]\n-\n";
        let info = PythonInfo::parse(out).expect("probe output");
        assert_eq!(info.version, (3, 11));
        assert_eq!(info.full_version, "3.11.2");
        assert_eq!(info.home, Path::new("/usr/bin"));
        assert_eq!(info.pip, None);
        assert_eq!(PythonInfo::parse("3 11\n/usr/bin/python3\n"), None);
        assert_eq!(PythonInfo::parse("3 11 2\npython3\n"), None);

        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join("venv");
        write_light_venv(&venv, &info, Path::new("../../../deps")).unwrap();
        let cfg = fs::read_to_string(venv.join("pyvenv.cfg")).unwrap();
        assert!(cfg.contains("home = /usr/bin\n") && cfg.contains("version = 3.11.2\n"));
        for name in ["python", "python3", "python3.11"] {
            assert_eq!(
                fs::read_link(venv.join("bin").join(name)).unwrap(),
                Path::new("/usr/bin/python3.11")
            );
        }
        assert_eq!(
            fs::read_link(venv.join("lib/python3.11/site-packages")).unwrap(),
            Path::new("../../../deps")
        );
        assert!(
            write_light_venv(&venv, &info, Path::new("x")).is_err(),
            "an existing venv is not written over"
        );
    }
}

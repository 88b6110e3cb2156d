//! What an application repository holds, found by reading its files (no Django is imported):
//! `manage.py`, the settings and WSGI modules, `STATIC_ROOT` and `MEDIA_ROOT`, the requirements,
//! a build-number file, a production template or a `.env`, the git submodules, a PyPy.js
//! front end. `builder init` writes `deploy.toml` from it.

use std::fs;
use std::path::{Path, PathBuf};

/// What was found, as paths relative to the repository root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// `manage.py`.
    pub manage_py: String,
    /// The directory holding it ("" for the repository root).
    pub project_dir: String,
    /// The settings module the servers run with, and the file that named it.
    pub settings_module: Option<(String, String)>,
    /// The WSGI module.
    pub wsgi_module: Option<String>,
    /// `STATIC_ROOT` and `MEDIA_ROOT`, when a settings file sets them in a form read here.
    pub static_root: Option<String>,
    pub media_root: Option<String>,
    pub requirements: Option<String>,
    /// A file with a `BUILD_NUMBER = '…'` line.
    pub build_number_file: Option<String>,
    /// The template of a settings file that is the server's own (`production_template.py`).
    pub production_template: Option<String>,
    /// The settings read a `.env` file beside `manage.py`.
    pub env_file: bool,
    /// Submodule paths from `.gitmodules`.
    pub submodules: Vec<String>,
    /// The PyPy.js bundler is where BinaryCrate has it.
    pub frontend: bool,
    /// Where the settings package is (for a new build-number file).
    pub settings_dir: Option<String>,
}

/// Directories never searched.
const SKIP: [&str; 8] = [
    ".git",
    "node_modules",
    "venv",
    ".venv",
    "env",
    "__pycache__",
    "dist",
    "artifacts",
];

/// Every file under `root` (not following links), as relative paths, shallow first.
fn files(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0 || !SKIP.contains(&e.file_name().to_string_lossy().as_ref())
        })
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| {
            e.path()
                .strip_prefix(root)
                .ok()
                .and_then(Path::to_str)
                .map(str::to_owned)
        })
        .collect();
    out.sort_by_key(|p| (p.matches('/').count(), p.clone()));
    out
}

fn parent(path: &str) -> String {
    Path::new(path)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn join(dir: &str, rest: &str) -> String {
    if dir.is_empty() {
        rest.to_owned()
    } else {
        format!("{dir}/{rest}")
    }
}

/// The module a `.py` file (or package directory) is, seen from `project_dir`.
fn module_of(project_dir: &str, file: &str) -> Option<String> {
    let rel = if project_dir.is_empty() {
        file
    } else {
        file.strip_prefix(&format!("{project_dir}/"))?
    };
    let rel = rel.strip_suffix(".py")?;
    let rel = rel.strip_suffix("/__init__").unwrap_or(rel);
    Some(rel.replace('/', "."))
}

/// `os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'x')` in a file.
fn settings_default(text: &str) -> Option<String> {
    let at = text.find("DJANGO_SETTINGS_MODULE")?;
    let rest = &text[at + "DJANGO_SETTINGS_MODULE".len()..];
    let rest = rest.trim_start_matches(['\'', '"']).trim_start();
    let rest = rest.strip_prefix(',')?.trim_start();
    let quote = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let value = &rest[1..];
    Some(value[..value.find(quote)?].to_owned())
}

/// `NAME = BASE_DIR / 'a' / 'b'` or `NAME = os.path.join(BASE_DIR, 'a', 'b')`: `a/b`.
fn base_dir_path(text: &str, name: &str) -> Option<String> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(name) && l.contains('='))?;
    let value = line.split_once('=')?.1.trim();
    if !value.contains("BASE_DIR") {
        return None;
    }
    let parts: Vec<String> = value
        .split(['\'', '"'])
        .skip(1)
        .step_by(2)
        .map(|p| p.trim_matches('/').to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Reads what the repository at `root` holds; `None` when there is no `manage.py`.
pub fn discover(root: &Path) -> Result<Found, String> {
    let all = files(root);
    let manages: Vec<&String> = all
        .iter()
        .filter(|f| Path::new(f).file_name().is_some_and(|n| n == "manage.py"))
        .collect();
    let manage_py = match manages.as_slice() {
        [] => return Err("no `manage.py` in the repository: run `builder init` in a Django application's repository".into()),
        [one] => (*one).clone(),
        [first, second, ..] if first.matches('/').count() < second.matches('/').count() => {
            (*first).clone()
        }
        many => {
            let list: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
            return Err(format!(
                "several `manage.py` at the same depth ({}): set `django.manage_py` in `deploy.toml` yourself",
                list.join(", ")
            ));
        }
    };
    let project_dir = parent(&manage_py);
    let read = |f: &str| fs::read_to_string(root.join(f)).unwrap_or_default();
    let mut found = Found {
        manage_py: manage_py.clone(),
        project_dir: project_dir.clone(),
        ..Found::default()
    };
    let in_project =
        |f: &&String| project_dir.is_empty() || f.starts_with(&format!("{project_dir}/"));

    // The WSGI module, and the settings it (or manage.py) names.
    let wsgi = all
        .iter()
        .filter(in_project)
        .find(|f| Path::new(f).file_name().is_some_and(|n| n == "wsgi.py"));
    found.wsgi_module = wsgi.and_then(|f| module_of(&project_dir, f));
    let named = wsgi
        .and_then(|f| settings_default(&read(f)).map(|m| (m, f.clone())))
        .or_else(|| settings_default(&read(&manage_py)).map(|m| (m, manage_py.clone())));
    if let Some((module, origin)) = named {
        // A settings file that is not in the repository is the server's own, made from a
        // template beside it.
        let file = join(&project_dir, &format!("{}.py", module.replace('.', "/")));
        let dir = parent(&file);
        found.settings_dir = Some(dir.clone());
        if !root.join(&file).is_file() {
            let stem = Path::new(&file)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let template = join(&dir, &format!("{stem}_template.py"));
            if root.join(&template).is_file() {
                found.production_template = Some(template);
            }
        } else if root.join(&dir).join("__init__.py").is_file() {
            found.settings_dir = Some(dir);
        }
        found.settings_module = Some((module, origin));
    }

    // Settings values: every Python file of the settings package (or the settings module).
    let settings_files: Vec<&String> = match &found.settings_dir {
        Some(dir) => all
            .iter()
            .filter(|f| parent(f) == *dir && f.ends_with(".py"))
            .collect(),
        None => Vec::new(),
    };
    for f in &settings_files {
        let text = read(f);
        if found.static_root.is_none() {
            found.static_root = base_dir_path(&text, "STATIC_ROOT").map(|p| join(&project_dir, &p));
        }
        if found.media_root.is_none() {
            found.media_root = base_dir_path(&text, "MEDIA_ROOT").map(|p| join(&project_dir, &p));
        }
        if text.contains("'.env'") || text.contains("\".env\"") {
            found.env_file = true;
        }
    }

    found.requirements = [
        "requirements.txt",
        "requirements/production.txt",
        "requirements/prod.txt",
        "requirements/base.txt",
    ]
    .into_iter()
    .find(|f| root.join(f).is_file())
    .map(str::to_owned);
    found.build_number_file = all
        .iter()
        .filter(|f| f.ends_with(".py"))
        .find(|f| {
            read(f)
                .lines()
                .any(|l| l.starts_with("BUILD_NUMBER =") || l.starts_with("BUILD_NUMBER="))
        })
        .cloned();
    found.submodules = read(".gitmodules")
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("path")
                .map(|r| r.trim_start_matches([' ', '=']).trim().to_owned())
        })
        .collect();
    found.frontend = root
        .join("pypyjs-release/pypyjs-release/tools/module_bundler.py")
        .is_file();
    Ok(found)
}

/// Where a new build-number file goes: the settings package, else the project package.
pub fn new_build_number_file(found: &Found) -> PathBuf {
    let dir = found
        .settings_dir
        .clone()
        .or_else(|| {
            found.wsgi_module.as_ref().map(|w| {
                parent(&join(
                    &found.project_dir,
                    &format!("{}.py", w.replace('.', "/")),
                ))
            })
        })
        .unwrap_or_else(|| found.project_dir.clone());
    PathBuf::from(join(&dir, "build_number.py"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, file: &str, text: &str) {
        let path = root.join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn a_binarycrate_shaped_repository() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(
            r,
            "binarycrate/manage.py",
            "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'binarycrate.settings.production')\n",
        );
        write(r, "binarycrate/binarycrate/wsgi.py", "os.environ.setdefault(\"DJANGO_SETTINGS_MODULE\", \"binarycrate.settings.production\")\n");
        write(r, "binarycrate/binarycrate/settings/__init__.py", "");
        write(
            r,
            "binarycrate/binarycrate/settings/base.py",
            "STATIC_ROOT = BASE_DIR / 'public' / 'static'\nMEDIA_ROOT = BASE_DIR / 'media'\n",
        );
        write(
            r,
            "binarycrate/binarycrate/settings/production_template.py",
            "from .base import *\n",
        );
        write(
            r,
            "binarycrate/binarycrate/settings/build_number.py",
            "BUILD_NUMBER = '000004'\n",
        );
        write(r, "requirements.txt", "django==5.2.19\n");
        write(
            r,
            ".gitmodules",
            "[submodule \"cavorite\"]\n\tpath = cavorite\n\turl = x\n",
        );
        write(
            r,
            "pypyjs-release/pypyjs-release/tools/module_bundler.py",
            "",
        );
        write(r, "venv/lib/manage.py", "");
        let f = discover(r).unwrap();
        assert_eq!(f.manage_py, "binarycrate/manage.py");
        assert_eq!(f.project_dir, "binarycrate");
        assert_eq!(f.wsgi_module.as_deref(), Some("binarycrate.wsgi"));
        assert_eq!(
            f.settings_module.as_ref().map(|s| s.0.as_str()),
            Some("binarycrate.settings.production")
        );
        assert_eq!(
            f.production_template.as_deref(),
            Some("binarycrate/binarycrate/settings/production_template.py")
        );
        assert_eq!(f.static_root.as_deref(), Some("binarycrate/public/static"));
        assert_eq!(f.media_root.as_deref(), Some("binarycrate/media"));
        assert_eq!(
            f.build_number_file.as_deref(),
            Some("binarycrate/binarycrate/settings/build_number.py")
        );
        assert_eq!(f.submodules, ["cavorite"]);
        assert!(f.frontend && !f.env_file);
    }

    #[test]
    fn a_twelve_factor_repository_with_manage_py_at_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(
            r,
            "manage.py",
            "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'shop.settings')\n",
        );
        write(r, "shop/__init__.py", "");
        write(
            r,
            "shop/wsgi.py",
            "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'shop.settings')\n",
        );
        write(r, "shop/settings.py", "ENV = read(BASE_DIR / '.env')\nSTATIC_ROOT = os.path.join(BASE_DIR, 'staticfiles')\nMEDIA_ROOT = BASE_DIR / 'uploads'\n");
        let f = discover(r).unwrap();
        assert_eq!(f.project_dir, "");
        assert_eq!(f.wsgi_module.as_deref(), Some("shop.wsgi"));
        assert_eq!(f.static_root.as_deref(), Some("staticfiles"));
        assert_eq!(f.media_root.as_deref(), Some("uploads"));
        assert!(f.env_file);
        assert_eq!(f.production_template, None);
        assert_eq!(f.build_number_file, None);
        assert_eq!(new_build_number_file(&f), Path::new("shop/build_number.py"));
        let none = tempfile::tempdir().unwrap();
        assert!(discover(none.path())
            .unwrap_err()
            .contains("no `manage.py`"));
    }
}

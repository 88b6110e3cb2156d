//! What `scripts/dist` ships: man pages and shell completions that match the binaries' real
//! command lines, and (from the `dist/` that `scripts/test` has `scripts/dist --installer-only`
//! write before the tests) a portable installer whose glibc floor and shared libraries are
//! checked again here, its sums, and its Debian package installed into a scratch dpkg root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tests::bins;

/// The oldest glibc the fleet has (Ubuntu 16.04).
const GLIBC_FLOOR: (u32, u32) = (2, 23);
const PACKAGE: &str = "binarycrate-installer";

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).expect("UTF-8 output")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The subcommands `--help` lists (its `Commands:` block, without `help`).
fn subcommands(bin: &Path) -> Vec<String> {
    let help = stdout(Command::new(bin).arg("--help"));
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// What bash offers after `words` (the last one being completed), from the generated script.
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_LINE='{}'\nCOMP_POINT=${{#COMP_LINE}}\n\
         _{} '{}' '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words.len() - 1,
        words.join(" "),
        words[0],
        words[0],
        words[words.len() - 1],
        words[words.len() - 2],
    );
    stdout(Command::new("bash").args(["--norc", "-c", &program]))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Renders a man page with groff's warnings on, so broken roff fails the test.
fn check_page(page: &Path) {
    if !tests::ready((!have("groff")).then(|| "groff is not installed (apt groff-base)".into())) {
        return;
    }
    let out = run(Command::new("groff")
        .args(["-k", "-man", "-Tutf8", "-ww"])
        .arg(page));
    assert!(
        out.stderr.is_empty(),
        "groff warns about `{}`: {}",
        page.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // grotty emboldens by overstriking (`N\x08N`): keep the last character of each pair.
    let raw = String::from_utf8_lossy(&out.stdout);
    let mut text = String::new();
    for c in raw.chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    for section in ["NAME", "SYNOPSIS", "DESCRIPTION"] {
        assert!(
            text.contains(section),
            "`{}` has no {section}",
            page.display()
        );
    }
}

/// `generate-docs` from the binaries under test: one page per subcommand `--help` lists, pages
/// groff renders without warnings, and completions that offer the real subcommands and flags
/// (bash is run; zsh and fish only parse them when installed).
#[test]
fn generated_docs_cover_every_subcommand_of_both_binaries() {
    for (bin, name) in [
        (bins::installer(), "installer"),
        (bins::builder(), "builder"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("docs");
        let listed = stdout(
            Command::new(&bin)
                .args(["generate-docs", "--out"])
                .arg(&out),
        );
        let subs = subcommands(&bin);
        assert!(
            subs.len() >= 8,
            "{name}: too few subcommands parsed: {subs:?}"
        );

        let man = out.join("man/man1");
        let mut expected: Vec<String> = subs.iter().map(|s| format!("{name}-{s}.1")).collect();
        expected.push(format!("{name}.1"));
        expected.sort();
        let mut pages: Vec<String> = fs::read_dir(&man)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        pages.sort();
        assert_eq!(pages, expected, "{name}: one man page per subcommand");
        assert_eq!(listed.lines().count(), pages.len() + 3, "{listed}");
        for page in &pages {
            check_page(&man.join(page));
        }
        let top = fs::read_to_string(man.join(format!("{name}.1"))).unwrap();
        assert!(
            top.contains(".SH \"EXIT STATUS\""),
            "{name}.1 lacks the exit codes"
        );
        assert!(
            !top.contains("generate"),
            "{name}.1 mentions the packaging command"
        );

        let bash = out.join(format!("completions/bash/{name}"));
        let offered = bash_complete(&bash, &[name, ""]);
        for sub in &subs {
            assert!(
                offered.contains(sub),
                "{name}: bash does not offer `{sub}`: {offered:?}"
            );
        }
        assert!(
            !offered.iter().any(|w| w.contains("generate")),
            "{name}: bash offers the packaging command: {offered:?}"
        );
        let flags = bash_complete(&bash, &[name, &subs[0], "--"]);
        assert!(
            flags.contains(&"--help".to_owned()),
            "{name} {}: {flags:?}",
            subs[0]
        );

        let zsh = out.join(format!("completions/zsh/_{name}"));
        assert!(fs::read_to_string(&zsh)
            .unwrap()
            .starts_with(&format!("#compdef {name}")));
        if tests::ready((!have("zsh")).then(|| "zsh is not installed".into())) {
            run(Command::new("zsh").arg("-n").arg(&zsh));
        }
        let fish = out.join(format!("completions/fish/{name}.fish"));
        if tests::ready((!have("fish")).then(|| "fish is not installed".into())) {
            run(Command::new("fish").arg("--no-execute").arg(&fish));
        }
    }
    // The installer's own subcommands, named, so an empty parse cannot pass.
    let subs = subcommands(&bins::installer());
    for sub in [
        "activate", "rollback", "status", "list", "verify", "prune", "adopt",
    ] {
        assert!(subs.iter().any(|s| s == sub), "{subs:?}");
    }
}

#[test]
fn generate_docs_refuses_an_unwritable_place_and_a_missing_out() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    fs::write(&file, "x").unwrap();
    let out = Command::new(bins::installer())
        .args(["generate-docs", "--out"])
        .arg(file.join("docs"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot create directory") && err.contains("file/docs"),
        "{err}"
    );
    let out = Command::new(bins::builder())
        .arg("generate-docs")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--out <DIR>"));
}

/// `dist/` as `scripts/dist` left it, or `None` (a skip, or a failure under CI) when it has not
/// been run here.
fn dist() -> Option<PathBuf> {
    let dir = tests::moto::workspace_root().join("dist");
    let missing = (!dir.join("installer").is_file()).then(|| {
        format!(
            "`{}` has no installer: run `scripts/dist --installer-only` first (scripts/test does)",
            dir.display()
        )
    });
    tests::ready(missing).then_some(dir)
}

/// The highest `GLIBC_x.y` any dynamic symbol of `bin` needs, read with `objdump -T`.
fn highest_glibc(bin: &Path) -> (u32, u32) {
    let table = stdout(Command::new("objdump").arg("-T").arg(bin));
    table
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>());
            Some((parts.next()?.ok()?, parts.next().unwrap_or(Ok(0)).ok()?))
        })
        .max()
        .unwrap_or_else(|| panic!("`{}` has no GLIBC_ symbol versions", bin.display()))
}

fn needed(bin: &Path) -> Vec<String> {
    stdout(Command::new("readelf").arg("-d").arg(bin))
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split('[').nth(1)?.trim_end_matches(']').to_owned()))
        .collect()
}

/// The portable binaries (the installer always, the builder when a full `scripts/dist` ran):
/// glibc floor, libraries, `--version`, and the same commit as the binaries under test (so a
/// stale `dist/` is noticed). The host build is put through the same floor check to show that
/// it can fail.
#[test]
fn dist_binaries_run_on_glibc_2_23_and_need_only_glibc() {
    let Some(dist) = dist() else { return };
    let allowed = [
        "libc.so.6",
        "libm.so.6",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        "libgcc_s.so.1",
        "ld-linux-x86-64.so.2",
    ];
    let commit = |v: &str| {
        v.split("commit ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            // Whether `-dirty` is current depends on which edits re-ran each build script.
            .map(|c| c.trim_end_matches("-dirty").to_owned())
    };
    for (name, ours) in [
        ("installer", bins::installer()),
        ("builder", bins::builder()),
    ] {
        let bin = dist.join(name);
        if name == "builder" && !bin.exists() {
            eprintln!("dist: no builder in dist/ (scripts/dist --installer-only); checked the installer only");
            continue;
        }
        let highest = highest_glibc(&bin);
        assert!(
            highest <= GLIBC_FLOOR,
            "dist/{name} needs GLIBC_{}.{}, above the fleet's {}.{}",
            highest.0,
            highest.1,
            GLIBC_FLOOR.0,
            GLIBC_FLOOR.1
        );
        let libs = needed(&bin);
        assert!(libs.contains(&"libc.so.6".to_owned()), "{libs:?}");
        for lib in &libs {
            assert!(allowed.contains(&lib.as_str()), "dist/{name} needs `{lib}`");
        }
        let version = stdout(Command::new(&bin).arg("--version"));
        assert!(version.contains("glibc >= 2.23"), "{version}");
        let host_version = stdout(Command::new(&ours).arg("--version"));
        assert_eq!(
            commit(&version),
            commit(&host_version),
            "dist/{name} is from another commit than this checkout: run scripts/dist again"
        );
        // The tests' own build links against this machine's newer glibc: the same check must
        // find it too new, or it could not fail.
        let host = highest_glibc(&ours);
        assert!(
            host > GLIBC_FLOOR,
            "the host build of {name} needs only GLIBC_{}.{}",
            host.0,
            host.1
        );
        tests::show(&format!(
            "dist: {name} {} bytes, highest GLIBC_{}.{} (host build: GLIBC_{}.{}), needs {}",
            fs::metadata(&bin).unwrap().len(),
            highest.0,
            highest.1,
            host.0,
            host.1,
            libs.join(" ")
        ));
    }
}

/// Every line of SHA256SUMS and B3SUMS matches its file, and both cover the binaries and the
/// package.
#[test]
fn dist_sums_match() {
    let Some(dist) = dist() else { return };
    let sha = fs::read_to_string(dist.join("SHA256SUMS")).unwrap();
    let b3 = fs::read_to_string(dist.join("B3SUMS")).unwrap();
    for (sums, name) in [(&sha, "SHA256SUMS"), (&b3, "B3SUMS")] {
        let files: Vec<&str> = sums.lines().filter_map(|l| l.split("  ").nth(1)).collect();
        assert!(files.contains(&"installer"), "{name}: {files:?}");
        assert!(
            files.iter().any(|f| f.ends_with(".deb")),
            "{name}: {files:?}"
        );
        assert_eq!(
            files.len(),
            sums.lines().count(),
            "{name} is malformed: {sums}"
        );
    }
    run(Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&dist));
    for line in b3.lines() {
        let (hash, file) = line.split_once("  ").unwrap();
        let actual = blake3::hash(&fs::read(dist.join(file)).unwrap());
        assert_eq!(actual.to_hex().as_str(), hash, "B3SUMS: `{file}`");
    }
}

fn the_deb(dist: &Path) -> PathBuf {
    let debs: Vec<PathBuf> = fs::read_dir(dist)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    debs.into_iter().next().unwrap()
}

/// The package: control fields, files in their standard places, `/etc/binarycrate/installer.toml`
/// a conffile; then installed with dpkg into a scratch root, where the binary runs, an edited
/// configuration survives reinstalling and removing keeps it, as a conffile's must.
#[test]
fn dist_deb_installs_the_binary_docs_and_a_conffile() {
    let Some(dist) = dist() else { return };
    let deb = the_deb(&dist);
    let field = |f: &str| {
        stdout(Command::new("dpkg-deb").args(["--field"]).arg(&deb).arg(f))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), PACKAGE);
    assert_eq!(field("Architecture"), "amd64");
    assert!(
        field("Depends").contains("libc6 (>= 2.23)"),
        "{}",
        field("Depends")
    );
    assert!(!field("Description").is_empty());

    let listing = stdout(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let files: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.'))
        .collect();
    let mut wanted = vec![
        "/usr/bin/installer".to_owned(),
        "/etc/binarycrate/installer.toml".to_owned(),
        "/usr/share/bash-completion/completions/installer".to_owned(),
        "/usr/share/zsh/vendor-completions/_installer".to_owned(),
        "/usr/share/fish/vendor_completions.d/installer.fish".to_owned(),
        "/usr/share/man/man1/installer.1.gz".to_owned(),
    ];
    for sub in subcommands(&dist.join("installer")) {
        wanted.push(format!("/usr/share/man/man1/installer-{sub}.1.gz"));
    }
    for want in &wanted {
        assert!(
            files.contains(&want.as_str()),
            "the package lacks `{want}`:\n{listing}"
        );
    }

    let control = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(control.path()));
    let conffiles = fs::read_to_string(control.path().join("conffiles")).unwrap_or_default();
    assert_eq!(conffiles.trim(), "/etc/binarycrate/installer.toml");

    // dpkg's own database in a scratch root: nothing outside it changes. libc6 is not in that
    // database, hence --force-depends.
    let root = tempfile::tempdir().unwrap();
    let admin = root.path().join("var/lib/dpkg");
    fs::create_dir_all(admin.join("info")).unwrap();
    fs::create_dir_all(admin.join("updates")).unwrap();
    fs::write(admin.join("status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        run(Command::new("dpkg")
            .arg(format!("--root={}", root.path().display()))
            .arg(format!("--admindir={}", admin.display()))
            .args(["--force-depends", "--force-not-root"])
            .args(args))
    };
    dpkg(&["--install", deb.to_str().unwrap()]);
    let bin = root.path().join("usr/bin/installer");
    assert_eq!(
        fs::read(&bin).unwrap(),
        fs::read(dist.join("installer")).unwrap(),
        "the packaged binary is the checked one in dist/"
    );
    let conf = root.path().join("etc/binarycrate/installer.toml");
    assert_eq!(
        fs::read_to_string(&conf).unwrap(),
        include_str!("../../../installer/package/installer.toml")
    );
    // The installed example is a configuration the installed binary accepts, and the defaults.
    let effective = stdout(Command::new(&bin).arg("--config").arg(&conf).arg("config"));
    let defaults = stdout(Command::new(&bin).args(["--config", "/dev/null", "config"]));
    assert_eq!(effective, defaults);
    let page = root
        .path()
        .join("usr/share/man/man1/installer-activate.1.gz");
    let unzipped = stdout(Command::new("gzip").arg("-dc").arg(&page));
    assert_eq!(
        unzipped,
        fs::read_to_string(dist.join("man/man1/installer-activate.1")).unwrap()
    );

    let edited = "root = \"/srv/elsewhere\"\n";
    fs::write(&conf, edited).unwrap();
    dpkg(&["--install", deb.to_str().unwrap()]);
    assert_eq!(
        fs::read_to_string(&conf).unwrap(),
        edited,
        "reinstalling overwrote the edited conffile"
    );
    dpkg(&["--remove", PACKAGE]);
    assert!(!bin.exists(), "remove left the binary");
    assert_eq!(
        fs::read_to_string(&conf).unwrap(),
        edited,
        "remove deleted the conffile"
    );
    dpkg(&["--purge", PACKAGE]);
    assert!(!conf.exists(), "purge left the conffile");
    tests::show(&format!(
        "dist: {} {} bytes, {} files, conffile kept across reinstall and remove",
        deb.file_name().unwrap().to_string_lossy(),
        fs::metadata(&deb).unwrap().len(),
        files.iter().filter(|f| !f.ends_with('/')).count()
    ));
}

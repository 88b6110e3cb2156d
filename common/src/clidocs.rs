//! Shell completions and man pages rendered from a binary's clap definition, so what
//! `scripts/dist` ships and the Debian package installs can never drift from `--help`; and the
//! binary's part of the configuration reference (see [`crate::configdoc`]).
//!
//! Both binaries answer a hidden `generate-docs --out DIR` command line ([`intercept`]): it needs
//! the compiled command tree, and the dist build already has the binary (built for the target,
//! which runs on the build host too), so no second host build is needed.
//! `generate-docs --config-doc docs/configuration.md` rewrites the binary's configuration table
//! in that file.

use std::fs;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

use crate::atomic;
use crate::error::FsError;
use crate::report::ExitCode;

/// `<bin> generate-docs --out DIR`: hidden from `--help` and from the completions it writes.
#[derive(Debug, clap::Parser)]
struct Invocation {
    #[command(subcommand)]
    command: DocsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DocsCommand {
    /// Write this binary's man pages and shell completions (for packaging), or its part of
    /// the configuration reference.
    #[command(arg_required_else_help = true)]
    GenerateDocs {
        /// Where to write `man/man1/*.1` and `completions/{bash,zsh,fish}/*` (created if
        /// missing).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Rewrite this binary's configuration table in this Markdown file (between its
        /// `<!-- … generated, do not edit -->` markers).
        #[arg(long, value_name = "FILE")]
        config_doc: Option<PathBuf>,
    },
}

/// A binary's configuration reference: the section of `docs/configuration.md` it fills, and
/// the table.
pub struct ConfigReference {
    pub section: &'static str,
    pub table: fn() -> String,
}

/// Handles `generate-docs` before the binary's own parser sees the arguments; returns `None`
/// for any other command line. It is not a subcommand of the binaries' clap trees because
/// clap's bash completions list even hidden subcommands, and operators should never be
/// offered a packaging tool when they press Tab.
pub fn intercept(bin: impl FnOnce() -> clap::Command, config: ConfigReference) -> Option<ExitCode> {
    use clap::{CommandFactory, FromArgMatches};
    if std::env::args_os().nth(1)? != "generate-docs" {
        return None;
    }
    let cmd = bin();
    // Usage lines take the program's name from `argv[0]`, so errors read `installer …`.
    let matches = Invocation::command()
        .try_get_matches_from(std::env::args_os())
        .unwrap_or_else(|e| e.exit());
    let DocsCommand::GenerateDocs { out, config_doc } = Invocation::from_arg_matches(&matches)
        .unwrap_or_else(|e| e.exit())
        .command;
    let mut written = Vec::new();
    if let Some(out) = out {
        match write_to(cmd, &out) {
            Ok(paths) => written.extend(paths),
            Err(err) => return Some(crate::error::report_failure(&err)),
        }
    }
    if let Some(file) = config_doc {
        match write_config_doc(&file, &config) {
            Ok(()) => written.push(file),
            Err(err) => return Some(crate::error::report_failure(err.as_ref())),
        }
    }
    for path in written {
        println!("{}", path.display());
    }
    Some(ExitCode::Success)
}

/// Rewrites `config`'s section of the Markdown file `path`.
fn write_config_doc(
    path: &Path,
    config: &ConfigReference,
) -> Result<(), Box<dyn std::error::Error>> {
    let doc = fs::read_to_string(path).map_err(|e| FsError::new("cannot read", path, e))?;
    let new = crate::configdoc::replace_section(&doc, config.section, &(config.table)())
        .ok_or_else(|| {
            crate::error::BadInput(format!(
                "`{}` has no `<!-- {} … -->` markers to write the table between",
                path.display(),
                config.section
            ))
        })?;
    atomic::write_file(path, new.as_bytes())?;
    Ok(())
}

/// The manual's name in every page's header.
const MANUAL: &str = "BinaryCrate release pipeline";

/// One generated file, its path relative to the output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// Renders every document for `cmd`, laid out as under `/usr/share`:
/// - `man/man1/<bin>.1` and `man/man1/<bin>-<subcommand>.1` for each visible subcommand;
/// - `completions/bash/<bin>`, `completions/zsh/_<bin>`, `completions/fish/<bin>.fish`.
pub fn render(cmd: clap::Command) -> Vec<DocFile> {
    let name = cmd.get_name().to_owned();
    let mut files = Vec::new();
    // The help subcommand adds nothing a page of its own would say.
    let mut built = cmd.disable_help_subcommand(true);
    built.build();
    man_pages(&built, Path::new("man/man1"), &mut files);

    for (shell, file) in [
        (Shell::Bash, format!("bash/{name}")),
        (Shell::Zsh, format!("zsh/_{name}")),
        (Shell::Fish, format!("fish/{name}.fish")),
    ] {
        let mut bytes = Vec::new();
        clap_complete::generate(shell, &mut built.clone(), &name, &mut bytes);
        files.push(DocFile {
            path: Path::new("completions").join(file),
            bytes,
        });
    }
    files
}

/// One page for `cmd` and, recursively, one for each subcommand `--help` lists.
fn man_pages(cmd: &clap::Command, dir: &Path, out: &mut Vec<DocFile>) {
    let page = clap_mangen::Man::new(cmd.clone()).manual(MANUAL);
    let mut bytes = Vec::new();
    page.render(&mut bytes)
        .expect("rendering into memory cannot fail");
    // Both binaries' `after_help` is their exit-code table, which man(7) files under this title.
    let text = String::from_utf8(bytes).expect("clap_mangen writes UTF-8");
    let bytes = text
        .replace(".SH EXTRA\n", ".SH \"EXIT STATUS\"\n")
        .into_bytes();
    out.push(DocFile {
        path: dir.join(page.get_filename()),
        bytes,
    });
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, dir, out);
    }
}

/// Renders everything for `cmd` and writes it under `out` (created if missing), each file
/// atomically so an interrupted run leaves no torn page. Returns the paths written, in order.
pub fn write_to(cmd: clap::Command, out: &Path) -> Result<Vec<PathBuf>, FsError> {
    let mut written = Vec::new();
    for file in render(cmd) {
        let path = out.join(&file.path);
        let dir = atomic::parent_of(&path);
        fs::create_dir_all(dir).map_err(|e| FsError::new("cannot create directory", dir, e))?;
        atomic::write_file(&path, &file.bytes)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> clap::Command {
        clap::Command::new("tool")
            .version("1.2.3")
            .about("Does tool things")
            .after_help("Exit codes: 0 fine; 2 bad input.")
            .arg(clap::arg!(--config <FILE> "The configuration file").global(true))
            .subcommand(
                clap::Command::new("activate")
                    .about("Make a build live")
                    .arg(clap::arg!(--build <BUILD> "The build to activate")),
            )
            .subcommand(clap::Command::new("secret").hide(true))
    }

    fn find<'a>(files: &'a [DocFile], path: &str) -> &'a str {
        let file = files
            .iter()
            .find(|f| f.path == Path::new(path))
            .unwrap_or_else(|| panic!("no `{path}` among {:?}", paths(files)));
        std::str::from_utf8(&file.bytes).unwrap()
    }

    fn paths(files: &[DocFile]) -> Vec<String> {
        files.iter().map(|f| f.path.display().to_string()).collect()
    }

    #[test]
    fn pages_for_visible_subcommands_and_completions_for_three_shells() {
        let files = render(sample());
        assert_eq!(
            paths(&files),
            [
                "man/man1/tool.1",
                "man/man1/tool-activate.1",
                "completions/bash/tool",
                "completions/zsh/_tool",
                "completions/fish/tool.fish",
            ]
        );
        let top = find(&files, "man/man1/tool.1");
        assert!(top.contains(".TH tool 1"), "{top}");
        assert!(top.contains(MANUAL), "{top}");
        assert!(
            top.contains("Exit codes"),
            "after_help is the page's extra section: {top}"
        );
        assert!(
            !top.contains("secret"),
            "hidden subcommands stay out: {top}"
        );
        let sub = find(&files, "man/man1/tool-activate.1");
        assert!(sub.contains("\\-\\-build"), "{sub}");

        let bash = find(&files, "completions/bash/tool");
        assert!(bash.contains("complete -F _tool"), "{bash}");
        assert!(bash.contains("--build"), "{bash}");
        assert!(find(&files, "completions/zsh/_tool").starts_with("#compdef tool"));
        assert!(find(&files, "completions/fish/tool.fish").contains("complete -c tool"));
    }

    #[test]
    fn write_to_creates_the_tree_and_rewrites_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("docs");
        let written = write_to(sample(), &out).unwrap();
        assert_eq!(written.len(), 5);
        for path in &written {
            assert!(path.starts_with(&out), "{}", path.display());
            assert!(fs::metadata(path).unwrap().len() > 0, "{}", path.display());
        }
        // Running again over an existing tree gives the same bytes and leaves no temporaries.
        let before = fs::read(&written[0]).unwrap();
        write_to(sample(), &out).unwrap();
        assert_eq!(fs::read(&written[0]).unwrap(), before);
        let man_dir: Vec<_> = fs::read_dir(out.join("man/man1")).unwrap().collect();
        assert_eq!(man_dir.len(), 2);
    }

    #[test]
    fn unwritable_output_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"x").unwrap();
        let err = write_to(sample(), &blocker.join("docs")).unwrap_err();
        assert!(err.to_string().contains("cannot create directory"), "{err}");
        assert!(err.path.starts_with(&blocker), "{}", err.path.display());
    }
}

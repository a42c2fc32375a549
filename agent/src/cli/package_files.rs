//! The hidden `__package-files DIR` verb: man pages (`heapwarden(1)` and one
//! `heapwarden-VERB(1)` per verb) and shell completions (bash, zsh, fish), written from
//! the same clap definition the CLI parses, so the Debian package's documentation
//! cannot drift from the flags. `scripts/package-deb` runs it before `cargo deb`.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// Writes `DIR/man/*.1` and `DIR/completions/{heapwarden.bash,_heapwarden,heapwarden.fish}`.
pub fn write(dir: &Path) -> anyhow::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let mut cli = Cli::command();
    cli.build();
    write_man(&cli, &man, "heapwarden")?;
    for verb in cli
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
    {
        let name = format!("heapwarden-{}", verb.get_name());
        let verb = verb.clone().display_name(name.clone());
        write_man(&verb, &man, &name)?;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "heapwarden", &completions)
            .with_context(|| format!("cannot write the {shell} completion"))?;
    }
    Ok(())
}

fn write_man(command: &clap::Command, dir: &Path, name: &str) -> anyhow::Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .title(name.to_uppercase())
        .section("1")
        .source(format!("heapwarden {}", env!("CARGO_PKG_VERSION")))
        .manual("heapwarden manual")
        .render(&mut page)
        .with_context(|| format!("cannot render {name}(1)"))?;
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_verb_has_a_page_and_every_shell_a_completion() {
        let dir = tempfile::tempdir().expect("temp dir");
        super::write(dir.path()).expect("written");
        let man = dir.path().join("man");
        for verb in ["", "-run", "-check-config", "-ps", "-reload", "-diff"] {
            let page = std::fs::read_to_string(man.join(format!("heapwarden{verb}.1")))
                .unwrap_or_else(|e| panic!("heapwarden{verb}.1: {e}"));
            assert!(page.contains(".TH"), "heapwarden{verb}.1 is not a man page");
        }
        let reload = std::fs::read_to_string(man.join("heapwarden-reload.1")).unwrap();
        assert!(reload.contains("exits 1"), "{reload}");
        assert!(!man.join("heapwarden-__convert-profile.1").exists());
        let completions = dir.path().join("completions");
        for file in ["heapwarden.bash", "_heapwarden", "heapwarden.fish"] {
            let text = std::fs::read_to_string(completions.join(file)).expect(file);
            assert!(text.contains("check-config"), "{file} lacks the verbs");
        }
    }
}

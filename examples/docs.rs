//! Writes the man page and the shell completions, generated from the clap definition of the
//! command line, into a folder: `cargo run --example docs -- DIR` (dev/package.sh does).

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/assets".into()),
    );
    std::fs::create_dir_all(&dir)?;
    let cmd = hotdog::cli::Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    std::fs::write(dir.join("hotdog.1"), page)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd.clone(), "hotdog", &dir)?;
        println!("{}", path.display());
    }
    println!("{}", dir.join("hotdog.1").display());
    Ok(())
}

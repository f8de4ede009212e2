//! The README stays true about the command line: every `orgkeeper …` command
//! it shows — in code blocks and in running text — exists, which this test
//! checks by running each one's subcommand path with `--help`.

use std::collections::BTreeSet;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_orgkeeper");

/// The subcommand path of an `orgkeeper …` invocation: the leading words
/// before the first flag, argument placeholder or value.
fn subcommand_path(args: &str) -> Vec<String> {
    args.split_whitespace()
        .take_while(|w| {
            w.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !w.starts_with('-')
        })
        .map(str::to_owned)
        .collect()
}

/// Every `orgkeeper <words>` found in the README, as subcommand paths: in
/// shell code blocks, the lines that run it; elsewhere, code spans.
fn documented_commands(readme: &str) -> BTreeSet<Vec<String>> {
    let mut found = BTreeSet::new();
    let mut fence: Option<&str> = None;
    for line in readme.lines() {
        if let Some(lang) = line.trim_start().strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(lang.trim()),
            };
            continue;
        }
        let shell = matches!(fence, Some("sh" | "bash" | "console"));
        if fence.is_some() && !shell {
            continue; // sample output, SQL
        }
        let mut rest = line;
        while let Some(at) = rest.find("orgkeeper ") {
            let before = &rest[..at];
            rest = &rest[at + "orgkeeper ".len()..];
            let runs_it = if shell {
                before.trim().is_empty()
                    || before.ends_with('/')
                    || before.ends_with("$ ")
                    || before.trim_end().ends_with("&&")
            } else {
                before.ends_with('`')
            };
            if !runs_it {
                continue;
            }
            let path = subcommand_path(rest.split('`').next().unwrap_or(""));
            if !path.is_empty() {
                found.insert(path);
            }
        }
    }
    found
}

#[test]
fn every_command_line_in_the_readme_exists() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let commands = documented_commands(&readme);
    assert!(
        commands.len() >= 15,
        "the README shows the commands: {commands:?}"
    );
    let mut broken = Vec::new();
    for path in &commands {
        // Trailing words may be arguments ("orgkeeper simulate litellm"):
        // the longest prefix that is a command must accept --help.
        let ok = (1..=path.len()).rev().any(|n| {
            let out = Command::new(BIN)
                .args(&path[..n])
                .arg("--help")
                .output()
                .expect("run orgkeeper");
            out.status.success() && n == path.len()
                || out.status.success() && !path[n..].is_empty() && takes_arguments(&out.stdout)
        });
        if !ok {
            broken.push(path.join(" "));
        }
    }
    assert!(
        broken.is_empty(),
        "the README shows commands that do not exist: {broken:?}"
    );
}

/// Whether a `--help` text shows a command that takes positional arguments
/// (so words after it in the README are values, not subcommands).
fn takes_arguments(help: &[u8]) -> bool {
    let help = String::from_utf8_lossy(help);
    help.lines()
        .find(|l| l.starts_with("Usage:"))
        .is_some_and(|usage| usage.contains('<') && !usage.contains("<COMMAND>"))
}

#[test]
fn a_misspelled_command_is_caught() {
    let commands = documented_commands("run `orgkeeper orgs list --as <user>` to see them");
    assert_eq!(
        commands.into_iter().collect::<Vec<_>>(),
        vec![vec!["orgs".to_string(), "list".to_string()]]
    );
    let out = Command::new(BIN)
        .args(["orgs", "list", "--help"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "there is no `orgs` command");
}

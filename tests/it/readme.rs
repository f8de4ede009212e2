//! The README stays true about the command line: every `orgkeeper …` command
//! it shows — in code blocks and in running text — exists and parses (each
//! is run with `--help` appended, placeholders filled in), and every
//! environment variable a command reads is in its Settings table.

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

/// Every `orgkeeper <words>` found in the README, as subcommand paths.
fn documented_commands(readme: &str) -> BTreeSet<Vec<String>> {
    documented_command_lines(readme)
        .iter()
        .map(|line| subcommand_path(line))
        .filter(|path| !path.is_empty())
        .collect()
}

/// Every `orgkeeper …` command line found in the README, without the
/// leading `orgkeeper`: in shell code blocks, the lines that run it (up to a
/// `#` comment); elsewhere, code spans.
fn documented_command_lines(readme: &str) -> BTreeSet<String> {
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
            let end = if shell { " #" } else { "`" };
            let line = rest.split(end).next().unwrap_or("").trim();
            if !line.is_empty() {
                found.insert(line.to_string());
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

/// The arguments of a documented command line, ready to run, split as a
/// shell would (double quotes group words): `[optional]` brackets dropped
/// (their contents kept), only the first of `a | b` alternatives, each
/// `<placeholder>` (which may hold spaces) replaced by `fill`, and a lone `…`
/// (an elided value) replaced by `x`.
fn runnable_args(line: &str, fill: &str) -> Vec<String> {
    let first = line.split(" | ").next().unwrap_or(line);
    let mut args = Vec::new();
    let mut word = String::new();
    let mut closing: Option<char> = None;
    for c in first.chars().chain([' ']) {
        match (closing, c) {
            (Some('>'), '>') => {
                word.push_str(fill);
                closing = None;
            }
            (Some('"'), '"') => closing = None,
            (Some(_), c) if closing == Some('"') => word.push(c),
            (Some(_), _) => {} // inside a placeholder
            (None, '<') => closing = Some('>'),
            (None, '"') => closing = Some('"'),
            (None, '[' | ']') => {}
            (None, ' ') => match std::mem::take(&mut word) {
                w if w.is_empty() => {}
                w if w == "…" => args.push("x".to_string()),
                w => args.push(w),
            },
            (None, c) => word.push(c),
        }
    }
    args
}

/// Whether `orgkeeper <line> --help` parses, with each placeholder filled
/// with an id: a UUID for users and organizations, or a number for outbox
/// actions.
fn parses(line: &str) -> bool {
    ["00000000-0000-0000-0000-000000000001", "42"]
        .iter()
        .any(|fill| {
            Command::new(BIN)
                .args(runnable_args(line, fill))
                .arg("--help")
                .env_clear()
                .output()
                .expect("run orgkeeper")
                .status
                .success()
        })
}

#[test]
fn every_command_line_in_the_readme_parses() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let broken: Vec<String> = documented_command_lines(&readme)
        .into_iter()
        .filter(|line| !parses(line))
        .collect();
    assert!(
        broken.is_empty(),
        "the README shows command lines that do not parse: {broken:?}"
    );
}

#[test]
fn a_flag_that_does_not_exist_is_caught() {
    for line in [
        "users migrate --all --database-url postgres://x",
        "actions show <id>",
        "org revoke --as <user> --id 7",
        "org rename --as <user> <org> \"Acme Labs\"",
    ] {
        assert!(parses(line), "{line} parses");
    }
    assert!(
        !parses("users migrate --everyone"),
        "there is no --everyone flag"
    );
    assert!(
        !parses("org revoke --as <user> --id <org>"),
        "an id is not a UUID"
    );
}

/// Every environment variable any `orgkeeper` command reads, with the flag
/// that reads it, from clap's own command tree.
fn environment_variables() -> BTreeSet<(String, String)> {
    use clap::CommandFactory;
    let mut found = BTreeSet::new();
    let mut stack = vec![orgkeeper::cli::Cli::command()];
    while let Some(cmd) = stack.pop() {
        for arg in cmd.get_arguments() {
            if let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) {
                found.insert((env.to_string_lossy().into_owned(), format!("--{long}")));
            }
        }
        stack.extend(cmd.get_subcommands().cloned());
    }
    found
}

#[test]
fn every_environment_variable_is_in_the_settings_table() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let table: Vec<&str> = readme
        .split("\n## Settings\n")
        .nth(1)
        .expect("a Settings section")
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with("| `"))
        .collect();
    let variables = environment_variables();
    assert!(variables.len() >= 30, "{variables:?}");
    let missing: Vec<String> = variables
        .iter()
        .filter(|(env, flag)| {
            !table
                .iter()
                .any(|row| row.contains(&format!("`{env}`")) && row.contains(&format!("`{flag}`")))
        })
        .map(|(env, flag)| format!("{env} ({flag})"))
        .collect();
    assert!(
        missing.is_empty(),
        "the README's Settings table lacks: {missing:?}"
    );
}

//! `eventgate validate` and `eventgate lint`: the validation engine without a gateway.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::specs::{Source, prepare};
use crate::validate::{Outcome, check_sample};

/// Options of `eventgate validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The AsyncAPI document to validate against.
    #[arg(long)]
    pub spec: PathBuf,
    /// Topic the message would be produced to (needed when the document describes several).
    #[arg(long)]
    pub topic: Option<String>,
    /// Record key.
    #[arg(long)]
    pub key: Option<String>,
    /// Record header, NAME=VALUE (repeatable).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// Treat each non-empty line of the input as one message.
    #[arg(long)]
    pub lines: bool,
    /// The message: a file, or `-` for standard input.
    pub input: String,
}

/// Options of `eventgate lint`.
#[derive(Debug, Args)]
pub struct LintArgs {
    /// AsyncAPI documents to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

fn id_of(path: &Path) -> String {
    path.file_stem().and_then(|s| s.to_str()).unwrap_or("document").to_owned()
}

/// Exit codes: 0 every message valid, 1 some invalid (or unchecked), 2 unusable input.
pub fn validate(args: ValidateArgs) -> ExitCode {
    let text = match std::fs::read_to_string(&args.spec) {
        Ok(t) => t,
        Err(e) => return usage(&format!("{}: {e}", args.spec.display())),
    };
    let (doc, _) = match prepare(&id_of(&args.spec), &text, Source::File, String::new()) {
        Ok(d) => d,
        Err(e) => return usage(&format!("{}: {e}", args.spec.display())),
    };
    let route = match &args.topic {
        Some(t) => doc.route_for(t),
        None => doc.single_route(),
    };
    let Some(route) = route else {
        return usage(&match &args.topic {
            Some(t) => format!("{} describes no topic matching `{t}`", args.spec.display()),
            None => format!("{} describes several topics: pick one with --topic", args.spec.display()),
        });
    };
    let mut headers = BTreeMap::new();
    for h in &args.headers {
        let Some((k, v)) = h.split_once('=') else {
            return usage(&format!("--header {h}: expected NAME=VALUE"));
        };
        headers.insert(k.to_owned(), v.to_owned());
    }
    let mut input = Vec::new();
    let read = if args.input == "-" {
        std::io::stdin().read_to_end(&mut input)
    } else {
        std::fs::File::open(&args.input).and_then(|mut f| f.read_to_end(&mut input))
    };
    if let Err(e) = read {
        return usage(&format!("{}: {e}", args.input));
    }
    let messages: Vec<&[u8]> = if args.lines {
        input.split(|b| *b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)).collect()
    } else {
        vec![input.as_slice()]
    };
    let mut failed = false;
    for (i, m) in messages.iter().enumerate() {
        let label = if args.lines { format!("line {}: ", i + 1) } else { String::new() };
        match check_sample(route, args.key.as_deref(), Some(m), &headers) {
            Outcome::Valid(n) => println!("{label}valid ({})", route.messages[n].name),
            Outcome::Invalid(errors) => {
                failed = true;
                println!("{label}invalid");
                for e in errors.iter() {
                    println!("  {e}");
                }
            }
            Outcome::Unchecked(why) => {
                failed = true;
                println!("{label}not validated: {why}");
            }
        }
    }
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

/// Exit codes: 0 every document usable, 1 some refused.
pub fn lint(args: LintArgs) -> ExitCode {
    let mut failed = false;
    for path in &args.files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                failed = true;
                eprintln!("{}: {e}", path.display());
                continue;
            }
        };
        match prepare(&id_of(path), &text, Source::File, String::new()) {
            Ok((doc, summary)) => {
                println!(
                    "{}: ok: {} {} (AsyncAPI {})",
                    path.display(),
                    summary.title,
                    summary.version,
                    summary.asyncapi
                );
                for ch in &doc.doc.channels {
                    let names: Vec<&str> = ch.messages.iter().map(|m| m.name.as_str()).collect();
                    let policy = ch.policy.map(|p| format!(" [{p}]")).unwrap_or_default();
                    println!("  topic {}{policy}: {}", ch.topic.address(), names.join(", "));
                }
                for w in &summary.warnings {
                    println!("  warning: {w}");
                }
            }
            Err(e) => {
                failed = true;
                println!("{}: error: {e}", path.display());
            }
        }
    }
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("eventgate: {msg}");
    ExitCode::from(2)
}

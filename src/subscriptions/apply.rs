//! `eventgate apply`: sends resource files to a running eventgate, like `kubectl apply`.
//!
//! The files are read and checked here first (a broken file is reported before anything is sent),
//! then posted to `POST /apply` as one JSON array; eventgate checks the whole resulting set and
//! answers what it did to each resource. With `--prune`, resources the files no longer declare
//! are deleted; with `--dry-run`, nothing changes and the answer says what would.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

/// `eventgate apply` arguments.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Resource files (YAML, several documents each, or JSON) or directories of them.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// The admin address of a running eventgate.
    #[arg(long, env = "EVENTGATE_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The admin token.
    #[arg(long, env = "EVENTGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Delete every resource the files do not declare (with `--selector`, only those whose labels
    /// match).
    #[arg(long)]
    pub prune: bool,
    /// With `--prune`: `key=value[,key=value]`; only resources with these labels may be deleted.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Show what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs `eventgate apply`; prints one line per resource and a summary.
pub async fn run(args: ApplyArgs) -> ExitCode {
    let docs = match read(&args.files) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("eventgate apply: {e}");
            return ExitCode::from(2);
        }
    };
    let body = Value::Array(docs.iter().map(|r| r.to_value(true)).collect()).to_string();
    let mut url = format!("{}/apply?prune={}&dry_run={}", args.server.trim_end_matches('/'), args.prune, args.dry_run);
    if let Some(sel) = &args.selector {
        url.push_str("&selector=");
        url.extend(percent_encoding::utf8_percent_encode(sel, percent_encoding::NON_ALPHANUMERIC));
    }
    // reqwest is built without a default TLS provider: eventgate's (ring) is the process's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder().build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("eventgate apply: cannot build an HTTP client: {e}");
            return ExitCode::from(2);
        }
    };
    let mut req = client.post(&url).header("content-type", "application/json").body(body);
    if let Some(t) = &args.token {
        req = req.bearer_auth(t);
    }
    let answer = match req.send().await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("eventgate apply: cannot reach {}: {}", args.server, e.without_url());
            return ExitCode::from(1);
        }
    };
    let status = answer.status();
    let text = answer.text().await.unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        let why = v.get("error").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| v.to_string());
        eprintln!("eventgate apply: {status}: {why}");
        return ExitCode::from(1);
    }
    let suffix = if args.dry_run { " (dry run)" } else { "" };
    for r in v["results"].as_array().into_iter().flatten() {
        let kind = r["kind"].as_str().unwrap_or_default().to_lowercase();
        println!(
            "{kind}/{} {}{suffix}",
            r["name"].as_str().unwrap_or_default(),
            r["action"].as_str().unwrap_or_default()
        );
    }
    let s = &v["summary"];
    println!(
        "{} created, {} updated, {} unchanged, {} deleted{suffix}",
        s["created"], s["updated"], s["unchanged"], s["deleted"]
    );
    ExitCode::SUCCESS
}

/// Reads resource files and directories (`*.yaml`, `*.yml`, `*.json`, in name order).
pub fn read(paths: &[PathBuf]) -> Result<Vec<super::resource::Resource>, String> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
                .collect();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(p.clone());
        }
    }
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        out.extend(super::resource::parse_documents(&text).map_err(|e| format!("{}: {e}", f.display()))?);
    }
    Ok(out)
}

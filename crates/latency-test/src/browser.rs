//! Headless Chromium through the project's playwright-core driver (`tests/browser/viewer.mjs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Where the driver script is: `HYBRIDLIVE_BROWSER_DRIVER`, else `tests/browser/viewer.mjs`
/// under the current folder, else in the source tree this binary was built from.
pub fn driver() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("HYBRIDLIVE_BROWSER_DRIVER") {
        return Ok(PathBuf::from(path));
    }
    let candidates = [
        PathBuf::from("tests/browser/viewer.mjs"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser/viewer.mjs"),
    ];
    for candidate in &candidates {
        let modules = candidate
            .with_file_name("node_modules")
            .join("playwright-core");
        if candidate.is_file() && modules.is_dir() {
            return Ok(candidate.clone());
        }
    }
    bail!(
        "no browser driver: expected tests/browser/viewer.mjs with its node_modules (run \
         scripts/setup from the hybridlive source tree), or set HYBRIDLIVE_BROWSER_DRIVER"
    )
}

/// Opens every URL in its own tab of one headless Chromium and returns what each page
/// published as `window.result`, in URL order.
pub fn open_pages(urls: &[String], timeout_s: f64) -> anyhow::Result<Vec<serde_json::Value>> {
    run_driver(urls, timeout_s, Command::new("node"))
}

/// Opens `url`, waits for the JS expression `wait`, returns the value of `result`.
pub fn open_page_with(
    url: &str,
    timeout_s: f64,
    wait: &str,
    result: &str,
) -> anyhow::Result<serde_json::Value> {
    let mut node = Command::new("node");
    node.env("WAIT", wait).env("RESULT", result);
    let mut pages = run_driver(&[url.to_string()], timeout_s, node)?;
    pages.pop().context("the browser driver returned nothing")
}

fn run_driver(
    urls: &[String],
    timeout_s: f64,
    mut node: Command,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let driver = driver()?;
    let out = node
        .arg(&driver)
        .args(urls)
        .arg(format!("{}", timeout_s.ceil() as u64))
        .output()
        .context("cannot run node (scripts/setup installs it with the browser driver)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("the browser run failed:\n{}", tail.join("\n"));
    }
    let value: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("the browser driver printed no JSON:\n{stderr}"))?;
    Ok(match value {
        serde_json::Value::Array(pages) if urls.len() > 1 => pages,
        page => vec![page],
    })
}

//! The local Hub stand-in (`scripts/hub_standin.py`) for native tests: started on a free port,
//! serving the tiny fixture model as `imvar-tests/tiny` (and any other folder asked for),
//! stopped when dropped.
#![allow(dead_code)]

pub mod memory_store;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const REPO: &str = "imvar-tests/tiny";

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub struct StandIn {
    child: Child,
    pub url: String,
}

impl StandIn {
    /// Serves the fixture model as `REPO`, plus `extra` (repo, folder) pairs.
    pub fn start(extra: &[(&str, &Path)]) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/hub_standin.py");
        let mut command = Command::new("python3");
        command.arg(script).args(["--port", "0", "--repo"]);
        command.arg(format!("{REPO}={}", fixtures().join("tiny-sd-image-variations").display()));
        for (repo, folder) in extra {
            command.arg("--repo").arg(format!("{repo}={}", folder.display()));
        }
        let mut child = command.stdout(Stdio::piped()).spawn().expect("python3 runs the stand-in");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("hub-standin ").expect("the stand-in announces its URL").to_string();
        Self { child, url }
    }

    /// Requests served so far for `revision` (each test uses its own revision).
    pub fn log(&self, revision: &str) -> Vec<serde_json::Value> {
        let body = ureq::get(format!("{}/_log", self.url)).call().unwrap().body_mut().read_to_string().unwrap();
        let all: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        all.into_iter().filter(|e| e["revision"] == revision).collect()
    }

    /// Adds a fault (see the stand-in's documentation).
    pub fn fault(&self, fault: serde_json::Value) {
        ureq::post(format!("{}/_faults", self.url)).send(fault.to_string()).unwrap();
    }

    pub fn reset(&self) {
        ureq::post(format!("{}/_reset", self.url)).send("").unwrap();
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Weight bytes served from the CDN in `log` (what a test counts as weight traffic).
pub fn weight_requests(log: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    log.iter().filter(|e| e["path"].as_str().unwrap().ends_with(".safetensors")).collect()
}

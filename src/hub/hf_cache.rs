//! Natively, a Hub model is downloaded into the standard Hugging Face cache (`$HF_HOME/hub`,
//! default `~/.cache/huggingface/hub`): `models--{owner}--{name}/blobs/{etag}`, snapshot links
//! `snapshots/{commit}/{path}` and `refs/{revision}`, so diffusers and imvar share downloads.
//! Whole files (the CLI can afford the VAE encoder), in resumable ranges of at most 64 MiB.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::cache::weights_file_of;
use super::{Fetch, HubError, HubModel, Retry};
use crate::weights::COMPONENTS;
use crate::weights::source::{local_weights_file, text_paths};

/// Bytes per Range request.
const PIECE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HfCacheError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("offline, and {0} is not in the Hugging Face cache")]
    Offline(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HfCacheError + '_ {
    move |error| HfCacheError::Io { path: path.into(), error }
}

/// `$HF_HOME/hub`, `~/.cache/huggingface/hub` by default.
pub fn hub_dir() -> PathBuf {
    let home = std::env::var_os("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
        let user = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        user.join(".cache/huggingface")
    });
    home.join("hub")
}

/// The endpoint from `HF_ENDPOINT`, else the Hub's.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| super::DEFAULT_ENDPOINT.into())
}

/// `models--{owner}--{name}` (`HubModel::parse` allows no path in either part).
fn repo_dir(hub: &Path, model: &HubModel) -> PathBuf {
    hub.join(format!("models--{}", model.repo.replace('/', "--")))
}

/// A name the server chose that becomes a file or folder name in the cache (a blob's ETag, a
/// snapshot's commit): only a hex digest — a git id (40 characters) or a sha256 (64) — so that
/// no answer can name a path.
fn digest<'a>(value: &'a str, what: &str, url: &str) -> Result<&'a str, HubError> {
    if matches!(value.len(), 40 | 64) && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(value);
    }
    let shown: String = value.chars().take(80).collect();
    Err(HubError::Invalid(format!("{url}: the server's {what} {shown:?} is not a hex digest")))
}

/// Progress: file path, bytes done, file size.
pub type OnFile<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// Downloads what the pipeline needs of `model` into the cache folder `hub` (`hub_dir()`):
/// configs and each component's weight file, `variant`'s where the repo has one. Returns the
/// snapshot folder. Offline, a snapshot made before is used.
pub async fn snapshot(fetch: &dyn Fetch, hub: &Path, model: &HubModel, variant: Option<&str>, on_file: OnFile<'_>) -> Result<PathBuf, HfCacheError> {
    let repo = repo_dir(hub, model);
    let retry = Retry::default();
    // Few retries for the first request: when it fails the network is down, and a snapshot will do.
    let probe = Retry { attempts: 3, ..retry };
    let index = match super::download(fetch, &model.url("model_index.json"), None, probe).await {
        Ok(index) => index,
        Err(e) if e.is_offline() => return offline(&repo, model),
        Err(e) => return Err(e.into()),
    };
    let commit = match &index.commit {
        Some(commit) => digest(commit, "commit (X-Repo-Commit)", &model.url("model_index.json"))?.to_string(),
        // No commit named: the folder is named after the revision (`HubModel::parse` checked it).
        None => model.revision.replace('/', "--"),
    };
    let snapshot = repo.join("snapshots").join(&commit);
    let mut paths = text_paths();
    for (component, _) in COMPONENTS {
        // A commit's snapshot already holds the file picked for it; only a new one asks the Hub.
        let path = match local_weights_file(&snapshot, component, variant) {
            Some(path) => path,
            None => weights_file_of(fetch, model, component, variant, retry).await?.0,
        };
        paths.push(path);
    }
    for path in &paths {
        if !snapshot.join(path).exists() {
            fetch_file(fetch, model, &repo, &snapshot, path, on_file).await?;
        }
    }
    let refs = repo.join("refs").join(&model.revision);
    std::fs::create_dir_all(refs.parent().unwrap()).map_err(io(&refs))?;
    std::fs::write(&refs, &commit).map_err(io(&refs))?;
    Ok(snapshot)
}

fn offline(repo: &Path, model: &HubModel) -> Result<PathBuf, HfCacheError> {
    let commit = std::fs::read_to_string(repo.join("refs").join(&model.revision)).ok();
    // Written by `snapshot` from a checked name; read back with the same check.
    let commit = commit.filter(|c| digest(c.trim(), "commit", "refs").is_ok() || *c == model.revision.replace('/', "--"));
    let snapshot = commit.map(|c| repo.join("snapshots").join(c.trim()));
    snapshot.filter(|s| s.join("model_index.json").exists()).ok_or_else(|| HfCacheError::Offline(model.key()))
}

/// Downloads one file into `blobs/{etag}` (resuming a `.incomplete` one) and links it from the
/// snapshot.
async fn fetch_file(fetch: &dyn Fetch, model: &HubModel, repo: &Path, snapshot: &Path, path: &str, on_file: OnFile<'_>) -> Result<(), HfCacheError> {
    let url = model.url(path);
    let first = super::download(fetch, &url, Some(0..1), Retry::default()).await?;
    let size = first.file_size.unwrap_or(0);
    let etag = first.etag.clone().ok_or_else(|| HubError::Invalid(format!("{url}: no ETag")))?;
    let etag = digest(&etag, "ETag", &url)?.to_string();
    let blobs = repo.join("blobs");
    std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    let blob = blobs.join(&etag);
    if !blob.exists() {
        let partial = blobs.join(format!("{etag}.incomplete"));
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&partial).map_err(io(&partial))?;
        let mut done = file.metadata().map_err(io(&partial))?.len();
        while done < size {
            let end = (done + PIECE).min(size);
            let piece = super::download(fetch, &url, Some(done..end), Retry::default()).await?;
            if piece.etag.as_deref().is_some_and(|e| e != etag) {
                // The file changed under us: start over.
                drop(file);
                std::fs::remove_file(&partial).map_err(io(&partial))?;
                return Box::pin(fetch_file(fetch, model, repo, snapshot, path, on_file)).await;
            }
            file.write_all(&piece.bytes).map_err(io(&partial))?;
            done = end;
            on_file(path, done, size);
        }
        file.sync_all().map_err(io(&partial))?;
        std::fs::rename(&partial, &blob).map_err(io(&blob))?;
    }
    let link = snapshot.join(path);
    std::fs::create_dir_all(link.parent().unwrap()).map_err(io(&link))?;
    let depth = path.matches('/').count() + 2;
    let target = Path::new(&"../".repeat(depth)).join("blobs").join(&etag);
    link_or_copy(&target, &blob, &link)
}

#[cfg(unix)]
fn link_or_copy(target: &Path, _blob: &Path, link: &Path) -> Result<(), HfCacheError> {
    std::os::unix::fs::symlink(target, link).map_err(io(link))
}

#[cfg(not(unix))]
fn link_or_copy(_target: &Path, blob: &Path, link: &Path) -> Result<(), HfCacheError> {
    std::fs::copy(blob, link).map(|_| ()).map_err(io(link))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryHub;

    /// The tiny model from a Hub whose answers carry `etag` and `commit`.
    fn hub(etag: &str, commit: Option<&str>) -> MemoryHub {
        MemoryHub { etag: etag.into(), commit: commit.map(String::from), ..MemoryHub::tiny_model() }
    }

    /// Every file and folder below `root`.
    fn tree(root: &Path) -> Vec<PathBuf> {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(root).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                all.extend(tree(&path));
            }
            all.push(path);
        }
        all
    }

    /// Runs a snapshot against `hub` in a fresh folder; returns the result and everything
    /// written beside the cache folder (which must be nothing).
    fn snapshot_into_fresh_cache(hub: &MemoryHub, name: &str) -> (Result<PathBuf, HfCacheError>, Vec<PathBuf>) {
        let root = std::env::temp_dir().join(format!("imvar-hf-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let cache = root.join("home/hub");
        std::fs::create_dir_all(&cache).unwrap();
        let model = HubModel::parse("owner/model@main", "http://127.0.0.1:9").unwrap();
        let result = pollster::block_on(snapshot(hub, &cache, &model, None, &mut |_, _, _| {}));
        let outside = tree(&root).into_iter().filter(|p| !p.starts_with(&cache) && *p != root.join("home")).collect();
        std::fs::remove_dir_all(&root).unwrap();
        (result, outside)
    }

    const SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn a_sound_answer_is_cached_under_its_digests() {
        let (result, outside) = snapshot_into_fresh_cache(&hub(SHA256, Some(COMMIT)), "sound");
        assert!(result.unwrap().ends_with(format!("snapshots/{COMMIT}")));
        assert!(outside.is_empty(), "{outside:?}");
    }

    #[test]
    fn path_like_etags_and_commits_write_nothing_outside_the_cache() {
        for (etag, commit) in [
            ("../../../escape", Some(COMMIT)),
            ("/tmp/absolute", Some(COMMIT)),
            (SHA256, Some("../../../escape")),
            (SHA256, Some("/tmp/absolute")),
            (&"a".repeat(63), Some(COMMIT)),
        ] {
            let (result, outside) = snapshot_into_fresh_cache(&hub(etag, commit), "hostile");
            let err = result.expect_err(etag).to_string();
            assert!(err.contains("is not a hex digest"), "{err}");
            assert!(outside.is_empty(), "{etag} {commit:?} wrote {outside:?}");
        }
    }
}

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

fn repo_dir(model: &HubModel) -> PathBuf {
    hub_dir().join(format!("models--{}", model.repo.replace('/', "--")))
}

/// Progress: file path, bytes done, file size.
pub type OnFile<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// Downloads what the pipeline needs of `model` (configs and each component's weight file,
/// `variant`'s where the repo has one) and returns the snapshot folder. Offline, a snapshot
/// made before is used.
pub async fn snapshot(fetch: &dyn Fetch, model: &HubModel, variant: Option<&str>, on_file: OnFile<'_>) -> Result<PathBuf, HfCacheError> {
    let repo = repo_dir(model);
    let retry = Retry::default();
    // Few retries for the first request: when it fails the network is down, and a snapshot will do.
    let probe = Retry { attempts: 3, ..retry };
    let index = match super::download(fetch, &model.url("model_index.json"), None, probe).await {
        Ok(index) => index,
        Err(e) if e.is_offline() => return offline(&repo, model),
        Err(e) => return Err(e.into()),
    };
    let commit = index.commit.clone().unwrap_or_else(|| model.revision.replace('/', "--"));
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

//! Natively, a Hub model is downloaded into the standard Hugging Face cache (`$HF_HOME/hub`,
//! default `~/.cache/huggingface/hub`): `models--{owner}--{name}/blobs/{etag}`, snapshot links
//! `snapshots/{commit}/{path}` and `refs/{revision}`, so diffusers and imvar share downloads.
//! Whole files (the CLI can afford the VAE encoder), in resumable ranges of at most 64 MiB, all
//! from the commit the model index came from; a blob is written by one process at a time (the
//! lock file huggingface_hub uses) and, where its name is a sha256, checked against it.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::cache::weights_file_of;
use super::client::digest;
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
    #[error("{url}: the downloaded file's sha256 is {got}, not the {expected} the Hub named; nothing was kept")]
    Digest { url: String, expected: String, got: String },
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
    // The answer's commit is a hex digest (`download` checks it). Without one, the folder is
    // named after the revision (`HubModel::parse` checked it).
    let commit = index.commit.clone().unwrap_or_else(|| model.revision.replace('/', "--"));
    // Every file from that commit: a push during the download cannot mix two versions.
    let pinned = HubModel { revision: index.commit.clone().unwrap_or_else(|| model.revision.clone()), ..model.clone() };
    let snapshot = repo.join("snapshots").join(&commit);
    let mut paths = text_paths();
    for (component, _) in COMPONENTS {
        // A commit's snapshot already holds the file picked for it; only a new one asks the Hub.
        let path = match local_weights_file(&snapshot, component, variant) {
            Some(path) => path,
            None => weights_file_of(fetch, &pinned, component, variant, retry).await?.0,
        };
        paths.push(path);
    }
    for path in &paths {
        if !snapshot.join(path).exists() {
            fetch_file(fetch, &pinned, hub, &repo, &snapshot, path, on_file).await?;
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

/// Downloads one file into `blobs/{etag}` (resuming a `.incomplete` one, under the blob's lock)
/// and links it from the snapshot.
async fn fetch_file(fetch: &dyn Fetch, model: &HubModel, hub: &Path, repo: &Path, snapshot: &Path, path: &str, on_file: OnFile<'_>) -> Result<(), HfCacheError> {
    let url = model.url(path);
    let first = super::download(fetch, &url, Some(0..1), Retry::default()).await?;
    let size = first.stated_size(&url)?;
    let etag = first.etag.clone().ok_or_else(|| HubError::Invalid(format!("{url}: no ETag")))?;
    let etag = digest(&etag, "ETag", &url)?.to_string();
    let blobs = repo.join("blobs");
    std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    let blob = blobs.join(&etag);
    if !blob.exists() {
        let _lock = lock_blob(hub, repo, &etag)?;
        // Another process may have finished it while this one waited for the lock.
        if !blob.exists() {
            download_blob(fetch, &url, &blobs, &etag, size, path, on_file).await?;
        }
    }
    let link = snapshot.join(path);
    std::fs::create_dir_all(link.parent().unwrap()).map_err(io(&link))?;
    let depth = path.matches('/').count() + 2;
    let target = Path::new(&"../".repeat(depth)).join("blobs").join(&etag);
    link_or_copy(&target, &blob, &link)
}

/// Holds `.locks/models--{owner}--{name}/{etag}.lock` (huggingface_hub's lock for the same blob,
/// so imvar and diffusers never append to one `.incomplete` file at once) until dropped.
fn lock_blob(hub: &Path, repo: &Path, etag: &str) -> Result<std::fs::File, HfCacheError> {
    let locks = hub.join(".locks").join(repo.file_name().unwrap());
    std::fs::create_dir_all(&locks).map_err(io(&locks))?;
    let path = locks.join(format!("{etag}.lock"));
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
    file.lock().map_err(io(&path))?;
    Ok(file)
}

/// Appends the rest of `url` to `blobs/{etag}.incomplete`, checks it (every piece from the same
/// file; its sha256 where the ETag is one) and renames it to the blob. A piece of another file
/// or a wrong digest removes the partial file: its bytes cannot be trusted.
async fn download_blob(fetch: &dyn Fetch, url: &str, blobs: &Path, etag: &str, size: u64, path: &str, on_file: OnFile<'_>) -> Result<(), HfCacheError> {
    use sha2::Digest;
    let partial = blobs.join(format!("{etag}.incomplete"));
    let mut file = std::fs::OpenOptions::new().create(true).append(true).read(true).open(&partial).map_err(io(&partial))?;
    let mut hasher = sha2::Sha256::new();
    let mut done = std::io::copy(&mut file, &mut hasher).map_err(io(&partial))?;
    if done > size {
        // Longer than the file: not a partial copy of it.
        file.set_len(0).map_err(io(&partial))?;
        (hasher, done) = (sha2::Sha256::new(), 0);
    }
    let discard = |error: HfCacheError| {
        let _ = std::fs::remove_file(&partial);
        Err(error)
    };
    while done < size {
        let piece = super::download(fetch, url, Some(done..(done + PIECE).min(size)), Retry::default()).await?;
        if piece.etag.as_deref() != Some(etag) {
            return discard(HubError::Changed { url: url.into() }.into());
        }
        file.write_all(&piece.bytes).map_err(io(&partial))?;
        hasher.update(&piece.bytes);
        done += piece.bytes.len() as u64;
        on_file(path, done, size);
    }
    let got: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if etag.len() == 64 && !got.eq_ignore_ascii_case(etag) {
        return discard(HfCacheError::Digest { url: url.into(), expected: etag.into(), got });
    }
    file.sync_all().map_err(io(&partial))?;
    let blob = blobs.join(etag);
    std::fs::rename(&partial, &blob).map_err(io(&blob))
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
    use std::ops::Range;

    use super::*;
    use crate::LocalFuture;
    use crate::hub::Response;
    use crate::testing::{MemoryHub, sha256_hex};

    /// The tiny model from a Hub whose answers carry `etag` (each file's sha256 where `None`)
    /// and `commit`.
    fn hub(etag: Option<&str>, commit: Option<&str>) -> MemoryHub {
        MemoryHub { etag: etag.map(String::from), commit: commit.map(String::from), ..MemoryHub::tiny_model() }
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

    /// A fresh folder holding `home/hub`, the cache folder.
    fn fresh_root(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("imvar-hf-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("home/hub")).unwrap();
        root
    }

    fn model() -> HubModel {
        HubModel::parse("owner/model@main", "http://127.0.0.1:9").unwrap()
    }

    /// Runs a snapshot against `hub` in a fresh folder; returns the result, everything written
    /// beside the cache folder (which must be nothing) and the blobs folder's file names.
    fn snapshot_into_fresh_cache(hub: &dyn Fetch, name: &str) -> (Result<PathBuf, HfCacheError>, Vec<PathBuf>, Vec<String>) {
        let root = fresh_root(name);
        let cache = root.join("home/hub");
        let result = pollster::block_on(snapshot(hub, &cache, &model(), None, &mut |_, _, _| {}));
        let outside = tree(&root).into_iter().filter(|p| !p.starts_with(&cache) && *p != root.join("home")).collect();
        let blobs = std::fs::read_dir(cache.join("models--owner--model/blobs")).map_or(Vec::new(), |dir| {
            dir.map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
        });
        std::fs::remove_dir_all(&root).unwrap();
        (result, outside, blobs)
    }

    const SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn a_sound_answer_is_cached_under_its_digests_all_from_one_commit() {
        let hub = hub(None, Some(COMMIT));
        let (result, outside, mut blobs) = snapshot_into_fresh_cache(&hub, "sound");
        assert!(result.unwrap().ends_with(format!("snapshots/{COMMIT}")));
        assert!(outside.is_empty(), "{outside:?}");
        let mut expected: Vec<String> = hub.files.values().map(|body| sha256_hex(body)).collect();
        blobs.sort();
        expected.sort();
        assert_eq!(blobs, expected);
        // The model index at the asked revision; everything after it at the commit it named.
        let revisions = hub.revisions();
        assert_eq!(revisions[0], "main");
        assert!(revisions.len() > 1 && revisions[1..].iter().all(|r| r == COMMIT), "{revisions:?}");
    }

    #[test]
    fn path_like_etags_and_commits_write_nothing_outside_the_cache() {
        for (etag, commit) in [
            (Some("../../../escape"), Some(COMMIT)),
            (Some("/tmp/absolute"), Some(COMMIT)),
            (None, Some("../../../escape")),
            (None, Some("/tmp/absolute")),
            (Some(&"a".repeat(63)[..]), Some(COMMIT)),
        ] {
            let (result, outside, _) = snapshot_into_fresh_cache(&hub(etag, commit), "hostile");
            let err = result.expect_err(&format!("{etag:?} {commit:?}")).to_string();
            assert!(err.contains("is not a hex digest"), "{err}");
            assert!(outside.is_empty(), "{etag:?} {commit:?} wrote {outside:?}");
        }
    }

    #[test]
    fn bytes_that_are_not_the_named_sha256_are_not_kept() {
        let (result, _, blobs) = snapshot_into_fresh_cache(&hub(Some(SHA256), Some(COMMIT)), "digest");
        let err = result.unwrap_err();
        assert!(matches!(err, HfCacheError::Digest { .. }), "{err}");
        assert!(blobs.is_empty(), "kept {blobs:?}");
    }

    /// The tiny model's Hub, where a file's ETag changes once its first bytes were answered.
    struct Pushed(MemoryHub);

    impl Fetch for Pushed {
        fn get<'a>(&'a self, url: &'a str, range: Option<Range<u64>>) -> LocalFuture<'a, Result<Response, String>> {
            let pushed = range.as_ref().is_some_and(|r| r.end > 8);
            Box::pin(async move {
                let mut answer = self.0.get(url, range).await?;
                if pushed {
                    answer.headers.etag = Some(format!("\"{}\"", "b".repeat(64)));
                }
                Ok(answer)
            })
        }

        fn sleep(&self, duration: web_time::Duration) -> LocalFuture<'static, ()> {
            self.0.sleep(duration)
        }
    }

    #[test]
    fn a_file_that_changes_during_its_download_is_refused_and_not_kept() {
        let pushed = Pushed(hub(None, Some(COMMIT)));
        let (result, _, blobs) = snapshot_into_fresh_cache(&pushed, "pushed");
        let err = result.unwrap_err();
        assert!(matches!(err, HfCacheError::Hub(HubError::Changed { .. })), "{err}");
        assert!(blobs.is_empty(), "kept {blobs:?}");
        assert!(pushed.0.asked.borrow().len() < 16, "asked {} times", pushed.0.asked.borrow().len());
    }

    #[test]
    fn a_blob_another_process_is_writing_is_waited_for() {
        let root = fresh_root("locked");
        let cache = root.join("home/hub");
        let unet = MemoryHub::tiny_model().files["unet/diffusion_pytorch_model.safetensors"].clone();
        let held = lock_blob(&cache, &cache.join("models--owner--model"), &sha256_hex(&unet)).unwrap();
        let run = {
            let cache = cache.clone();
            std::thread::spawn(move || pollster::block_on(snapshot(&hub(None, Some(COMMIT)), &cache, &model(), None, &mut |_, _, _| {})).map(|_| ()))
        };
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(!run.is_finished(), "the snapshot did not wait for the blob's lock");
        drop(held);
        run.join().unwrap().unwrap();
        let blob = cache.join("models--owner--model/blobs").join(sha256_hex(&unet));
        assert_eq!(std::fs::read(blob).unwrap(), unet);
        std::fs::remove_dir_all(&root).unwrap();
    }
}

// The offline shell: the page, its scripts and the wasm are cached on first visit. Requests go
// to the network first (so a new build is picked up) and fall back to the cache offline. Model
// weights are not handled here: they live in IndexedDB.
const CACHE = "imvar-shell-v1";
const SHELL = ["./", "index.html", "style.css", "app.js", "worker.js", "pkg/imvar.js", "pkg/imvar_bg.wasm"];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

const SHELL_PATHS = new Set(SHELL.map((path) => new URL(path, self.registration.scope).pathname));

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  // Only the shell: never Range requests or anything else (a same-origin Hub mirror's weights).
  if (event.request.method !== "GET" || url.origin !== self.location.origin || !SHELL_PATHS.has(url.pathname)
      || event.request.headers.has("Range")) return;
  event.respondWith(
    fetch(event.request)
      .then((response) => {
        if (response.status === 200) {
          const copy = response.clone();
          event.waitUntil(caches.open(CACHE).then((cache) => cache.put(url.pathname, copy)));
        }
        return response;
      })
      .catch(() => caches.match(url.pathname).then((hit) => hit ?? Response.error())),
  );
});

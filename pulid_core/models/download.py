"""``download``: resumable, checksummed, atomic fetches from the public sources."""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence

from ..errors import ModelFileError
from .checks import PRESENT, _locate, _validate, _Walker, inspect_file, sha256_of
from .paths import ModelPaths
from .registry import USER_AGENT, ModelFile, registry, select

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- download

CHUNK = 1 << 20


class _Interrupted(Exception):
    """The transfer broke off; the .part file keeps what arrived."""


class _Progress:
    """A tqdm bar when tqdm is installed, else a log line every few seconds."""

    def __init__(self, total: int | None, done: int, label: str, enabled: bool):
        self._bar = None
        self._log_at = 0.0
        self.total, self.done, self.label, self.enabled = total, done, label, enabled
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            log.info("Downloading %s (%s bytes)", label, f"{total:,}" if total else "unknown")
            return
        self._bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024, desc=label)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and self.total and time.monotonic() - self._log_at > 5:
            self._log_at = time.monotonic()
            log.info("%s: %.0f%% of %s bytes", self.label, 100 * self.done / self.total, f"{self.total:,}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _request(url: str, offset: int, token: str | None) -> urllib.request.Request:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    if token:
        # Unredirected: the token must not follow the redirect to the storage host.
        req.add_unredirected_header("Authorization", f"Bearer {token}")
    return req


def _transfer(
    url: str, part: str, size: int | None, timeout: float, progress: bool, label: str, token: str | None
) -> None:
    offset = os.path.getsize(part) if os.path.isfile(part) else 0
    if size is not None and offset > size:
        os.remove(part)
        offset = 0
    if size is not None and offset == size:
        return
    try:
        resp = urllib.request.urlopen(_request(url, offset, token), timeout=timeout)
    except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        # Connected, then dropped before the headers arrived: transient. (Failures to
        # connect at all arrive as URLError and mean there is no network.)
        raise _Interrupted(str(exc) or type(exc).__name__) from exc
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # The .part already holds everything the server has, or is not from this file.
            total = _range_total(exc.headers.get("Content-Range", ""))
            if total == offset:
                return
            os.remove(part)
            raise _Interrupted("the server refused to resume; starting over") from exc
        raise
    with resp:
        if offset and resp.status == 206:
            start = resp.headers.get("Content-Range", "").split(" ")[-1].split("-")[0]
            if start != str(offset):
                raise ModelFileError(f"{url} resumed at byte {start}, not {offset}: delete {part} and retry.")
            total = _range_total(resp.headers.get("Content-Range", ""))
        else:
            offset = 0  # no Range support (200): start over
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if size is not None and total is not None and total != size:
            raise ModelFileError(
                f"{url} serves {total:,} bytes but {label} has {size:,}: the mirror serves another "
                "file or the file changed upstream. Nothing was saved."
            )
        bar = _Progress(total or size, offset, label, progress)
        try:
            with open(part, "ab" if offset else "wb") as out:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
                        raise _Interrupted(str(exc) or type(exc).__name__) from exc
                    if not chunk:
                        break
                    out.write(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
    got = os.path.getsize(part)
    expected = total if total is not None else size
    if expected is not None and got < expected:
        raise _Interrupted(f"the connection closed after {got:,} of {expected:,} bytes")


def _range_total(content_range: str) -> int | None:
    total = content_range.rsplit("/", 1)[-1]
    return int(total) if total.isdigit() else None


def fetch_file(
    url: str,
    dest: str,
    *,
    size: int | None = None,
    sha256: str | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    retry_wait: float = 2.0,
    progress: bool = True,
    page: str | None = None,
    token: str | None = None,
) -> str:
    """Download ``url`` to ``dest`` through ``dest + '.part'``, resuming what is there.

    A broken transfer is resumed (HTTP Range) up to ``retries`` times; a later call
    resumes too. The result is checked against ``size`` and ``sha256`` when given (a
    mismatch deletes the .part) and moved into place atomically. ``page`` is the address
    named in error messages; ``token`` is sent as a bearer token (not across redirects).
    """
    name = os.path.basename(dest)
    directory = os.path.dirname(os.path.abspath(dest))
    part = dest + ".part"
    os.makedirs(directory, exist_ok=True)
    attempt = 0
    while True:
        try:
            _transfer(url, part, size, timeout, progress, name, token)
            break
        except _Interrupted as exc:
            have = os.path.getsize(part) if os.path.isfile(part) else 0
            if attempt >= retries:
                raise ModelFileError(
                    f"Download of {name} broke off ({exc}); {have:,} bytes are kept in {part}. "
                    "Run the same command again to resume."
                ) from exc
            attempt += 1
            log.warning(
                "Download of %s broke off (%s); resuming (try %d of %d).", name, exc, attempt, retries
            )
            time.sleep(retry_wait * attempt)
        except urllib.error.HTTPError as exc:
            raise ModelFileError(_http_message(exc, url, name, directory, page)) from exc
        except urllib.error.URLError as exc:
            reason = getattr(exc, "reason", exc)
            raise ModelFileError(
                f"No network (could not reach {urllib.parse.urlsplit(url).netloc}: {reason}). "
                f"Download {name} from {page or url} and put it in {directory}."
            ) from exc
    got = os.path.getsize(part)
    if size is not None and got != size:
        os.remove(part)
        raise ModelFileError(
            f"{name}: downloaded {got:,} bytes, expected {size:,}; the partial file was deleted."
        )
    if sha256:
        digest = sha256_of(part)
        if digest != sha256:
            os.remove(part)
            raise ModelFileError(
                f"{name}: checksum mismatch (sha256 {digest}, expected {sha256}); the download was "
                "deleted. The mirror may serve another file: try again without it, or download "
                f"{page or url} by hand."
            )
    problem = inspect_file(part, dest)
    if problem:
        os.remove(part)
        raise ModelFileError(f"{name} from {url}: {problem}; the download was deleted.")
    os.replace(part, dest)
    return dest


def _http_message(exc: urllib.error.HTTPError, url: str, name: str, directory: str, page: str | None) -> str:
    if exc.code == 404:
        return (
            f"{url} answered 404 Not Found: the file moved or the mirror lacks it. Download {name} "
            f"from {page or url} by hand and put it in {directory}."
        )
    if exc.code in (401, 403):
        return (
            f"{url} refused access (HTTP {exc.code}). If the repository asks you to accept its terms, "
            "do so on its page and set HF_TOKEN to a Hugging Face access token."
        )
    return f"{url} answered HTTP {exc.code} {exc.reason}. Try again later, or download {name} by hand."


def _fetch_pack(pack: str, members: Sequence[ModelFile], paths: ModelPaths, url: str, **kw) -> list[str]:
    """Fetch a pack's zip and install the members flat in ``models/<pack>/``, whatever
    folders the archive wraps them in. All members are checked before any is installed."""
    entry = members[0]
    target = paths.target_dir(entry)
    zip_path = os.path.join(os.path.dirname(target), f"{pack}.zip")
    fetch_file(url, zip_path, page=entry.page, **kw)  # checks the zip's central directory
    parts = []
    try:
        with zipfile.ZipFile(zip_path) as archive:
            by_base = {}
            for info in archive.infolist():
                if not info.is_dir():
                    by_base.setdefault(os.path.basename(info.filename), info)
            os.makedirs(target, exist_ok=True)
            for m in members:
                info = by_base.get(m.filename)
                if info is None:
                    raise ModelFileError(
                        f"{pack}.zip from {entry.page} has no {m.filename}; nothing was installed."
                    )
                part = os.path.join(target, m.filename + ".part")
                parts.append(part)
                with archive.open(info) as src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                problem = _member_problem(m, part)
                if problem:
                    raise ModelFileError(f"{m.filename} in {pack}.zip: {problem}; nothing was installed.")
        written = []
        for part in parts:
            os.replace(part, part[: -len(".part")])
            written.append(part[: -len(".part")])
        return written
    finally:
        for path in [zip_path, *parts]:
            if os.path.exists(path):
                os.remove(path)


def _member_problem(entry: ModelFile, path: str) -> str | None:
    size = os.path.getsize(path)
    problem = inspect_file(path, entry.filename)
    if problem:
        return problem
    if entry.size is not None and size != entry.size:
        return f"{size:,} bytes, expected {entry.size:,}"
    if entry.sha256:
        digest = sha256_of(path)
        if digest != entry.sha256:
            return f"checksum mismatch (sha256 {digest}, expected {entry.sha256})"
    return None


def download(
    names: Sequence[str],
    paths: ModelPaths,
    *,
    entries: Iterable[ModelFile] = registry,
    hf_endpoint: str | None = None,
    mirror: str | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    retry_wait: float = 2.0,
    progress: bool = True,
) -> list[str]:
    """Fetch the named files (registry or bundle names) that are not already in place.

    Returns the paths written. Files already in place, of the right size and not corrupt,
    are skipped.
    """
    wanted = select(names, entries)
    kw = {"timeout": timeout, "retries": retries, "retry_wait": retry_wait, "progress": progress}
    walker = _Walker()
    todo = []
    for e in wanted:
        found = _locate(e, paths, walker)
        if found and _validate(e, found[0], verify=False)[0] == PRESENT:
            log.info("%s is already in %s", e.name, found[0])
        else:
            todo.append(e)
    written: list[str] = []
    packs: dict[str, list[ModelFile]] = {}
    for e in todo:
        if e.pack:
            packs.setdefault(e.pack, []).append(e)
            continue
        dest = os.path.join(paths.target_dir(e), e.filename)
        log.info("Fetching %s -> %s", e.name, dest)
        written.append(
            fetch_file(
                e.url(hf_endpoint, mirror),
                dest,
                size=e.size,
                sha256=e.sha256,
                page=e.page,
                # A Hugging Face token (for gated repositories) goes to the hub or its mirror only.
                token=os.environ.get("HF_TOKEN") if e.source == "hf" else None,
                **kw,
            )
        )
    for pack, members in packs.items():
        log.info("Fetching the %s pack -> %s", pack, paths.target_dir(members[0]))
        url = members[0].url(hf_endpoint, mirror)
        written.extend(_fetch_pack(pack, members, paths, url, **kw))
    return written

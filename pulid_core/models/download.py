"""``download``: Hugging Face files through ``huggingface_hub``, GitHub release files (and
insightface's zip packs) through a small resumable fetch. Every file is checked (size and
sha256 where published, its structure always) before it is moved into place."""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence

from ..errors import ModelFileError, PuLIDError
from .checks import PRESENT, file_problem, find
from .paths import ModelPaths
from .registry import GITHUB, HF, ModelFile, registry, select

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "comfyui-pulid-models/2"


def checked_endpoint(url: str, what: str, allow_http: bool) -> str:
    """``url`` without a trailing slash; anything but https is refused unless ``allow_http``."""
    scheme = urllib.parse.urlsplit(url.replace("{url}", "")).scheme.lower()
    if scheme == "https":
        return url.rstrip("/")
    if scheme != "http":
        raise PuLIDError(f"{what} {url!r} is not an https:// address.")
    if not allow_http:
        raise PuLIDError(
            f"{what} {url!r} uses plain http: anyone on the way can swap the files. Use an https "
            "address, or pass --allow-http if you trust this network (no token is sent over http)."
        )
    log.warning("Downloading over plain http from %s (--allow-http): files are checked, tokens never sent.", url)
    return url.rstrip("/")


def _install(tmp: str, dest: str, entry: ModelFile, source: str) -> str:
    """Move a finished download into place, only if it is a good copy of ``entry``."""
    problem = file_problem(entry, tmp)
    if problem:
        os.remove(tmp)
        raise ModelFileError(f"{entry.filename} from {source}: {problem[1]}; the download was deleted.")
    os.replace(tmp, dest)
    return dest


def fetch_hf(entry: ModelFile, dest_dir: str, endpoint: str, progress: bool = True) -> str:
    """Fetch a Hugging Face file with ``hf_hub_download`` (resume, retries, ``HF_TOKEN``).

    It downloads into ``<file>.download/`` next to the destination (``local_dir``: a real
    file, no symlink into the hub cache; its ``.cache/`` holds the partial download for a
    later resume); the file is checked, moved into place and the folder removed.
    """
    import huggingface_hub
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    staging = os.path.join(dest_dir, entry.filename + ".download")
    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        tmp = huggingface_hub.hf_hub_download(
            entry.hf_repo,
            entry.hf_path,
            local_dir=staging,
            endpoint=endpoint,
            # None: the user's HF_TOKEN or saved login (for gated repositories); never over http.
            token=None if endpoint.startswith("https://") else False,
        )
    except Exception as exc:  # noqa: BLE001 - the hub's, requests' and OS errors alike
        name = type(exc).__name__
        hint = (
            "If the repository asks you to accept its terms, do so on its page and set HF_TOKEN. "
            if "Gated" in name or "RepositoryNotFound" in name or "401" in str(exc) or "403" in str(exc)
            else "Run the same command again to resume, or "
        )
        raise ModelFileError(
            f"Download of {entry.filename} from {endpoint} failed ({name}: {str(exc).splitlines()[0][:200]}). "
            f"{hint}download {entry.url} by hand and put it in {dest_dir}."
        ) from exc
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()
    try:
        return _install(tmp, os.path.join(dest_dir, entry.filename), entry, entry.url)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_url(url: str, dest: str, entry: ModelFile, timeout: float = 30.0, progress: bool = True) -> str:
    """Fetch ``url`` into ``dest + '.part'``, resuming what a broken run left there, then
    check it against ``entry`` and move it into place. No token is ever sent."""
    part = dest + ".part"
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    have = os.path.getsize(part) if os.path.isfile(part) else 0
    if entry.size is not None and have > entry.size:
        os.remove(part)
        have = 0
    if entry.size is None or have < entry.size:
        headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={have}-"} if have else {})}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
                resumed = resp.status == 206
                if resumed and not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                    raise ModelFileError(f"{url} resumed at the wrong byte: delete {part} and try again.")
                total = int(resp.headers.get("Content-Length") or 0) + (have if resumed else 0) or entry.size
                _copy(resp, part, resumed, total, have if resumed else 0, entry.filename, progress)
        except urllib.error.HTTPError as exc:
            if exc.code != 416:  # 416: the .part already holds the whole file; the checks decide
                raise ModelFileError(
                    f"{url} answered HTTP {exc.code} {exc.reason}. Download {entry.filename} from "
                    f"{entry.url} by hand and put it in {os.path.dirname(dest)}."
                ) from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise _broke_off(entry, url, part, dest, getattr(exc, "reason", exc) or type(exc).__name__) from exc
        if entry.size is not None and os.path.getsize(part) < entry.size:
            raise _broke_off(entry, url, part, dest, "the server closed the connection early")
    return _install(part, dest, entry, url)


def _broke_off(entry: ModelFile, url: str, part: str, dest: str, why) -> ModelFileError:
    kept = os.path.getsize(part) if os.path.isfile(part) else 0
    return ModelFileError(
        f"Download of {entry.filename} from {url} broke off ({why}); {kept:,} bytes are kept in {part}. "
        f"Run the same command again to resume, or download {entry.url} by hand and put it in "
        f"{os.path.dirname(dest)}."
    )


def _copy(resp, part: str, append: bool, total: int | None, done: int, label: str, progress: bool) -> None:
    from tqdm.auto import tqdm

    with open(part, "ab" if append else "wb") as out, tqdm(
        total=total, initial=done, unit="B", unit_scale=True, desc=label, disable=not progress
    ) as bar:
        while chunk := resp.read(CHUNK):
            out.write(chunk)
            bar.update(len(chunk))


def fetch_pack(pack: str, members: Sequence[ModelFile], target: str, url: str, **kw) -> list[str]:
    """Fetch a pack's zip and install the members flat in ``target``, whatever folders the
    archive wraps them in; every member is checked before any is installed."""
    zip_path = os.path.join(os.path.dirname(target), f"{pack}.zip")
    archive_entry = ModelFile(f"{pack}.zip", "insightface", f"{pack}.zip", "github", members[0].location, "", ())
    parts: list[str] = []
    try:
        fetch_url(url, zip_path, archive_entry, **kw)  # checked: its central directory is read
        with zipfile.ZipFile(zip_path) as archive:
            by_base = {os.path.basename(i.filename): i for i in archive.infolist() if not i.is_dir()}
            os.makedirs(target, exist_ok=True)
            for m in members:
                if m.filename not in by_base:
                    raise ModelFileError(f"{pack}.zip from {url} has no {m.filename}; nothing was installed.")
                parts.append(os.path.join(target, m.filename + ".part"))
                with archive.open(by_base[m.filename]) as src, open(parts[-1], "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                problem = file_problem(m, parts[-1])
                if problem:
                    raise ModelFileError(f"{m.filename} in {pack}.zip: {problem[1]}; nothing was installed.")
        for part in parts:
            os.replace(part, part.removesuffix(".part"))
        return [p.removesuffix(".part") for p in parts]
    finally:
        for path in [zip_path, *parts]:
            if os.path.exists(path):
                os.remove(path)


def download(
    names: Sequence[str],
    paths: ModelPaths,
    *,
    entries: Iterable[ModelFile] = registry,
    hf_endpoint: str | None = None,
    mirror: str | None = None,
    allow_http: bool = False,
    timeout: float = 30.0,
    progress: bool = True,
) -> list[str]:
    """Fetch the named files (registry or bundle names) that are not already in place.

    ``hf_endpoint`` (default ``$HF_ENDPOINT``) and ``mirror`` (default
    ``$PULID_MODELS_MIRROR``: a base URL for GitHub paths, or a template with ``{url}``) must
    be https unless ``allow_http``. Returns the paths written.
    """
    wanted = select(names, entries)
    endpoint = checked_endpoint(hf_endpoint or os.environ.get("HF_ENDPOINT") or HF, "HF_ENDPOINT", allow_http)
    mirror = mirror or os.environ.get("PULID_MODELS_MIRROR")
    if mirror:
        mirror = checked_endpoint(mirror, "The GitHub mirror", allow_http)

    def github_url(location: str) -> str:
        if not mirror:
            return f"{GITHUB}/{location}"
        return mirror.replace("{url}", f"{GITHUB}/{location}") if "{url}" in mirror else f"{mirror}/{location}"

    todo = []
    for e in wanted:
        here = find(e, paths)[0]
        if here.status == PRESENT:
            log.info("%s is already in %s", e.name, here.path)
        else:
            todo.append(e)
    written: list[str] = []
    packs: dict[str, list[ModelFile]] = {}
    for e in todo:
        if e.pack:
            packs.setdefault(e.pack, []).append(e)
            continue
        dest_dir = paths.target_dir(e)
        log.info("Fetching %s -> %s", e.name, dest_dir)
        os.makedirs(dest_dir, exist_ok=True)
        if e.source == "hf":
            written.append(fetch_hf(e, dest_dir, endpoint, progress))
        else:
            dest = os.path.join(dest_dir, e.filename)
            written.append(fetch_url(github_url(e.location), dest, e, timeout=timeout, progress=progress))
    for pack, members in packs.items():
        target = paths.target_dir(members[0])
        log.info("Fetching the %s pack -> %s", pack, target)
        url = github_url(members[0].location)
        written += fetch_pack(pack, members, target, url, timeout=timeout, progress=progress)
    return written

"""The Hugging Face Hub as a source and a destination, through huggingface_hub only.

Pull: a repo id (``org/name``, ``hf://org/name@rev``) is resolved to one commit, then either
downloaded into the normal Hub cache (only config, generation config, tokenizer files, the
index and the shards it names; never ``*.bin``/``*.pth``/``*.gguf`` twins) and read as a
:class:`~prune_surgery.storage.LocalStorage`, or, with ``stream``, read in place by
:class:`HubStorage`, whose blobs fetch exactly the byte ranges the engine asks for.

Push: :func:`push_folder` uploads a finished output, with a generated model card, in one commit.

``HF_TOKEN``, ``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` are read
when a function is called.  Every Hub failure becomes a one-line :class:`SourceError` (pull)
or :class:`OutputError` (push) that says what to do; a token is never printed.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import CheckpointError, OutputError, PruneSurgeryError, SourceError
from .retry import checked_shards, partial_bytes, quiet_hub_log, read_range, retry_call, with_retries
from .storage import LocalStorage, Storage

HF_PREFIX = "hf://"
INDEX_NAME = "model.safetensors.index.json"
CARD_NAME = "README.md"
# Top-level files a job needs besides the weights (config, generation config, tokenizer, chat template).
META_PATTERNS = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model",
    "*.tiktoken", "chat_template.jinja", "chat_template.json", INDEX_NAME,
)
TWIN_SUFFIXES = (".bin", ".pth", ".pt", ".gguf", ".h5", ".msgpack", ".ckpt")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_TRUE = {"1", "on", "yes", "true"}


# -- where and how ------------------------------------------------------------------------
def looks_like_repo_id(src: str) -> bool:
    """True for ``hf://...``, or for ``org/name[@rev]`` when no such local path exists."""
    if src.startswith(HF_PREFIX):
        return True
    if os.path.exists(src) or src.startswith((".", "/", "~")) or "\\" in src:
        return False
    return _REPO_ID.fullmatch(src.split("@", 1)[0]) is not None


def parse_repo_ref(src: str, revision: str | None = None) -> tuple[str, str | None]:
    """Split ``[hf://][models/]org/name[@rev]`` into (repo id, revision); `revision` must agree."""
    ref = src[len(HF_PREFIX):] if src.startswith(HF_PREFIX) else src
    ref = ref[len("models/"):] if ref.startswith("models/") else ref
    repo_id, _, in_ref = ref.rstrip("/").partition("@")
    if _REPO_ID.fullmatch(repo_id) is None:
        raise SourceError(f"{src!r} is not a Hub repo id; write it as org/name or hf://org/name@revision")
    if in_ref and revision and in_ref != revision:
        raise SourceError(f"{src!r} names revision {in_ref!r} but --revision is {revision!r}; give only one")
    return repo_id, (in_ref or revision or None)


def _endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE


def _cache_dir() -> str:
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return constants.HF_HUB_CACHE


def _api() -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=_endpoint(), library_name="prune-surgery")


# -- errors ---------------------------------------------------------------------------------
def _has_token() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None


def _token_hint(action: str) -> str:
    if _has_token():
        return f"the token given (HF_TOKEN or `hf auth login`) cannot {action}; use a token that can"
    return f"a token is needed to {action}: set HF_TOKEN=<your token> or run `hf auth login`"


def _describe(exc: BaseException, repo_id: str, revision: str | None, *, push: bool) -> str | None:
    """A one-line, actionable message for a Hub failure, or None if `exc` is not one."""
    import httpx2
    from huggingface_hub import errors as e

    where, rev = _endpoint(), revision or "main"
    action = f"write to {repo_id}" if push else f"read {repo_id}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, e.GatedRepoError):
        return f"{repo_id} is gated: accept its conditions on {where}/{repo_id}, and {_token_hint(action)}"
    if isinstance(exc, e.RevisionNotFoundError):
        return f"revision {rev!r} not found in {repo_id}; give an existing branch, tag or commit sha with --revision"
    if isinstance(exc, e.RepositoryNotFoundError):
        hint = "check the name" if _has_token() else "check the name; if it is private, set HF_TOKEN or run `hf auth login`"
        return f"repo {repo_id} not found on {where} (or no access to it); {hint}"
    if isinstance(exc, (e.OfflineModeIsEnabled, e.RevisionResolutionError, e.LocalEntryNotFoundError)) and _offline():
        if push:
            return f"cannot push to {repo_id}: HF_HUB_OFFLINE=1 is set; unset it to push"
        return f"{repo_id}@{rev} is not in the Hub cache and HF_HUB_OFFLINE=1 is set; unset it to download"
    if isinstance(exc, (httpx2.TransportError, e.RevisionResolutionError, e.LocalEntryNotFoundError)):
        tail = "" if push else "; HF_HUB_OFFLINE=1 uses what is already in the Hub cache"
        return f"cannot reach the Hub at {where} ({type(exc).__name__}); check the network or HF_ENDPOINT{tail}"
    if status in (401, 403):
        return f"access to {repo_id} denied ({status}): {_token_hint(action)}"
    if isinstance(exc, e.HfHubHTTPError):
        return f"the Hub at {where} answered {status} for {repo_id}: {str(exc).splitlines()[0]}; retry later"
    return None


@contextmanager
def _hub_errors(repo_id: str, revision: str | None, *, push: bool) -> Iterator[None]:
    """Turn Hub failures inside the block into SourceError (pull) or OutputError (push)."""
    try:
        yield
    except PruneSurgeryError:
        raise
    except Exception as exc:  # noqa: BLE001 - only Hub failures are mapped, the rest re-raised
        message = _describe(exc, repo_id, revision, push=push)
        if message is None:
            raise
        if getattr(exc, "prune_surgery_attempts", 0) > 1:
            message += f" (gave up after {exc.prune_surgery_attempts} attempts)"  # type: ignore[attr-defined]
        raise (OutputError if push else SourceError)(message) from None


# -- pull ---------------------------------------------------------------------------------
def _meta_file(name: str) -> bool:
    return "/" not in name and any(fnmatch.fnmatchcase(name, pattern) for pattern in META_PATTERNS)


def _weight_files(repo_id: str, names: list[str], read_index: Callable[[], bytes]) -> list[str]:
    """The safetensors shards a job needs: those the index names, else the top-level ones."""
    if INDEX_NAME in names:
        try:
            shards = sorted({str(f) for f in json.loads(read_index())["weight_map"].values()})
        except (ValueError, KeyError, TypeError, AttributeError):
            raise SourceError(f"{INDEX_NAME} in {repo_id} is not a valid index (needs a 'weight_map' object)") from None
        missing = sorted(set(shards) - set(names))
        if missing:
            raise SourceError(f"{INDEX_NAME} in {repo_id} names {missing[0]}, which the repo does not hold; "
                              "the checkpoint is incomplete")
        return shards
    shards = sorted(n for n in names if n.endswith(".safetensors") and "/" not in n)
    if shards:
        return shards
    twins = sorted(n for n in names if n.endswith(TWIN_SUFFIXES))
    if twins:
        raise SourceError(
            f"{repo_id} has only {twins[0]}-style weights, and prune-surgery needs safetensors: convert them "
            "(load and save_pretrained(..., safe_serialization=True) in transformers) or pick a revision that has "
            "safetensors (the Hub's conversion bot opens one as refs/pr/N)"
        )
    raise SourceError(f"{repo_id} has no safetensors weights; give a checkpoint repo with model*.safetensors")


def _source_record(repo_id: str, revision: str | None, commit: str, path: str | None) -> dict[str, Any]:
    return {"path": path, "repo_id": repo_id, "revision": revision, "commit": commit}


def resolve_hub_source(src: str, revision: str | None, stream: bool) -> tuple[Storage, dict[str, Any]]:
    """Resolve a Hub source to (storage, source record) pinned to one commit.

    Without `stream`, the needed files are downloaded into the Hub cache (a second run downloads
    nothing; HF_HUB_OFFLINE=1 uses the cache) and a LocalStorage over the snapshot is returned.
    With `stream`, a HubStorage reads byte ranges over HTTP and keeps no local copy.
    """
    from huggingface_hub import get_cached_repo_tree, snapshot_download

    repo_id, revision = parse_repo_ref(src, revision)
    offline, cache = _offline(), _cache_dir()
    if stream and offline:
        raise SourceError("--stream reads from the Hub but HF_HUB_OFFLINE=1 is set; drop --stream to use the cache")
    with _hub_errors(repo_id, revision, push=False):
        commit = retry_call(f"resolving {repo_id}", _api().resolve_revision, repo_id, revision=revision,
                            cache_dir=cache, local_files_only=offline)
        if stream:
            storage = HubStorage(repo_id, commit.resolved)
            shards = _weight_files(repo_id, storage.list_files(), lambda: storage.read_bytes(INDEX_NAME))
            storage.keep_only([n for n in storage.list_files() if _meta_file(n)] + shards)
            return storage, _source_record(repo_id, revision, commit.resolved, None)

        def download(patterns: list[str]) -> Path:
            with quiet_hub_log():  # its resume warnings are retries we report ourselves: one line on failure
                return Path(snapshot_download(repo_id, revision=commit, allow_patterns=patterns, cache_dir=cache,
                                              endpoint=_endpoint(), local_files_only=offline,
                                              library_name="prune-surgery"))

        folder = download(list(META_PATTERNS))
        try:
            names = [f.path for f in get_cached_repo_tree(repo_id, revision=commit.resolved, cache_dir=cache)]
        except Exception:  # noqa: BLE001 - no cached listing (old cache): what the snapshot holds
            names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        shards = _weight_files(repo_id, names, lambda: (folder / INDEX_NAME).read_bytes())
        fresh = [name for name in shards if not (folder / name).exists()]  # cached ones were checked when fetched
        folder = with_retries(f"downloading {repo_id}", lambda: checked_shards(download(shards), fresh),
                              progress=lambda: partial_bytes(cache))
    return SnapshotStorage(folder), _source_record(repo_id, revision, commit.resolved, str(folder))


class SnapshotStorage(LocalStorage):
    """A snapshot in the Hub cache: its files are symlinks into the repo's ``blobs/`` folder.

    LocalStorage refuses names that resolve outside the folder; here a name must stay inside
    the snapshot as written, and may resolve only into the snapshot or the repo's blob store.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.blobs = self.root.parent.parent / "blobs"  # <cache>/models--org--name/{snapshots/<sha>,blobs}

    def _path(self, name: str) -> Path:
        written = Path(os.path.normpath(self.root / name))
        path = written.resolve()
        if (written == self.root or self.root in written.parents) and (
                path == self.root or self.root in path.parents or self.blobs in path.parents):
            return path
        raise CheckpointError(f"{name!r} points outside the checkpoint folder; an index may only name files inside it")


class HubBlob:
    """Random access to one file on the Hub: every read is one exact HTTP range request."""

    def __init__(self, storage: "HubStorage", name: str, size: int) -> None:
        self.name, self.size = name, size
        self._storage = storage
        self._url = storage.url(name)

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset`: one exact range request, resumed from the byte reached on failure."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise SourceError(f"{self.name}: read past the end of the file on the Hub (truncated shard?)")
        if length == 0:
            return b""
        with _hub_errors(self._storage.repo_id, self._storage.commit, push=False):
            return read_range(self._url, self._storage.headers(), offset, length,
                              f"reading {self.name} bytes {offset}-{offset + length - 1} from the Hub")

    def release(self, offset: int, length: int) -> None:
        """Nothing is kept between reads, so there is nothing to drop."""

    def close(self) -> None:
        """Nothing stays open between reads."""


class HubStorage:
    """A checkpoint read in place on the Hub at one commit (HTTP range requests)."""

    def __init__(self, repo_id: str, commit: str) -> None:
        self.repo_id, self.commit = repo_id, commit
        self.description = f"{HF_PREFIX}{repo_id}@{commit}"
        self._small: dict[str, bytes] = {}  # read_bytes results: config, index, tokenizer are read more than once
        with _hub_errors(repo_id, commit, push=False):
            entries = retry_call(f"listing {repo_id}", lambda: list(_api().list_repo_tree(repo_id, revision=commit, recursive=True)))
            self._sizes = {f.path: (f.lfs.size if f.lfs else f.size) for f in entries if hasattr(f, "size")}

    def url(self, name: str) -> str:
        """The resolve URL of `name` at the pinned commit."""
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo_id, name, revision=self.commit, endpoint=_endpoint())

    def headers(self) -> dict[str, str]:
        """Request headers: user agent and, when there is one, the token."""
        from huggingface_hub.utils import build_hf_headers

        return build_hf_headers(library_name="prune-surgery")

    def keep_only(self, names: list[str]) -> None:
        """Restrict the storage to these files (the others are twins or unrelated)."""
        keep = set(names)
        self._sizes = {n: s for n, s in self._sizes.items() if n in keep}

    def exists(self, name: str) -> bool:
        """Whether the file exists at the commit."""
        return name in self._sizes

    def size(self, name: str) -> int:
        """File size in bytes (for LFS files, the real size, not the pointer's)."""
        if name not in self._sizes:
            raise SourceError(f"{name} is not in {self.description}; the checkpoint is incomplete")
        return self._sizes[name]

    def read_bytes(self, name: str) -> bytes:
        """The whole content of a small file (fetched once, then remembered)."""
        if name not in self._small:
            blob = self.open_blob(name)
            try:
                self._small[name] = bytes(blob.read(0, blob.size))
            finally:
                blob.close()
        return self._small[name]

    def open_blob(self, name: str) -> HubBlob:
        """Range-request access to `name`."""
        return HubBlob(self, name, self.size(name))

    def list_files(self) -> list[str]:
        """Every file at the commit, sorted."""
        return sorted(self._sizes)


# -- push ---------------------------------------------------------------------------------
def _upload_names(out_dir: Path) -> list[str]:
    return sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out_dir).parts))


def prepare_card(out_dir: Path, note: Callable[[str], None] = lambda _: None, repo_id: str | None = None) -> None:
    """Write the generated model card to OUT/README.md unless the user wrote their own there."""
    from .card import GENERATED_MARK, render_model_card

    card = out_dir / CARD_NAME
    if card.exists() and GENERATED_MARK not in card.read_text(encoding="utf-8", errors="replace"):
        note(f"{card} was not written by prune-surgery; it is uploaded as it is (delete it to get the generated card)")
        return
    card.write_text(render_model_card(out_dir, repo_id), encoding="utf-8")


def push_folder(out_dir: Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                commit_message: str | None = None, note: Callable[[str], None] | None = None) -> str:
    """Upload a finished output folder to `repo_id` in one commit; return the commit URL.

    Creates the repo (private if asked) and the branch `revision` if needed, writes the model
    card first, and removes weight files of an earlier push that this output no longer has.
    `note` receives one-line remarks (e.g. that an existing model card in the repo is replaced).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    out_dir, note = Path(out_dir), note or (lambda _: None)
    if not (out_dir / "prune_surgery.json").is_file() or not (out_dir / "config.json").is_file():
        raise OutputError(f"{out_dir} is not a prune-surgery output (no prune_surgery.json or config.json); "
                          "push the OUT folder of a finished run")
    if _REPO_ID.fullmatch(repo_id) is None:
        raise OutputError(f"{repo_id!r} is not a repo id; write it as user/name or org/name")
    if _offline():
        raise OutputError(f"cannot push to {repo_id}: HF_HUB_OFFLINE=1 is set; unset it to push")
    prepare_card(out_dir, note, repo_id)
    names = _upload_names(out_dir)
    branch = revision or "main"
    api = _api()
    with _hub_errors(repo_id, revision, push=True):
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        remote = set(api.list_repo_files(repo_id, revision=branch))
        if CARD_NAME in remote:
            note(f"the model card README.md already in {repo_id}@{branch} is replaced by the generated one")
        stale = sorted(n for n in remote - set(names) if n.endswith((".safetensors", INDEX_NAME)))
        operations: list[Any] = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=str(out_dir / n)) for n in names]
        operations += [CommitOperationDelete(path_in_repo=n) for n in stale]
        info = api.create_commit(repo_id, operations=operations, revision=branch,
                                 commit_message=commit_message or "Upload pruned checkpoint (prune-surgery)")
    return str(info.commit_url)

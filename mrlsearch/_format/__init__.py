"""On-disk helpers: manifests, checksums, atomic writes, writer locks and file checks.

No pickle anywhere. What these helpers guarantee (docs/troubleshooting.md states it for users):

* **Reading.** :func:`open_directory` pins a saved directory by file descriptor, reads its
  manifest once (size, nesting and integers capped) and opens every file the manifest lists
  once, each without following symlinks and without blocking (a FIFO, a device, a directory
  or a symlink in place of a file is a :class:`FormatError`). Every later read goes through
  those handles and checks the file's sha256 on the very bytes it returns, so a concurrent
  save that swaps the directory can never mix two versions: a load sees the old index or the
  new one. A save that removes the directory between the manifest and the files makes the
  load start again (a few times) on the new one.
* **Writing.** :func:`atomic_directory` and :func:`atomic_file` write beside the target and
  rename into place; :func:`write_array`, :func:`write_json` and :func:`seal_file` read every
  file back from disk and compare its size and sha256 (and, for files written by code that
  ignores write errors such as hnswlib's ``save_index``, a structural check) before the
  commit, so a truncated write fails the save and leaves the old version in place.
* **Locking.** Writers of one path serialise on an advisory ``fcntl.flock`` of
  ``.NAME.lock`` beside it (:func:`writer_lock`), across threads and processes. While the
  lock is free no save is running, so the ``.NAME.tmp-*`` / ``.NAME.trash-*`` siblings that
  killed saves left behind are provably abandoned: the next save or load removes them
  (:func:`cleanup_stale`).
"""

from ._arrays import load_array, read_npy_header
from ._atomic import atomic_directory, atomic_file, check_replaceable
from ._files import open_regular, sha256_file
from ._hnsw import check_hnsw_file
from ._locks import cleanup_stale, lock_path, writer_lock
from ._reading import (DeferredCheck, SavedDirectory, open_directory, read_manifest,
                       resolve_directory)
from ._seal import (MANIFEST, MAX_MANIFEST_BYTES, parse_json, read_json_file, seal_file,
                    sealed_checksums, write_array, write_json)

__all__ = ["MANIFEST", "MAX_MANIFEST_BYTES", "DeferredCheck", "SavedDirectory",
           "atomic_directory", "atomic_file", "check_hnsw_file", "check_replaceable",
           "cleanup_stale", "load_array", "lock_path", "open_directory", "open_regular",
           "parse_json", "read_json_file", "read_manifest", "read_npy_header",
           "resolve_directory", "seal_file",
           "sealed_checksums", "sha256_file", "write_array", "write_json", "writer_lock"]

"""Index directories: what :meth:`Searcher.save` writes and :meth:`Searcher.load` reads.

Format 2 adds the compact codes (``codes_<dim>_int8.npy`` with ``scales_<dim>.npy``,
``codes_<dim>_binary.npy``) and stages with a precision; format 1 directories still load (their
codes are computed on load). Format 3 is format 2 plus the payload column
(``payload_kinds.npy``, ``payload_offsets.npy``, ``payload_data.npy``, see
:mod:`~mrlsearch._payloads`); an index without payloads is still written as format 2, so
older readers keep reading it, and one with payloads is refused by them instead of losing its
payloads. Format 4 is an index whose graphs hnswlib linked by a shorter prefix than their dim
(``link_dim``: ``hnsw_<dim>.bin`` then holds ``link_dim``-dim vectors), with or without
payloads; an index without such a graph is still written as format 2 or 3. See
docs/format.md.

Load verification (``verify``): ``"full"`` checks every file's sha256 before returning;
``"lazy"`` and ``"none"`` check the manifest, every header, shape and size and the sha256 of
every small file, but defer the checksums of the big files (:data:`BIG_FILES`) to the
:class:`~mrlsearch._format.DeferredCheck` objects returned with the parts.
"""

from __future__ import annotations

import os
from pathlib import Path

import hnswlib
import numpy as np

from . import _format
from ._errors import FormatError
from ._graphs import GraphSet
from ._payloads import PayloadColumn
from ._results import FunnelPlan
from ._store import VectorStore

__all__: list[str] = []

FORMAT_NAME = "mrlsearch.index"
FORMAT_VERSION = 2
#: the version written when the index holds payloads
PAYLOAD_FORMAT_VERSION = 3
#: the version written when a graph is linked by a shorter prefix than its dim (``link_dim``)
LINKED_FORMAT_VERSION = 4
READ_VERSIONS = (1, 2, 3, 4)
VERIFY_MODES = ("full", "lazy", "none")
#: files whose sha256 ``verify="lazy"|"none"`` defers (everything else is checked at load)
BIG_FILES = ("vectors.npy", "payload_data.npy")
PAYLOAD_FILES = ("payload_kinds.npy", "payload_offsets.npy", "payload_data.npy")
_HNSW_SPACE = {"cosine": "cosine", "ip": "ip", "l2": "l2"}


def save_index(path: str | os.PathLike, *, config: dict, store: VectorStore, graphs: GraphSet,
               plan: FunnelPlan | None) -> None:
    """Write an index directory atomically (the caller holds the read lock).

    Every file is read back and checked on disk before the directory is committed
    (:func:`_format.seal_file`): hnswlib's ``save_index`` does not report write errors, so a
    short write would otherwise commit a truncated graph in place of a good index.
    """
    with _format.atomic_directory(path, kind=FORMAT_NAME) as staging:
        rows = store.rows
        arrays = {
            "vectors.npy": np.asarray(store.vectors[:rows]),
            "norms.npy": np.asarray(store.norms[:rows]),
            "ids.npy": np.asarray(store.ids[:rows]),
            "deleted.npy": np.asarray(store.deleted[:rows]),
        }
        codes: dict[str, list[str]] = {}
        for prefix_dim, codes_array in store.int8.items():
            arrays[f"codes_{prefix_dim}_int8.npy"] = np.asarray(codes_array[:rows])
            arrays[f"scales_{prefix_dim}.npy"] = store.scales.get(
                prefix_dim, np.ones(prefix_dim, dtype=np.float32))
            codes.setdefault(str(prefix_dim), []).append("int8")
        for prefix_dim, bits in store.binary.items():
            arrays[f"codes_{prefix_dim}_binary.npy"] = np.asarray(bits[:rows])
            codes.setdefault(str(prefix_dim), []).append("binary")
        if store.payloads is not None:
            saved = store.payloads.saved(rows, arrays["deleted.npy"])
            arrays["payload_kinds.npy"] = saved.kinds
            arrays["payload_offsets.npy"] = saved.offsets
            arrays["payload_data.npy"] = saved.data
        checksums = {name: _format.write_array(staging / name, array)
                     for name, array in arrays.items()}
        graph_files = {}
        if graphs:
            for prefix_dim in graphs.dims:
                name = f"hnsw_{prefix_dim}.bin"
                graph = graphs.index(prefix_dim)
                graph.save_index(str(staging / name))
                where = staging / name

                def check(data, where=where, prefix_dim=prefix_dim):
                    _format.check_hnsw_file(where, rows=rows, dim=graphs.built_dim(prefix_dim),
                                            M=config["M"],
                                            data=data, deleted=arrays["deleted.npy"],
                                            ef_construction=config["ef_construction"])

                checksums[name] = _format.seal_file(where, size=graph.index_file_size(),
                                                    check=check)
                graph_files[str(prefix_dim)] = name
        linked = any(graphs.built_dim(d) != d for d in graphs.dims)
        manifest = {
            "format": FORMAT_NAME,
            "version": (LINKED_FORMAT_VERSION if linked else FORMAT_VERSION
                        if store.payloads is None else PAYLOAD_FORMAT_VERSION),
            **config,
            "rows": rows,
            "count": store.live,
            "next_id": store.next_id,
            "graphs": graph_files,
            "codes": codes,
            "plan": None if plan is None else plan.to_dict(),
            "files": dict(sorted(checksums.items())),
        }
        _format.write_json(staging / _format.MANIFEST, manifest)


def _field_int(manifest: dict, where: object, key: str, minimum: int = 0,
               maximum: int = (1 << 63) - 1) -> int:
    value = manifest.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise FormatError(f"{where} field {key!r} must be an int in [{minimum}, {maximum}] "
                          f"(got {value!r})")
    return value


def read_index(path: str | os.PathLike, *, mmap: bool, make_parts, verify: str = "full"):
    """Read an index directory.

    ``make_parts(config)`` returns an empty ``(searcher, store, graphs)`` for the manifest's
    settings; they are filled here and returned with the saved plan and the deferred
    checksum checks as ``(searcher, store, graphs, plan, deferred)`` for the caller to
    install (``deferred`` is empty with ``verify="full"``). Every file is read once, through
    the handle whose bytes were checksummed (:func:`_format.open_directory`), so a save
    running meanwhile can never mix two versions into what is loaded.
    """
    with _format.open_directory(path, format_name=FORMAT_NAME, versions=READ_VERSIONS) as saved:
        deferred: list[_format.DeferredCheck] = []
        try:
            parts = _read(saved, mmap=mmap, make_parts=make_parts, verify=verify,
                          deferred=deferred)
        except BaseException:
            for check in deferred:
                check.close()
            raise
        return (*parts, deferred)


def _read(saved: _format.SavedDirectory, *, mmap: bool, make_parts, verify: str,
          deferred: list):
    directory, manifest = saved.path, saved.manifest
    where = directory / _format.MANIFEST
    rows = _field_int(manifest, where, "rows")
    count = _field_int(manifest, where, "count")
    next_id = _field_int(manifest, where, "next_id", maximum=1 << 63)  # after id 2**63 - 1
    graphs_field = manifest.get("graphs")
    if not isinstance(graphs_field, dict) or not all(
            isinstance(d, str) and d.isdigit() and len(d) < 10 and isinstance(n, str)
            and n == f"hnsw_{d}.bin" for d, n in graphs_field.items()):
        raise FormatError(f"{where} field 'graphs' must map dims to hnsw_<dim>.bin "
                          f"(got {graphs_field!r})")
    codes_field = manifest.get("codes", {})
    if not isinstance(codes_field, dict) or not all(
            isinstance(kinds, list) and all(isinstance(p, str) for p in kinds)
            for kinds in codes_field.values()):
        raise FormatError(f"{where} field 'codes' must map dims to lists of code kinds")
    precisions = sorted({p for kinds in codes_field.values() for p in kinds})
    config = {
        "dim": _field_int(manifest, where, "dim", 1),
        "dims": manifest.get("dims"),
        "metric": manifest.get("metric"),
        "index_dims": manifest.get("index_dims"),
        "M": _field_int(manifest, where, "M", 1),
        "ef_construction": _field_int(manifest, where, "ef_construction", 1),
        "dtype": manifest.get("dtype"),
        "seed": (_field_int(manifest, where, "seed", maximum=(1 << 64) - 1)
                 if "seed" in manifest else 100),
        "codes": tuple(precisions) if manifest.get("version") != 1 else ("int8", "binary"),
        "link_dim": (_field_int(manifest, where, "link_dim", 1)
                     if manifest.get("link_dim") is not None else None),
    }
    try:
        searcher, store, graphs = make_parts(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{where} has a bad field ({exc})") from exc
    linked = any(graphs.built_dim(d) != d for d in graphs.dims)
    if linked != (manifest.get("version") == LINKED_FORMAT_VERSION):
        # save writes version 4 exactly when a graph is linked shorter: a reader of version 2
        # or 3 would take such a graph's vectors for full ones
        raise FormatError(f"{where} has format version {manifest.get('version')} but "
                          f"link_dim={config['link_dim']} links "
                          f"{'a graph' if linked else 'no graph'} by a shorter prefix "
                          f"(version {LINKED_FORMAT_VERSION} is written exactly when one is)")
    graph_files = {int(d): name for d, name in graphs_field.items()}
    if set(graph_files) != set(graphs.dims) and not (rows == 0 and not graph_files):
        raise FormatError(f"{where} lists graphs {sorted(graph_files)} but index_dims "
                          f"{graphs.dims}")
    n_dims = len(store.dims)
    full = verify == "full"
    vectors = saved.load_array("vectors.npy", dtype=store.dtype, shape=(rows, store.dim),
                               mmap=mmap, verify=full)
    if full:  # the hash read every byte: the values are worth one more look
        _check_finite_rows(vectors, directory / "vectors.npy")
    else:
        deferred.append(saved.deferred_check("vectors.npy"))
    store.vectors = np.asarray(vectors) if mmap else vectors
    store.norms = saved.load_array("norms.npy", dtype=np.float32, shape=(rows, n_dims))
    store.ids = saved.load_array("ids.npy", dtype=np.int64, shape=(rows,))
    store.deleted = saved.load_array("deleted.npy", dtype=np.bool_, shape=(rows,))
    if not (np.all(np.isfinite(store.norms)) and np.all(store.norms >= 0)):
        raise FormatError(f"{directory / 'norms.npy'} must hold finite non-negative norms")
    store.rows = rows
    live = np.flatnonzero(~store.deleted)
    store.row_of = dict(zip(store.ids[live].tolist(), live.tolist()))
    if len(store.row_of) != live.size or count != live.size:
        raise FormatError(f"{directory / 'ids.npy'} does not match the manifest's count")
    if np.any(store.ids[live] < 0) or (live.size and int(store.ids[live].max()) >= next_id):
        raise FormatError(f"{directory / 'ids.npy'} holds ids outside [0, next_id)")
    store.next_id = next_id
    _read_codes(saved, manifest, store, rows)
    _read_payloads(saved, store, rows, mmap=mmap, full=full, deferred=deferred)
    for prefix_dim, name in graph_files.items():
        built_dim = graphs.built_dim(prefix_dim)  # hnswlib's vectors: the link_dim prefix
        graphs.adopt(prefix_dim, _read_graph(saved, name, config=config, dim=built_dim,
                                             rows=rows, deleted=store.deleted))
        try:
            graphs.links(prefix_dim, rows)
        except FormatError as exc:
            raise FormatError(f"{directory / name}: {exc}") from exc
        if mmap:  # the memory tier: searches read the link copy only
            graphs.park(prefix_dim, _graph_reader(
                saved.path, name, saved.files[name], config=config, dim=built_dim, rows=rows,
                deleted=store.deleted.copy()))
    plan = manifest.get("plan")
    if plan is not None:
        try:
            plan = FunnelPlan.from_dict(plan)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FormatError(f"{where} has a bad plan ({exc})") from exc
    return searcher, store, graphs, plan


def _check_finite_rows(vectors: np.ndarray, path: Path) -> None:
    """Refuse saved vectors holding NaN or inf (written by something other than ``save``,
    with a checksum to match: they would never be found, and ``compact`` would blame its
    input). In blocks of 4 MiB, so a memory-mapped file is not read in one piece."""
    block = max(1, (4 << 20) // max(vectors.itemsize * vectors.shape[1], 1))
    for lo in range(0, vectors.shape[0], block):
        finite = np.isfinite(vectors[lo:lo + block]).all(axis=1)
        if not finite.all():
            row = lo + int(np.flatnonzero(~finite)[0])
            raise FormatError(f"{path} holds a value that is not finite (row {row})")


def _read_graph(saved: _format.SavedDirectory, name: str, *, config: dict, dim: int, rows: int,
                deleted: np.ndarray) -> hnswlib.Index:
    """hnswlib's graph ``name``, from a private copy of the bytes whose checksum and layout
    were checked."""
    where = saved.path / name

    def check(data):
        _format.check_hnsw_file(where, rows=rows, dim=dim, M=config["M"], data=data,
                                deleted=deleted, ef_construction=config["ef_construction"])

    graph = hnswlib.Index(space=_HNSW_SPACE[config["metric"]], dim=dim)
    with saved.private_copy(name, check=check) as copy:
        try:
            graph.load_index(str(copy), max_elements=max(rows, 1))
        except RuntimeError as exc:
            raise FormatError(f"{where} is not a readable hnswlib graph ({exc})") from exc
    if graph.element_count != rows:
        raise FormatError(f"{where} holds {graph.element_count} vectors, the index has {rows}")
    return graph


def _graph_reader(path: Path, name: str, sha256: str, *, config: dict, dim: int, rows: int,
                  deleted: np.ndarray):
    """Reads a parked graph back from the directory it was loaded from, if that file is still
    the one loaded (same sha256); else a FormatError says to load the index again."""

    def read() -> hnswlib.Index:
        with _format.open_directory(path, format_name=FORMAT_NAME, versions=READ_VERSIONS,
                                    cleanup=False) as saved:
            if saved.files.get(name) != sha256:
                raise FormatError(
                    f"{path / name} changed since this index was loaded with mmap=True (saved "
                    "over?): its graph is read back from there to add, remove or save; load "
                    "the index again")
            return _read_graph(saved, name, config=config, dim=dim, rows=rows, deleted=deleted)

    return read


def _read_codes(saved: _format.SavedDirectory, manifest: dict, store: VectorStore,
                rows: int) -> None:
    """Codes from the files (format 2) or computed from the vectors (format 1)."""
    if manifest.get("version") == 1:
        store.allocate_codes(rows)
        with store.one_reencode():
            for lo in range(0, rows, 65536):
                hi = min(rows, lo + 65536)
                as_float = np.asarray(store.vectors[lo:hi], dtype=np.float32)
                store.encode(as_float, store.norms[lo:hi], lo)
        return
    for prefix_dim in store.code_dims:
        if prefix_dim in store.int8:
            store.int8[prefix_dim] = saved.load_array(
                f"codes_{prefix_dim}_int8.npy", dtype=np.int8, shape=(rows, prefix_dim))
            scales = saved.load_array(f"scales_{prefix_dim}.npy", dtype=np.float32,
                                      shape=(prefix_dim,))
            if not np.all(np.isfinite(scales)) or np.any(scales <= 0):
                raise FormatError(f"{saved.path / f'scales_{prefix_dim}.npy'} must hold "
                                  "positive finite scales")
            store.scales[prefix_dim] = scales
        if prefix_dim in store.binary:
            store.binary[prefix_dim] = saved.load_array(
                f"codes_{prefix_dim}_binary.npy", dtype=np.uint64,
                shape=(rows, (prefix_dim + 63) // 64))


def _read_payloads(saved: _format.SavedDirectory, store: VectorStore, rows: int, *, mmap: bool,
                   full: bool, deferred: list) -> None:
    """The payload column, when the directory has one (format 3)."""
    listed = [name for name in PAYLOAD_FILES if name in saved.files]
    if not listed:
        if saved.manifest.get("version") == PAYLOAD_FORMAT_VERSION:
            raise FormatError(f"{saved.path / _format.MANIFEST} has format version "
                              f"{PAYLOAD_FORMAT_VERSION} but lists no payload files")
        return
    if len(listed) != len(PAYLOAD_FILES):
        missing = sorted(set(PAYLOAD_FILES) - set(listed))
        raise FormatError(f"{saved.path / _format.MANIFEST} lists some payload files but not "
                          f"{missing}")
    kinds = saved.load_array("payload_kinds.npy", dtype=np.uint8, shape=(rows,))
    offsets = saved.load_array("payload_offsets.npy", dtype=np.uint64, shape=(rows + 1,))
    data = saved.load_array("payload_data.npy", dtype=np.uint8, shape=(None,), mmap=mmap,
                            verify=full)
    if not full:
        deferred.append(saved.deferred_check("payload_data.npy"))
    if mmap:
        data = np.asarray(data)
    store.payloads = PayloadColumn.from_arrays(kinds, offsets, data,
                                               label=saved.path / "payload_offsets.npy")

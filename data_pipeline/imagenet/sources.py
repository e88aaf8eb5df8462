"""Finding the input images of one split and their labels, and the class index.

Inputs understood (``--input``):

* a directory holding ``<split>/`` (also Kaggle's ``ILSVRC/Data/CLS-LOC/<split>/``) or
  ``ILSVRC2012_img_<split>.tar``;
* a split directory laid out as class folders (``<wnid>/**/<file>``, any ImageFolder tree) or flat
  (``val/ILSVRC2012_val_00000001.JPEG`` with labels from ``LOC_val_solution.csv``);
* a plain tar: the official ``ILSVRC2012_img_train.tar`` (a tar of per-class tars), or a tar of
  class folders or of flat files.

Tars are never unpacked: one pass over the member headers (seeking past the data, also inside
the nested per-class tars) records where every image's bytes start, so a worker later reads an
image with one ``seek`` + ``read``. An image is named by ``source``, its path relative to the split
(``<wnid>/<file>`` in class layouts), the same whether it came from a folder or a tar -- so the
same images give the same shards.

Inputs that cannot be read -- a class folder that cannot be listed, a per-class tar that is not
a tar -- are recorded as failed inputs (``FAILED_REASONS``), not skipped in silence; an outer tar
that is corrupt is an ``InputError`` naming the byte where it broke.
"""

from __future__ import annotations

import csv
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import NamedTuple

SYNSET_MAPPING = "LOC_synset_mapping.txt"
VAL_SOLUTION = "LOC_val_solution.csv"
# rejection reasons that mean an input could not be read at all (not a bad image): they count against
# --max-failed-inputs, and the shard holding them is redone on the next run
FAILED_REASONS = ("permission_denied", "io_error", "corrupt_archive")


class InputError(ValueError):
    """Bad or missing input; the CLI prints it and exits 2."""


class Item(NamedTuple):
    """One input file. ``offset`` is -1 for a plain file, else where its bytes start in ``path`` (a tar)."""

    source: str
    wnid: str | None
    path: str
    offset: int = -1
    size: int = -1


def read_item(item: Item) -> bytes:
    with open(item.path, "rb") as f:
        if item.offset >= 0:
            f.seek(item.offset)
            data = f.read(item.size)
            if len(data) != item.size:  # the archive changed or shrank since the scan
                raise OSError(f"{item.path}: ends at byte {item.offset + len(data)}, inside {item.source} "
                              f"({item.size} bytes at {item.offset})")
            return data
        return f.read()


def failure_reason(exc: OSError) -> str:
    """``permission_denied`` or ``io_error``: what an input that could not be read is counted as."""
    return "permission_denied" if isinstance(exc, PermissionError) else "io_error"


def failed_row(source: str, exc: BaseException, reason: str | None = None) -> dict:
    detail = f"{type(exc).__name__}: {exc}"
    return {"source": source, "wnid": None, "reason": reason or failure_reason(exc), "detail": detail[:500]}


@dataclass
class SplitInput:
    """Where a split's images come from and the labels found for them."""

    split: str
    location: Path  # the split directory or the tar file
    items: list[Item]  # sorted by source; wnid None when no label was found
    meta_dirs: list[Path]  # where LOC_* files were looked for
    failed: list[dict] = field(default_factory=list)  # inputs that could not be read (rejection rows)


def _meta_dirs(input_path: Path, location: Path) -> list[Path]:
    dirs = [location if location.is_dir() else location.parent, input_path if input_path.is_dir() else input_path.parent]
    dirs += [d.parent for d in list(dirs)]
    seen: list[Path] = []
    for d in dirs:
        d = d.resolve()
        if d not in seen:
            seen.append(d)
    return seen


def find_meta_file(dirs: list[Path], name: str) -> Path | None:
    for d in dirs:
        if (d / name).is_file():
            return d / name
    return None


def read_val_solution(path: Path) -> dict[str, str]:
    """``LOC_val_solution.csv``: ImageId -> wnid (first token of PredictionString)."""
    labels: dict[str, str] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            pred = (row.get("PredictionString") or "").split()
            if row.get("ImageId") and pred:
                labels[row["ImageId"]] = pred[0]
    if not labels:
        raise InputError(f"{path}: no ImageId,PredictionString rows")
    return labels


def read_synset_file(path: Path) -> list[tuple[str, str | None]]:
    """Lines ``<wnid>[ <name>]`` (LOC_synset_mapping.txt or a plain wnid list) in file order."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.strip().split(maxsplit=1)
        if parts:
            out.append((parts[0], parts[1] if len(parts) > 1 else None))
    if not out:
        raise InputError(f"{path}: no class lines")
    return out


def _locate(input_path: Path, split: str) -> Path:
    if not input_path.exists():
        pattern = any(c in str(input_path) for c in "*?[")
        raise InputError(f"--input {input_path}: does not exist"
                         + (" (globs are not expanded: give one directory or tar)" if pattern else ""))
    if input_path.is_file():
        if not tarfile.is_tarfile(input_path):
            raise InputError(f"--input {input_path}: a file, but not a tar archive")
        return input_path
    for cand in (input_path / split, input_path / "ILSVRC" / "Data" / "CLS-LOC" / split,
                 input_path / "Data" / "CLS-LOC" / split):
        if cand.is_dir():
            return cand
    archive = input_path / f"ILSVRC2012_img_{split}.tar"
    if archive.is_file():
        return archive
    if not any((input_path / s).is_dir() for s in ("train", "val", "test")):
        return input_path  # --input is the split itself: class folders (ImageFolder) or flat files
    raise InputError(f"--input {input_path}: no '{split}' folder, ILSVRC2012_img_{split}.tar or class folders found")


def _label(rel: str, flat_labels: dict[str, str] | None) -> str | None:
    parts = rel.split("/")
    if len(parts) >= 2:
        return parts[0]
    if flat_labels is None:
        return None
    return flat_labels.get(PurePosixPath(rel).stem)


def _scan_dir(root: Path, flat_labels: dict[str, str] | None) -> tuple[list[Item], list[dict]]:
    items, failed = [], []

    def unlisted(e: OSError) -> None:  # os.walk skips what it cannot list unless told
        where = Path(e.filename).relative_to(root).as_posix() if e.filename else str(root)
        failed.append(failed_row(where + "/", e))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in sorted(filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            items.append(Item(rel, _label(rel, flat_labels), os.path.join(dirpath, name)))
    return items, failed


def _clean_member(name: str, split: str) -> str:
    parts = [p for p in PurePosixPath(name).parts if p not in (".", "/")]
    if len(parts) > 1 and parts[0] == split:
        parts = parts[1:]
    return "/".join(parts)


def _scan_tar(path: Path, split: str, flat_labels: dict[str, str] | None) -> tuple[list[Item], list[dict]]:
    items, failed = [], []
    last, at = "(none)", 0
    try:
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as outer:
            for member in outer:
                at = member.offset
                if member.isfile():
                    name = _clean_member(member.name, split)
                    if name.endswith(".tar"):  # a per-class tar: n01440764.tar
                        items += _scan_inner_tar(path, outer, member, name, split, failed)
                    else:
                        items.append(Item(name, _label(name, flat_labels), str(path), member.offset_data, member.size))
                last = member.name
            _check_end(f, outer.offset, at, last)
    except tarfile.ReadError as e:
        if not items and not failed:
            raise InputError(f"--input {path}: not a readable plain tar ({e}); compressed tars are not supported") from None
        raise InputError(f"--input {path}: corrupt or truncated tar ({e}; last good member {last!r} at byte {at}); "
                         f"nothing was written -- fetch the archive again") from None
    except OSError as e:
        raise InputError(f"--input {path}: cannot be read ({failure_reason(e)}: {e})") from None
    return items, failed


def _check_end(f, offset: int, at: int, last: str) -> None:
    """tarfile takes a damaged header after the first one for the end of the archive, silently
    dropping everything behind it: a real end is a zero block."""
    f.seek(offset)
    block = f.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or block.strip(b"\0"):
        what = "ends without its end-of-archive block" if len(block) < tarfile.BLOCKSIZE else "has a damaged header"
        raise tarfile.ReadError(f"{what} at byte {offset}")


def _scan_inner_tar(path: Path, outer: tarfile.TarFile, member: tarfile.TarInfo, name: str, split: str,
                    failed: list[dict]) -> list[Item]:
    """The images of one per-class tar inside ``outer``; a broken one is a failed input, not the end."""
    wnid = PurePosixPath(name).stem
    items = []
    try:
        with tarfile.open(fileobj=outer.extractfile(member), mode="r:") as inner:
            for m in inner:
                if m.isfile():
                    rel = f"{wnid}/{_clean_member(m.name, split)}"
                    items.append(Item(rel, wnid, str(path), member.offset_data + m.offset_data, m.size))
    except tarfile.ReadError as e:
        failed.append(failed_row(name, e, "corrupt_archive"))
        return []
    return items


def scan_split(input_path: str | Path, split: str) -> SplitInput:
    """All files of ``split`` with their labels (wnid, or None), sorted by source."""
    input_path = Path(input_path)
    location = _locate(input_path, split)
    meta_dirs = _meta_dirs(input_path, location)
    solution = find_meta_file(meta_dirs, VAL_SOLUTION)
    flat_labels = read_val_solution(solution) if solution else None
    if location.is_dir():
        items, failed = _scan_dir(location, flat_labels)
    else:
        items, failed = _scan_tar(location, split, flat_labels)
    items.sort(key=lambda it: it.source)
    if not items and not failed:
        raise InputError(f"--input {input_path}: no files for split '{split}' in {location}")
    return SplitInput(split, location, items, meta_dirs, failed)


def build_classes(wnids: set[str], classes_file: Path | None, meta_dirs: list[Path]) -> list[dict]:
    """The class index: ``classes_file`` order when given, else sorted wnids (torchvision/timm order).
    Names come from the classes file or ``LOC_synset_mapping.txt``; the wnid stands in when unknown."""
    names: dict[str, str] = {}
    mapping = find_meta_file(meta_dirs, SYNSET_MAPPING)
    if mapping:
        names.update({w: n for w, n in read_synset_file(mapping) if n})
    if classes_file is not None:
        listed = read_synset_file(classes_file)
        names.update({w: n for w, n in listed if n})
        order = [w for w, _ in listed]
        missing = sorted(wnids - set(order))
        if missing:
            raise InputError(f"--classes {classes_file}: lacks {len(missing)} class folder(s) of the input, e.g. {missing[:3]}")
    else:
        order = sorted(wnids)
    return [{"index": i, "wnid": w, "name": names.get(w, w)} for i, w in enumerate(order)]

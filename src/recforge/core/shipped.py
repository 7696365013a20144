"""Files shipped inside the package (presets, feature specs), found by name as well as by path, so
an installed wheel has them wherever it is run from."""

from __future__ import annotations

from pathlib import Path

from recforge.core.errors import RecforgeError

PACKAGE = Path(__file__).resolve().parents[1]
PRESETS = PACKAGE / "presets"
FEATURE_SPECS = PACKAGE / "prepare" / "specs"
SPACES = PRESETS / "spaces"  # recforge tune's search spaces


def names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def resolve(value: str | Path, folder: Path) -> Path:
    """`value` if it is a file; else the shipped `folder/value.yaml` (the name with or without
    .yaml) when there is one; else `value` as given."""
    path = Path(value).expanduser()
    if path.is_file() or path.parent != Path("."):
        return path
    shipped = folder / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    return shipped if shipped.is_file() else path


def find(value: str | Path, folder: Path, what: str) -> Path:
    """`resolve`, or an error listing the shipped names when neither a file nor a shipped name."""
    path = resolve(value, folder)
    if path.is_file():
        return path
    raise RecforgeError(f"{value}: no such file, and no {what} of that name (shipped: {', '.join(names(folder))})")

"""`recforge download`: fetch a MovieLens release from GroupLens, verify it, unpack it.

Offline (as in CI), it fails with one line saying where to put the files by hand.
"""

from __future__ import annotations

import hashlib
import shutil
import ssl
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from recforge.core.errors import RecforgeError
from recforge.core.files import naming
from recforge.data.movielens import LAYOUTS

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
# md5 of the fixed releases as GroupLens publishes them; the "latest" snapshots change, so their
# published .md5 file is fetched alongside.
MD5 = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-10m": "ce571fd55effeba0271552578f2648bd",
    "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
    "ml-latest-small": None,
    "ml-latest": None,
}
NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError)


def _fetch(url: str, dest: Path, timeout: float) -> str:
    """Stream `url` to `dest`; returns the md5 of what was written."""
    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def download(
    name: str, data_dir: str | Path, base_url: str = GROUPLENS, md5: str | None = None, timeout: float = 30
) -> Path:
    """Unpacked folder of release `name` under `data_dir` (downloaded unless already there)."""
    if name not in MD5:
        raise RecforgeError(f"unknown download '{name}' (known: {', '.join(MD5)})")
    layout = LAYOUTS[name]
    data_dir = Path(data_dir).expanduser()
    target = data_dir / layout.folder
    if (target / layout.ratings).is_file():
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    url = f"{base_url}{name}.zip"
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".download-") as tmp:
        archive = Path(tmp) / f"{name}.zip"
        try:
            actual = _fetch(url, archive, timeout)
            expected = md5 or MD5[name]
            if expected is None:
                with urllib.request.urlopen(f"{url}.md5", timeout=timeout) as response:
                    expected = response.read().decode().split()[0]
        except OSError as e:
            if not isinstance(e, NETWORK_ERRORS):  # writing the archive failed: name the folder, not the network
                raise OSError(e.errno, e.strerror, str(data_dir)) from e
            reason = getattr(e, "reason", e)
            raise RecforgeError(
                f"cannot download {url} ({reason}); fetch it on a machine with network access and unzip it "
                f"into {data_dir} so that {target / layout.ratings} exists"
            ) from None
        if actual != expected:
            raise RecforgeError(f"{url}: md5 {actual} does not match the published {expected}; not unpacked")
        try:
            with naming(data_dir), zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        except zipfile.BadZipFile:
            raise RecforgeError(f"{url}: not a zip archive") from None
        unpacked = Path(tmp) / layout.folder
        if not (unpacked / layout.ratings).is_file():
            raise RecforgeError(f"{url}: archive has no {layout.folder}/{layout.ratings}")
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    return target

import hashlib
import zipfile

import pytest

from recforge.core.errors import RecforgeError
from recforge.data.download import download


def make_release(tmp_path):
    """A zip laid out like GroupLens' ml-100k.zip, served from a file:// URL."""
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ml-100k/u.data", "1\t10\t5\t100\n2\t20\t3\t200\n")
        z.writestr("ml-100k/u.item", "10|A (1990)|x\n20|B (1991)|y\n")
    return f"file://{served}/", hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_verifies_and_unpacks(tmp_path):
    base, md5 = make_release(tmp_path)
    target = download("ml-100k", tmp_path / "data", base_url=base, md5=md5)
    assert target == tmp_path / "data" / "ml-100k"
    assert (target / "u.data").read_text().startswith("1\t10\t5\t100")
    assert not any(p.name.startswith(".download-") for p in (tmp_path / "data").iterdir())
    # already there: nothing is fetched again (the URL no longer exists)
    assert download("ml-100k", tmp_path / "data", base_url="file:///nonexistent/") == target


def test_checksum_mismatch_unpacks_nothing(tmp_path):
    base, _ = make_release(tmp_path)
    with pytest.raises(RecforgeError, match="does not match the published"):
        download("ml-100k", tmp_path / "data", base_url=base, md5="0" * 32)
    assert not (tmp_path / "data" / "ml-100k").exists()


def test_offline_failure_says_where_to_put_the_files(tmp_path):
    with pytest.raises(RecforgeError) as info:
        download("ml-20m", tmp_path / "data", base_url="http://127.0.0.1:9/", timeout=5)
    message = str(info.value)
    assert "\n" not in message
    assert "cannot download http://127.0.0.1:9/ml-20m.zip" in message
    assert str(tmp_path / "data" / "ml-20m" / "ratings.csv") in message
